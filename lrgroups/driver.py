"""The one driver of a fine-tuning run: it turns optimizer steps, epochs and validation metrics into
the calls of an unfreezing schedule and an early stopper, and carries their state.

:meth:`lrgroups.recipes.Recipe.build` returns a :class:`FineTuning` over the optimizer it built; the
Lightning and Hugging Face callbacks (:mod:`lrgroups.integrations`) build one from their
configuration (:meth:`FineTuning.from_specs`) once the framework has made the optimizer. In both,
the schedule and the stopper are built in one place (:func:`build_controllers`), every check is
recorded at the run's optimizer step (:attr:`FineTuning.steps`; the schedule also counts the updates
it saw, :attr:`~lrgroups.ProgressiveUnfreezing.steps`, to place its stages, and the stopper its
checks, :attr:`~lrgroups.EarlyStopping.calls`), and a metric feeds exactly one plateau: the
stopper's when there is a stopper (on a plateau it advances the schedule while stages remain, then
stops), else the schedule's.

The driver knows no recipe: a schedule's spec is a dict of arguments, a callable, or any object
with ``schedule(optimizer, total_steps)`` and ``has_plateau`` (:class:`ScheduleFactory`; a
:class:`~lrgroups.recipes.Recipe` is one, and :meth:`~lrgroups.recipes.Recipe.specs` gives both specs).

Example:
    >>> import torch, torch.nn as nn, lrgroups
    >>> from lrgroups.driver import FineTuning
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    >>> tuning = FineTuning.from_specs({"every_steps": 2}, {"mode": "max", "patience": 1})
    >>> tuning.build(opt, model)  # counts optimizer steps through a step hook
    >>> for _ in range(2):
    ...     model(torch.randn(3, 4)).sum().backward(); opt.step(); opt.zero_grad()
    >>> tuning.steps, tuning.unfreezing.stage, tuning.observe(0.5).stop, tuning.observe(0.4).stop
    (2, 1, False, True)
    >>> tuning.close()
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Union, runtime_checkable

import torch
import torch.nn as nn

from . import _deprecated
from .early_stopping import Decision, EarlyStopping, Plateau
from .l2sp import L2SP
from .optimizer import LayerwiseOptimizer
from .unfreezing import OptimizerUpdates, ProgressiveUnfreezing

__all__ = [
    "FineTuning",
    "ScheduleFactory",
    "build_controllers",
    "check_specs",
    "has_plateau",
    "UnfreezingSpec",
    "EarlyStoppingSpec",
]


@runtime_checkable
class ScheduleFactory(Protocol):
    """A schedule's spec that builds the schedule itself once the optimizer exists (a
    :class:`~lrgroups.recipes.Recipe` is one: its stage lengths are placed within the run's steps)."""

    @property
    def has_plateau(self) -> bool:
        """Whether the schedules it builds advance on a plateau of the metric."""
        ...

    def schedule(self, optimizer: LayerwiseOptimizer, total_steps: int | None = None) -> ProgressiveUnfreezing | None:
        """The schedule over ``optimizer`` (``None``: nothing to unfreeze)."""
        ...


#: A schedule: keyword arguments of ProgressiveUnfreezing (``plateau`` may be a dict of Plateau's), a
#: :class:`ScheduleFactory` (a recipe), or a callable ``optimizer -> ProgressiveUnfreezing``.
UnfreezingSpec = Union[Mapping[str, Any], ScheduleFactory, Callable[[LayerwiseOptimizer], ProgressiveUnfreezing], None]
#: A stopper: keyword arguments of EarlyStopping (without ``model`` and ``unfreezing``).
EarlyStoppingSpec = Union[Mapping[str, Any], None]


def _is_factory(spec: Any) -> bool:
    return callable(getattr(spec, "schedule", None)) and hasattr(spec, "has_plateau")


def _check_one_plateau(schedule_has_plateau: bool, early_stopping: Any) -> None:
    """Refuse a schedule with a plateau next to a stopper: two plateaus would watch one metric."""
    if schedule_has_plateau and early_stopping is not None:
        raise ValueError(
            "one plateau per metric: a plateau in unfreezing and early_stopping would both watch the "
            "monitor and advance two stages on one flat check. Give the patience to early_stopping "
            "alone: on a plateau it advances the schedule while stages remain, then stops"
        )


