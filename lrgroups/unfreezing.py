"""Progressive unfreezing: train the head first, then unfreeze deeper-to-earlier stages.

Example:
    >>> import torch, torch.nn as nn, lrgroups
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3)
    >>> schedule = lrgroups.ProgressiveUnfreezing(opt, every_epochs=1)   # ULMFiT: a stage per epoch
    >>> schedule.stages_remaining, opt.explain().frozen.tolist()
    (2, [True, True, True, True, False, False])
    >>> for epoch in range(3):
    ...     # ... train one epoch: loss.backward(); opt.step(); opt.zero_grad(); schedule.step() ...
    ...     print(epoch, schedule.end_epoch())
    0 ['2.weight', '2.bias']
    1 ['0.weight', '0.bias']
    2 []
"""

from __future__ import annotations

import warnings
import weakref
from functools import partial
from typing import Any, Mapping, Sequence, Union

import torch

from . import _deprecated
from ._util import first_names
from ._util import remove_all as _remove_handles
from .early_stopping import Plateau
from .groups import SCHEDULE_OWNER
from .optimizer import LayerwiseOptimizer
from .rules import Selector

__all__ = ["OptimizerUpdates", "ProgressiveUnfreezing", "depth_stages"]

StageSpec = Union[str, Selector, Mapping[str, Any]]


def depth_stages(max_depth: int, depths_per_stage: int = 1) -> list[Selector]:
    """Stages by depth, top first: stage 0 is the top ``depths_per_stage`` depths (the head), each
    later stage the next ``depths_per_stage`` depths below (ULMFiT order).

    >>> [s.depth for s in depth_stages(4, 2)]
    [(3, 4), (1, 2), (0, 0)]
    """
    if depths_per_stage < 1:
        raise ValueError(f"depths_per_stage must be >= 1, got {depths_per_stage}")
    stages = []
    high = max_depth
    while high >= 0:
        low = max(0, high - depths_per_stage + 1)
        stages.append(Selector(depth=(low, high)))
        high = low - 1
    return stages


def _selector(stage: StageSpec) -> Selector:
    if isinstance(stage, Selector):
        return stage
    if isinstance(stage, str):
        return Selector(pattern=stage)
    return Selector(**stage)


# The record a schedule leaves on a tensor it froze and has not thawed (removed when it thaws it):
# a schedule built later on the same model (a re-run notebook cell, a second optimizer) takes such
# tensors over; what anyone else froze it never thaws. It lives on the tensor, as long as the tensor.
_FROZEN_BY_A_SCHEDULE = "_lrgroups_frozen_by_a_schedule"


def _frozen_by_a_schedule(param: Any) -> bool:
    return not param.requires_grad and getattr(param, _FROZEN_BY_A_SCHEDULE, False)


def _by_name(names: Sequence[str]) -> Selector:
    chosen = set(names)
    return Selector(where=lambda info: info.name in chosen)


def _call_weak(method: weakref.WeakMethod, *args: Any) -> None:
    bound = method()
    if bound is not None:
        bound(*args)


