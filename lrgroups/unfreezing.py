"""Progressive unfreezing: train the head first, then unfreeze deeper-to-earlier stages.

Example:
    >>> import torch, torch.nn as nn, lrgroups
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3)
    >>> schedule = lrgroups.ProgressiveUnfreezing(opt, every_epochs=1)   # ULMFiT: a stage per epoch
    >>> schedule.stages_remaining, opt.explain().frozen.tolist()
    (2, [True, True, True, True, False, False])
    >>> for epoch in range(3):
    ...     # ... train one epoch: loss.backward(); opt.step(); schedule.step() ...
    ...     print(epoch, schedule.end_epoch())
    0 ['2.weight', '2.bias']
    1 ['0.weight', '0.bias']
    2 []
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

from .early_stopping import Plateau
from .optimizer import LayerwiseOptimizer
from .rules import Selector

__all__ = ["ProgressiveUnfreezing", "depth_stages"]

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


class ProgressiveUnfreezing:
    """Unfreezes stages of a :class:`~lrgroups.LayerwiseOptimizer` one after another.

    At construction stage 0 is unfrozen and every later stage frozen. A stage is advanced by
    :meth:`step` (after ``every_steps`` optimizer steps in the stage), :meth:`end_epoch` (after
    ``every_epochs`` epochs), :meth:`observe` (when the monitored metric reaches a plateau: patience
    advances the stage instead of stopping), or :meth:`advance` directly. Unfreezing hot-adds the
    parameters with their rule-given lr; attached LR schedulers keep working untouched.

    Args:
        optimizer: the LayerwiseOptimizer whose parameters are unfrozen.
        stages: what each stage unfreezes, in order (glob strings, :class:`~lrgroups.Selector` s or
            dicts of selector fields). Default: :func:`depth_stages` (head, then deepest first).
        depths_per_stage: with the default stages, how many depths each stage spans.
        every_steps / every_epochs: advance after this many steps / epochs in a stage.
        plateau: a :class:`~lrgroups.Plateau` on a validation metric fed to :meth:`observe`.
        reset_patience: reset the plateau's patience after each stage change (default True).
        warmup_steps: after a stage is unfrozen, the lr of the param groups that received its
            parameters ramps linearly from ``1/warmup_steps`` to 1 of the scheduled value over this
            many steps (applied inside ``step()`` only, so schedulers never see it; groups shared
            with parameters already training warm up too; each group keeps its own count, so a
            stage unfrozen mid warm-up does not cut another short). Build the schedule before
            loading a checkpoint into the optimizer: construction (re)freezes the later stages.
    """

    def __init__(
        self,
        optimizer: LayerwiseOptimizer,
        stages: Sequence[StageSpec] | None = None,
        *,
        depths_per_stage: int = 1,
        every_steps: int | None = None,
        every_epochs: int | None = None,
        plateau: Plateau | None = None,
        reset_patience: bool = True,
        warmup_steps: int = 0,
    ) -> None:
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
        self.plateau, self.reset_patience = plateau, reset_patience
        self.warmup_steps = warmup_steps
        self.stage = 0
        self.steps = 0
        self.steps_in_stage = 0
        self.epochs_in_stage = 0
        self.history: list[dict[str, Any]] = []
        self._warmup: dict[int, int] = {}  # param group -> warm-up steps done
        self._saved_lrs: dict[int, Any] = {}
        for stage in self.stages[1:]:
            self._apply(stage, freeze=True)
        self._apply(self.stages[0], freeze=False)
        if warmup_steps:
            optimizer.register_step_pre_hook(self._warmup_pre_hook)
            optimizer.register_step_post_hook(self._warmup_post_hook)

    def _apply(self, stage: Selector, freeze: bool) -> list[str]:
        return (self.optimizer.freeze if freeze else self.optimizer.unfreeze)(stage)

    @property
    def stages_remaining(self) -> int:
        """Stages not unfrozen yet."""
        return len(self.stages) - 1 - self.stage

    def advance(self, reason: str = "") -> list[str]:
        """Unfreeze the next stage now; returns the parameter names unfrozen (empty when none left)."""
        if not self.stages_remaining:
            return []
        self.stage += 1
        names = self._apply(self.stages[self.stage], freeze=False)
        self.history.append({"stage": self.stage, "step": self.steps, "reason": reason, "unfrozen": len(names)})
        self.steps_in_stage = 0
        self.epochs_in_stage = 0
        if self.plateau is not None and self.reset_patience:
            self.plateau.reset_patience()
        if self.warmup_steps:
            self._warmup.update({self.optimizer.group_of(name): 0 for name in names})
        return names

    def step(self) -> list[str]:
        """Count one optimizer step; advance when ``every_steps`` steps were taken in this stage."""
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

    def observe(self, metric: float) -> list[str]:
        """Feed a validation metric to the plateau; on a plateau advance the stage."""
        if self.plateau is None:
            raise ValueError("observe() needs ProgressiveUnfreezing(..., plateau=Plateau(...))")
        self.plateau.update(float(metric), self.steps)
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
        """Counters, stage, history, warm-up progress and the plateau; loads with weights_only=True.
        (The frozen set itself is in the optimizer's state dict.)"""
        return {
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
        if state["num_stages"] != len(self.stages):
            raise ValueError(f"state has {state['num_stages']} stages, this schedule has {len(self.stages)}")
        if (state["plateau"] is None) != (self.plateau is None):
            raise ValueError("state and schedule disagree on whether a plateau is monitored")
        self.stage = state["stage"]
        self.steps, self.steps_in_stage = state["steps"], state["steps_in_stage"]
        self.epochs_in_stage = state["epochs_in_stage"]
        self.history = list(state["history"])
        if state["warmup"] and not self.warmup_steps:
            raise ValueError("state has a warm-up in progress but this schedule has warmup_steps=0")
        self._warmup = {group: done for group, done in state["warmup"]}
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