def _check_keys(what: str, given: Mapping[str, Any], target: Callable, set_here: tuple[str, ...]) -> None:
    accepted = [name for name in inspect.signature(target).parameters if name not in ("self", *set_here)]
    unknown = [key for key in given if key not in accepted]
    if unknown:
        hints = [
            f"{key!r} (did you mean {close[0]!r}?)"
            if (close := difflib.get_close_matches(key, accepted, n=1))
            else repr(key)
            for key in unknown
        ]
        raise TypeError(f"{what}: unknown arguments {', '.join(hints)}; accepted: {', '.join(accepted)}")


def has_plateau(spec: Any) -> bool:
    """Whether an unfreezing spec (its dict, or a factory's ``has_plateau``) advances on a plateau of
    the metric.

    Args:
        spec: an :data:`UnfreezingSpec` (a callable's schedule is not known before it is built: False).

    Returns:
        Whether it has a plateau.

    Example:
        >>> has_plateau({"plateau": {"patience": 2}}), has_plateau({"every_steps": 10}), has_plateau(None)
        (True, False, False)
    """
    if isinstance(spec, Mapping):
        return spec.get("plateau") is not None
    return _is_factory(spec) and bool(spec.has_plateau)


def check_specs(unfreezing: UnfreezingSpec, early_stopping: EarlyStoppingSpec) -> None:
    """Check a configuration when it is given, not when training starts: known argument names (with
    the closest one), and values the schedule and the stopper accept (a stopper and a plateau are
    built once, on nothing, to run their own checks).

    Args:
        unfreezing: the schedule's spec (see :data:`UnfreezingSpec`).
        early_stopping: the stopper's spec (see :data:`EarlyStoppingSpec`).

    Raises:
        TypeError: a spec of the wrong kind, or an unknown argument.
        ValueError: a value the schedule or the stopper refuses; ``model`` or ``unfreezing`` given in
            ``early_stopping`` (the driver sets them); a plateau in the schedule and a stopper
            (two plateaus would watch one metric).
    """
    if unfreezing is not None and not (
        isinstance(unfreezing, Mapping) or _is_factory(unfreezing) or callable(unfreezing)
    ):
        raise TypeError(
            f"unfreezing must be a dict of ProgressiveUnfreezing arguments, a Recipe (a ScheduleFactory) or a "
            f"callable, got {unfreezing!r}"
        )
    if isinstance(unfreezing, Mapping):
        _check_keys("unfreezing", unfreezing, ProgressiveUnfreezing.__init__, ("optimizer",))
        for key in ("every_steps", "every_epochs", "warmup_steps", "depths_per_stage"):
            value = unfreezing.get(key)
            if value is not None and (not isinstance(value, int) or value < (0 if key == "warmup_steps" else 1)):
                raise ValueError(
                    f"unfreezing: {key} must be an integer >= {0 if key == 'warmup_steps' else 1}, got {value!r}"
                )
        if isinstance(unfreezing.get("plateau"), Mapping):
            Plateau.from_settings(unfreezing["plateau"])
    _check_one_plateau(has_plateau(unfreezing), early_stopping)
    if early_stopping is not None:
        if not isinstance(early_stopping, Mapping):
            raise TypeError(f"early_stopping must be a dict of EarlyStopping arguments, got {early_stopping!r}")
        for key in ("model", "unfreezing"):
            if key in early_stopping:
                raise ValueError(f"early_stopping: {key!r} is set by the callback, do not pass it")
        _check_keys("early_stopping", early_stopping, EarlyStopping.__init__, ("model", "unfreezing"))
        EarlyStopping(**{k: v for k, v in early_stopping.items() if k not in ("restore_best", "best_weights_path")})