class OptimizerUpdates:
    """Counts the updates an optimizer makes, through a step post hook on it (owned: :meth:`close`,
    or dropping the counter, removes it), so that a training loop's per-batch calls can tell an
    update from a call that updated nothing: a gradient-accumulation micro-batch (accelerate's
    ``AcceleratedOptimizer`` and ``GradScaler.step`` on an inf gradient do not call the optimizer's
    ``step``), or a step ``GradScaler`` hands to a fused optimizer with ``found_inf`` set, which
    skips the update inside the kernel. :class:`ProgressiveUnfreezing` and
    :class:`~lrgroups.driver.FineTuning` count their steps with it.

    Example:
        >>> import torch, torch.nn as nn
        >>> from lrgroups.unfreezing import OptimizerUpdates
        >>> model = nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> updates = OptimizerUpdates(opt)
        >>> model(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> updates.take(), updates.take()  # one update, then none since
        (True, False)

    Args:
        optimizer: any ``torch.optim.Optimizer`` (its ``register_step_post_hook``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        #: updates made since the last :meth:`take`.
        self.pending = 0
        handles = [optimizer.register_step_post_hook(partial(_call_weak, weakref.WeakMethod(self._count)))]
        self._finalizer = weakref.finalize(self, _remove_handles, handles)

    def _count(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        found_inf = getattr(optimizer, "found_inf", None)  # GradScaler's fused path (set during step)
        if isinstance(found_inf, torch.Tensor) and bool(found_inf.sum() > 0):
            return
        self.pending += 1

    def take(self) -> bool:
        """Whether the optimizer made at least one update since the last call (the count restarts)."""
        updated, self.pending = self.pending > 0, 0
        return updated

    def close(self) -> None:
        """Remove the step hook (idempotent)."""
        self._finalizer()


class ProgressiveUnfreezing:
    """Unfreezes stages of a :class:`~lrgroups.LayerwiseOptimizer` one after another.

    At construction every parameter that a later stage selects (and stage 0 does not) and that is
    trainable is frozen by the schedule; the schedule records these names and **thaws only what it
    froze**: a parameter frozen before the schedule was built (by the user with
    ``requires_grad_(False)``, by a rule, by peft) stays frozen through every stage (an explicit
    ``optimizer.unfreeze(...)`` still thaws it), and a stage that would thaw nothing warns. (What an
    earlier schedule froze on the same model and did not thaw — a re-run notebook cell — the new
    schedule takes over: ``optimizer.frozen_by(name)`` then reports it as ``"schedule"``. The record
    lives on the tensor itself, not in a registry.) A stage is
    advanced by
    :meth:`step` (after ``every_steps`` optimizer steps in the stage), :meth:`end_epoch` (after
    ``every_epochs`` epochs), :meth:`observe` (when the monitored metric reaches a plateau: patience
    advances the stage instead of stopping), or :meth:`advance` directly. :meth:`step` counts
    optimizer *updates*: call it after every ``optimizer.step()`` (also in a gradient-accumulation
    loop, e.g. ``accelerator.accumulate()``); a call with no update since the last counted one (a
    micro-batch whose step the framework skipped, a step ``GradScaler`` skipped) counts nothing
    (:class:`OptimizerUpdates`). Unfreezing hot-adds the
    parameters with their rule-given lr; attached LR schedulers keep working untouched.

    Args:
        optimizer: the LayerwiseOptimizer whose parameters are unfrozen.
        stages: what each stage unfreezes, in order (glob strings, :class:`~lrgroups.Selector` s or
            dicts of selector fields). Default: :func:`depth_stages` (head, then deepest first).
        depths_per_stage: with the default stages, how many depths each stage spans.
        every_steps: advance after this many optimizer steps in a stage.
        every_epochs: advance after this many epochs in a stage.
        plateau: a :class:`~lrgroups.Plateau` on a validation metric fed to :meth:`observe`, or a
            dict of its arguments (:meth:`~lrgroups.Plateau.from_settings`).
        reset_patience_on_advance: reset the plateau's patience after each stage change (default True;
            :class:`~lrgroups.EarlyStopping`'s name for the same flag).
        warmup_steps: after a stage is unfrozen, the lr of the param groups that received its
            parameters ramps linearly from ``1/warmup_steps`` to 1 of the scheduled value over this
            many steps (applied inside ``step()`` only, so schedulers never see it; groups shared
            with parameters already training warm up too; each group keeps its own count, so a
            stage unfrozen mid warm-up does not cut another short).
        reset_patience: deprecated name of ``reset_patience_on_advance``.

    Resuming: :meth:`load_state_dict` makes the optimizer's frozen set agree with the saved stage
    (see there), so a fresh optimizer, or one whose checkpoint was loaded before or after the
    schedule was built, continues at the saved stage.

    Raises:
        TypeError: ``optimizer`` is not a :class:`~lrgroups.LayerwiseOptimizer`.
        ValueError: no stage, a stage that matches no parameter (with the closest names), a count or
            ``warmup_steps`` out of range.

    Warns:
        UserWarning: a stage that thaws nothing (every parameter it selects was frozen by someone else
            before the schedule was built), or a stage 0 that trains nothing.
    """

    def __init__(
        self,
        optimizer: LayerwiseOptimizer,
        stages: Sequence[StageSpec] | None = None,
        *,
        depths_per_stage: int = 1,
        every_steps: int | None = None,
        every_epochs: int | None = None,
        plateau: Plateau | Mapping[str, Any] | None = None,
        reset_patience_on_advance: bool | None = None,
        warmup_steps: int = 0,
        reset_patience: bool | None = None,
    ) -> None:
        reset_patience_on_advance = _deprecated.keyword(
            "lrgroups.unfreezing.ProgressiveUnfreezing.__init__",
            "reset_patience",
            reset_patience,
            "reset_patience_on_advance",
            reset_patience_on_advance,
            True,
        )
        if not isinstance(optimizer, LayerwiseOptimizer):
            raise TypeError(f"ProgressiveUnfreezing needs a LayerwiseOptimizer, got {type(optimizer).__name__}")
        for what, value in (("every_steps", every_steps), ("every_epochs", every_epochs)):
            if value is not None and value < 1:
                raise ValueError(f"{what} must be >= 1, got {value}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if stages is None:
            stages = depth_stages(max(row.depth for row in optimizer.plan), depths_per_stage)
        self.stages = [_selector(stage) for stage in stages]
        if not self.stages:
            raise ValueError("ProgressiveUnfreezing needs at least one stage")
        self.optimizer = optimizer
        self.every_steps, self.every_epochs = every_steps, every_epochs
        self.plateau = Plateau.from_settings(plateau) if isinstance(plateau, Mapping) else plateau
        self.reset_patience_on_advance = reset_patience_on_advance
        self.warmup_steps = warmup_steps
        self.stage = 0
        self.steps = 0
        self.steps_in_stage = 0
        self.epochs_in_stage = 0
        self.history: list[dict[str, Any]] = []
        self._warmup: dict[int, int] = {}  # param group -> warm-up steps done
        self._saved_lrs: dict[int, Any] = {}
        self._params: dict[str, Any] = {}  # name -> tensor, for the names this schedule selects
        self._owned = self._freeze_later_stages()  # name -> the stage that thaws it
        self._updates = OptimizerUpdates(optimizer)
        handles = []
        if warmup_steps:  # owned handles; the hooks hold the schedule weakly, so `del schedule` removes them
            pre, post = weakref.WeakMethod(self._warmup_pre_hook), weakref.WeakMethod(self._warmup_post_hook)
            handles = [
                optimizer.register_step_pre_hook(partial(_call_weak, pre)),
                optimizer.register_step_post_hook(partial(_call_weak, post)),
            ]
        self._finalizer = weakref.finalize(self, _remove_handles, handles)

    reset_patience = _deprecated.alias("reset_patience_on_advance")

    def close(self) -> None:
        """Remove the step hooks this schedule installed on the optimizer (the update count's and the
        warm-up's; idempotent). Also done when the schedule is garbage-collected."""
        self._updates.close()
        self._finalizer()

    def _freeze_later_stages(self) -> dict[str, int]:
        """Freeze, and own, the parameters of stages 1.. that are trainable or were frozen by a
        schedule (each thawed by the first stage that selects it); warn for stages that will thaw
        nothing."""
        optimizer = self.optimizer
        thaw_at: dict[str, int] = {}
        selected = []
        for index, stage in enumerate(self.stages):
            names = optimizer.select(stage, missing="empty")
            if not names:
                raise stage.no_match_error([row.name for row in optimizer.plan], f"stage {index} ({stage.criteria()})")
            selected.append(list(names))
            for name, param in names.items():
                thaw_at.setdefault(name, index)
                self._params.setdefault(name, param)
        owned = {
            name: k
            for name, k in thaw_at.items()
            if k > 0 and (not optimizer.is_frozen(name) or _frozen_by_a_schedule(self._params[name]))
        }
        # what an earlier schedule froze, this optimizer sees as frozen before it was built: the
        # schedule takes it over, so frozen_by reports it as a schedule's
        taken = [name for name in owned if optimizer.frozen_by(name) not in (None, SCHEDULE_OWNER)]
        if taken:
            optimizer.unfreeze(_by_name(taken))
        self._set_frozen(list(owned), True)
        if all(optimizer.is_frozen(name) for name in selected[0]):
            warnings.warn(
                f"ProgressiveUnfreezing: stage 0 trains nothing: its parameters ({_few(selected[0])}) "
                "were frozen before the schedule was built (by you or a rule) and stay frozen",
                stacklevel=3,
            )
        for index, names in enumerate(selected[1:], start=1):
            if not any(owned.get(name) == index for name in names):
                warnings.warn(
                    f"ProgressiveUnfreezing: stage {index} thaws nothing: its parameters ({_few(names)}) were "
                    "frozen before the schedule was built (by you, a rule or an adapter library) or belong to "
                    "an earlier stage; a schedule thaws only what it froze (optimizer.unfreeze(...) thaws "
                    "anything)",
                    stacklevel=3,
                )
        return owned

    def _set_frozen(self, names: list[str], frozen: bool) -> list[str]:
        """Freeze or thaw ``names`` (those not in that state already) and keep the record of what
        schedules froze; returns the names that changed."""
        names = [name for name in names if self.optimizer.is_frozen(name) != frozen]
        if not names:
            return []
        missing = [name for name in names if name not in self._params]
        self._params.update(self.optimizer.select(_by_name(missing), missing="empty") if missing else {})
        if frozen:
            changed = self.optimizer.freeze(_by_name(names), owner=SCHEDULE_OWNER)
        else:
            changed = self.optimizer.unfreeze(_by_name(names))
        for name in names:
            param = self._params[name]
            if frozen:
                setattr(param, _FROZEN_BY_A_SCHEDULE, True)
            elif hasattr(param, _FROZEN_BY_A_SCHEDULE):
                delattr(param, _FROZEN_BY_A_SCHEDULE)
        return changed

    @property
    def stages_remaining(self) -> int:
        """Stages not unfrozen yet."""
        return len(self.stages) - 1 - self.stage

    def advance(self, reason: str = "") -> list[str]:
        """Unfreeze the next stage now; returns the parameter names unfrozen (empty when none left)."""
        if not self.stages_remaining:
            return []
        self.stage += 1
        names = self._thaw(self.stage)
        self.history.append({"stage": self.stage, "step": self.steps, "reason": reason, "unfrozen": len(names)})
        self.steps_in_stage = 0
        self.epochs_in_stage = 0
        if self.plateau is not None and self.reset_patience_on_advance:
            self.plateau.reset_patience()
        if self.warmup_steps:
            self._warmup.update({self.optimizer.group_of(name): 0 for name in names})
        return names

    def _thaw(self, stage: int) -> list[str]:
        """Unfreeze the parameters this schedule froze that ``stage`` thaws (and that are frozen)."""
        return self._set_frozen([name for name, k in self._owned.items() if k == stage], False)

    @property
    def owned(self) -> dict[str, int]:
        """The parameters this schedule froze itself, each with the stage that thaws it."""
        return dict(self._owned)

    def step(self) -> list[str]:
        """Count one optimizer update; advance when ``every_steps`` updates were made in this stage.

        Call it after every ``optimizer.step()``: it counts one update if the optimizer made at least
        one since the last counted call (its step post hook ran, without ``GradScaler``'s
        ``found_inf``), and nothing otherwise (returns ``[]``): a gradient-accumulation micro-batch
        whose step the framework skipped, a step ``GradScaler`` skipped on an inf gradient.

        Returns:
            The names unfrozen (``[]`` when the stage did not advance).
        """
        if not self._updates.take():
            return []
        self.steps += 1
        self.steps_in_stage += 1
        if self.every_steps is not None and self.steps_in_stage >= self.every_steps:
            return self.advance(f"{self.every_steps} steps in stage {self.stage}")
        return []

    def end_epoch(self) -> list[str]:
        """Count one epoch; advance when ``every_epochs`` epochs were spent in this stage."""
        self.epochs_in_stage += 1
        if self.every_epochs is not None and self.epochs_in_stage >= self.every_epochs:
            return self.advance(f"{self.every_epochs} epochs in stage {self.stage}")
        return []

    def observe(self, metric: float | torch.Tensor, step: int | None = None) -> list[str]:
        """Feed a validation metric to the plateau; on a plateau advance the stage (while stages remain).

        Args:
            metric: the value (a float or a one-element tensor).
            step: the step the check is recorded at (the plateau's ``best_step``); default
                :attr:`steps`, the optimizer updates counted so far.

        Returns:
            The names unfrozen (``[]`` when the stage did not advance), as :meth:`step` and
            :meth:`end_epoch`.

        Raises:
            ValueError: the schedule has no plateau.

        Example:
            >>> import torch, torch.nn as nn, lrgroups
            >>> opt = lrgroups.LayerwiseOptimizer(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), torch.optim.SGD, lr=0.1)
            >>> schedule = lrgroups.ProgressiveUnfreezing(opt, plateau={"mode": "max", "patience": 1})
            >>> schedule.observe(0.5), schedule.observe(0.5)
            ([], ['0.weight', '0.bias'])
        """
        if self.plateau is None:
            raise ValueError("observe() needs ProgressiveUnfreezing(..., plateau=Plateau(...))")
        self.plateau.observe(float(metric), self.steps if step is None else step)
        if self.plateau.is_plateau and self.stages_remaining:
            return self.advance(self.plateau.describe())
        return []

    def _warmup_pre_hook(self, optimizer, args, kwargs) -> None:
        groups = optimizer.param_groups
        for g, done in self._warmup.items():
            self._saved_lrs[g] = groups[g]["lr"]
            groups[g]["lr"] = groups[g]["lr"] * ((done + 1) / self.warmup_steps)

    def _warmup_post_hook(self, optimizer, args, kwargs) -> None:
        for g, lr in self._saved_lrs.items():
            optimizer.param_groups[g]["lr"] = lr
        self._saved_lrs.clear()
        self._warmup = {g: done + 1 for g, done in self._warmup.items() if done + 1 < self.warmup_steps}

    def state_dict(self) -> dict[str, Any]:
        """Counters, stage, history, warm-up progress, the plateau and the names the schedule froze
        (with the stage that thaws each); loads with weights_only=True."""
        return {
            "owned": [[name, stage] for name, stage in self._owned.items()],
            "stage": self.stage,
            "num_stages": len(self.stages),
            "steps": self.steps,
            "steps_in_stage": self.steps_in_stage,
            "epochs_in_stage": self.epochs_in_stage,
            "history": list(self.history),
            "warmup": [[group, done] for group, done in self._warmup.items()],
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` and make the optimizer's frozen set agree with its stage: every
        parameter the saved schedule froze is thawed if its stage has been reached and frozen
        otherwise; parameters frozen by someone else are left as they are. So a resume with a fresh
        optimizer (its checkpoint rejected, say) at stage 2 of 2 trains what stage 2 trains.

        Raises:
            ValueError: nothing is changed when the state does not fit: another number of stages, a
                plateau in one and not the other, a warm-up in progress without ``warmup_steps``, a
                saved name the optimizer does not have, or a conflict over who froze a parameter (the
                saved schedule thawed it but it was frozen before this schedule was built, or this
                schedule froze it but the saved one did not).
        """
        if state["num_stages"] != len(self.stages):
            raise ValueError(f"state has {state['num_stages']} stages, this schedule has {len(self.stages)}")
        if (state["plateau"] is None) != (self.plateau is None):
            raise ValueError("state and schedule disagree on whether a plateau is monitored")
        if state["warmup"] and not self.warmup_steps:
            raise ValueError("state has a warm-up in progress but this schedule has warmup_steps=0")
        stage = state["stage"]
        owned = {name: k for name, k in state["owned"]} if "owned" in state else dict(self._owned)
        known = {row.name for row in self.optimizer.plan}
        problems = [f"{name}: not a parameter of this optimizer" for name in owned if name not in known]
        problems += [
            f"{name}: the saved schedule thawed it at stage {k}, but it was frozen before this schedule "
            "was built (by you or a rule)"
            for name, k in owned.items()
            if name in known and k <= stage and name not in self._owned and self.optimizer.is_frozen(name)
        ]
        problems += [
            f"{name}: this schedule froze it, but the saved one did not (it was frozen by you or a rule there)"
            for name in self._owned
            if name not in owned
        ]
        if problems:
            raise ValueError("schedule state does not fit this optimizer:\n  " + "\n  ".join(problems[:20]))
        self._owned = owned
        self._set_frozen([name for name, k in owned.items() if k <= stage], False)
        self._set_frozen([name for name, k in owned.items() if k > stage], True)
        self.stage = stage
        self.steps, self.steps_in_stage = state["steps"], state["steps_in_stage"]
        self.epochs_in_stage = state["epochs_in_stage"]
        self.history = list(state["history"])
        self._warmup = {group: done for group, done in state["warmup"]}
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])


def _few(names: Sequence[str]) -> str:
    return first_names(names, 4)