def build_controllers(
    optimizer: LayerwiseOptimizer,
    model: nn.Module,
    unfreezing: UnfreezingSpec,
    early_stopping: EarlyStoppingSpec,
    *,
    total_steps: int | None = None,
    quiet: bool = False,
) -> tuple[ProgressiveUnfreezing | None, EarlyStopping | None]:
    """The schedule and the stopper of a run over ``optimizer``: the one place both are built.

    Args:
        optimizer: the optimizer the schedule unfreezes.
        model: the model whose best weights the stopper keeps (passed on only when the spec keeps them).
        unfreezing: the schedule's spec (see :data:`UnfreezingSpec`); ``None``: no schedule.
        early_stopping: the stopper's spec; ``None``: no stopper.
        total_steps: the run's length in optimizer steps (for recipes that place stages within it).
        quiet: silence the schedule's warnings about stages that thaw nothing (while a loaded frozen
            set is in place they look empty).

    Returns:
        ``(schedule, stopper)``, each ``None`` when not asked for (or, for a recipe, when none of its
        stages selects a parameter).

    Raises:
        TypeError: a callable spec that returns something else than a ProgressiveUnfreezing.
        ValueError: as :class:`~lrgroups.ProgressiveUnfreezing`, :class:`~lrgroups.EarlyStopping` and
            the factory's ``schedule``; a schedule with a plateau and a stopper (two plateaus on one
            metric).
    """
    if unfreezing is None:
        schedule = None
    elif _is_factory(unfreezing):
        schedule = unfreezing.schedule(optimizer, total_steps)
    elif isinstance(unfreezing, Mapping):
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore", UserWarning)
            schedule = ProgressiveUnfreezing(optimizer, **unfreezing)
    else:
        schedule = unfreezing(optimizer)
        if not isinstance(schedule, ProgressiveUnfreezing):
            raise TypeError(f"unfreezing callable returned {type(schedule).__name__}, not ProgressiveUnfreezing")
    _check_one_plateau(schedule is not None and schedule.plateau is not None, early_stopping)
    stopper = (
        None
        if early_stopping is None
        else EarlyStopping.from_settings(early_stopping, model=model, unfreezing=schedule)
    )
    return schedule, stopper


@dataclass
class FineTuning:
    """A fine-tuning run's driver: the optimizer plus the schedule and stopper it feeds.

    Built by :meth:`lrgroups.recipes.Recipe.build` (over the optimizer it built), by hand from
    built objects, or from a configuration with :meth:`from_specs` and :meth:`build` (what the
    framework callbacks do: the framework makes the optimizer, and saves it).

    In a hand-written loop call :meth:`after_step` after every ``optimizer.step()`` (in a
    gradient-accumulation loop after every micro-batch: a call with no optimizer update since the
    last counted one counts nothing, see :class:`~lrgroups.unfreezing.OptimizerUpdates`) and
    :meth:`observe` after every evaluation (its decision's ``stop`` says when training should stop); call
    :meth:`end_epoch` at the end of each epoch when the schedule counts epochs (``steps_per_epoch``
    does it for you inside :meth:`after_step`). A driver whose :meth:`build` ran with ``count_steps=True``
    (the default) counts steps itself, through a step hook on the optimizer (skipped AMP steps do not
    count): do not also call :meth:`after_step` then.

    Args:
        optimizer: the :class:`~lrgroups.LayerwiseOptimizer`.
        unfreezing: the :class:`~lrgroups.ProgressiveUnfreezing` schedule, or ``None``.
        early_stopping: the :class:`~lrgroups.EarlyStopping` stopper, or ``None``.
        steps_per_epoch: count an epoch every this many steps in :meth:`after_step`.
        steps: optimizer steps counted so far (the one step counter of the run).
        l2sp: the :class:`~lrgroups.L2SP` hook of recipes with L2-SP (it acts inside
            ``optimizer.step()``); :meth:`state_dict` carries its anchors.
    """

    optimizer: LayerwiseOptimizer | None
    unfreezing: ProgressiveUnfreezing | None = None
    early_stopping: EarlyStopping | None = None
    steps_per_epoch: int | None = None
    steps: int = 0
    l2sp: L2SP | None = None
    _specs: tuple[UnfreezingSpec, EarlyStoppingSpec] | None = field(default=None, init=False, repr=False, compare=False)
    _pending: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)
    _hook: Any = field(default=None, init=False, repr=False, compare=False)
    _updates: OptimizerUpdates | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.optimizer is not None:
            self._updates = OptimizerUpdates(self.optimizer)

    # ---------------------------------------------------------------- built from a configuration
    @classmethod
    def from_specs(cls, unfreezing: UnfreezingSpec, early_stopping: EarlyStoppingSpec) -> "FineTuning":
        """A driver that builds its schedule and stopper from a configuration once the optimizer exists
        (:meth:`build`); state loaded before then is kept and applied by :meth:`build`. Its
        :meth:`state_dict` holds the schedule's and the stopper's state only (the framework saves the
        optimizer).

        Args:
            unfreezing: the schedule's spec (see :data:`UnfreezingSpec`).
            early_stopping: the stopper's spec (see :data:`EarlyStoppingSpec`).

        Raises:
            TypeError, ValueError: as :func:`check_specs`.
        """
        check_specs(unfreezing, early_stopping)
        driver = cls(None)
        driver._specs = (unfreezing, early_stopping)
        return driver

    @property
    def unfreezing_spec(self) -> UnfreezingSpec:
        """The schedule's spec given to :meth:`from_specs` (``None`` otherwise)."""
        return None if self._specs is None else self._specs[0]

    @property
    def early_stopping_spec(self) -> EarlyStoppingSpec:
        """The stopper's spec given to :meth:`from_specs` (``None`` otherwise)."""
        return None if self._specs is None else self._specs[1]

    @property
    def pending(self) -> dict[str, Any] | None:
        """State loaded before :meth:`build`, applied by it (``None`` when there is none)."""
        return self._pending

    def build(
        self,
        optimizer: LayerwiseOptimizer,
        model: nn.Module,
        *,
        reload_optimizer: bool = False,
        total_steps: int | None = None,
        count_steps: bool = True,
    ) -> None:
        """Build the schedule and the stopper over ``optimizer`` (once per fit) and apply state loaded
        before.

        Args:
            optimizer: the framework's optimizer (the LayerwiseOptimizer itself, unwrapped).
            model: the model whose best weights the stopper keeps.
            reload_optimizer: the framework loaded the optimizer's checkpoint before this call: its
                state is reloaded after the schedule is built, since building one freezes and drops
                the state of what later stages hold.
            total_steps: the run's length in optimizer steps (for recipes that place stages within it).
            count_steps: count optimizer steps through a step hook on ``optimizer`` (removed by
                :meth:`close`).

        Raises:
            RuntimeError: the driver was not made by :meth:`from_specs`.
            TypeError, ValueError: as :func:`build_controllers`; state that does not fit.
        """
        if self._specs is None:
            raise RuntimeError("build() builds from a configuration: make the driver with FineTuning.from_specs(...)")
        self.close()
        snapshot = optimizer.state_dict() if reload_optimizer and self._pending else None
        self.optimizer = optimizer
        self.unfreezing, self.early_stopping = build_controllers(
            optimizer, model, *self._specs, total_steps=total_steps, quiet=snapshot is not None
        )
        self._updates = OptimizerUpdates(optimizer)  # before the hook below: it runs first
        if count_steps and self.unfreezing is not None:
            self._hook = optimizer.register_step_post_hook(lambda *args: self.after_step())
        if self._pending:
            pending, self._pending = self._pending, None
            self.load_state_dict(pending)
            if snapshot is not None:
                optimizer.load_state_dict(snapshot)

    def close(self) -> None:
        """Remove the step hooks :meth:`build` installed (idempotent)."""
        if self._updates is not None:
            self._updates.close()
            self._updates = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # ---------------------------------------------------------------- events
    def after_step(self) -> list[str]:
        """Count one optimizer update (and an epoch every ``steps_per_epoch`` updates); returns the
        names the schedule unfroze. A call with no update since the last counted one (a
        gradient-accumulation micro-batch, a step ``GradScaler`` skipped) counts nothing and returns
        ``[]``."""
        if self._updates is not None and not self._updates.take():
            return []
        self.steps += 1
        unfrozen = self.unfreezing.step() if self.unfreezing is not None else []
        if self.steps_per_epoch and self.steps % self.steps_per_epoch == 0:
            unfrozen += self.end_epoch()
        return unfrozen

    def end_epoch(self) -> list[str]:
        """Count one epoch; returns the names the schedule unfroze."""
        return self.unfreezing.end_epoch() if self.unfreezing is not None else []

    after_epoch = _deprecated.alias("end_epoch")

    def observe(
        self, metric: float | torch.Tensor | None, step: int | None = None, *, name: str = "metric"
    ) -> Decision | None:
        """Feed a validation metric to exactly one plateau: the stopper's (which advances the schedule
        on a plateau while stages remain, then stops) when there is a stopper, else the schedule's.

        Args:
            metric: the value (a float or a one-element tensor).
            step: the step the stopper records the check at; default :attr:`steps` (a schedule's
                plateau records it at the schedule's own count of updates).
            name: the metric's name, for the error.

        Returns:
            The stopper's :class:`~lrgroups.early_stopping.Decision` (``decision.stop``: stop
            training now); ``None`` when there is no stopper (or nothing to feed).

        Raises:
            KeyError: ``metric`` is ``None`` but a stopper or a plateau schedule needs it.

        Example:
            >>> tuning = FineTuning(None, early_stopping=EarlyStopping("min", patience=1))
            >>> tuning.observe(0.5).stop, tuning.observe(0.6).stop, tuning.observe(0.4, step=7).step
            (False, True, 7)
        """
        schedule_plateau = self.unfreezing is not None and self.unfreezing.plateau is not None
        if self.early_stopping is None and not schedule_plateau:
            return None
        if metric is None:
            raise KeyError(f"the monitored metric {name!r} was not logged")
        step = self.steps if step is None else step
        if self.early_stopping is not None:
            return self.early_stopping.observe(metric, step=step)
        self.unfreezing.observe(float(metric))  # at the schedule's own count of updates, as it always was
        return None

    #: Deprecated: ``observe(metric)``, returning whether to stop (``observe`` returns the decision).
    after_validation = _deprecated.alias("observe", returns=lambda decision: decision is not None and decision.stop)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """``{"optimizer", "unfreezing", "early_stopping", "steps", "l2sp"}`` (``None`` where absent);
        for a driver made by :meth:`from_specs` only ``{"unfreezing", "early_stopping"}``, and before
        :meth:`build` what was loaded (or ``{}``). Loads with ``torch.load(weights_only=True)``."""
        controllers = {
            "unfreezing": None if self.unfreezing is None else self.unfreezing.state_dict(),
            "early_stopping": None if self.early_stopping is None else self.early_stopping.state_dict(),
        }
        if self._specs is not None:
            return dict(self._pending or {}) if self.optimizer is None else controllers
        return {
            "optimizer": self.optimizer.state_dict(),
            **controllers,
            "steps": self.steps,
            "l2sp": None if self.l2sp is None else self.l2sp.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``; a driver made by :meth:`from_specs` keeps it until :meth:`build`
        when nothing is built yet.

        Raises:
            ValueError: (:meth:`from_specs`) the state has a schedule or stopper this configuration
                lacks, or the reverse; state the schedule or the stopper refuses.
        """
        if self._specs is None:
            self.optimizer.load_state_dict(state["optimizer"])
        elif not state:  # saved before anything was built
            return
        else:
            for key, spec in (("unfreezing", self._specs[0]), ("early_stopping", self._specs[1])):
                if (state.get(key) is None) != (spec is None):
                    raise ValueError(
                        f"saved state {'has' if state.get(key) is not None else 'lacks'} {key}, this "
                        f"callback {'lacks' if spec is None else 'has'} it"
                    )
            if self.optimizer is None:
                self._pending = dict(state)
                return
        if self.unfreezing is not None:
            self.unfreezing.load_state_dict(state["unfreezing"])
        if self.early_stopping is not None:
            self.early_stopping.load_state_dict(state["early_stopping"])
        if self._specs is None:
            self.steps = state["steps"]
            if self.l2sp is not None:
                self.l2sp.load_state_dict(state["l2sp"])
