"""What the framework callbacks share: building ProgressiveUnfreezing / EarlyStopping from their
configuration once the optimizer exists, feeding them the framework's events, and their state."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Union

import torch
import torch.nn as nn

from ..early_stopping import Decision, EarlyStopping, Plateau
from ..optimizer import LayerwiseOptimizer
from ..recipes import Recipe
from ..unfreezing import ProgressiveUnfreezing

# A schedule: keyword arguments of ProgressiveUnfreezing (``plateau`` may be a dict of Plateau's), a
# recipe (its schedule, stage lengths placed within the run's total steps), or a callable
# ``optimizer -> ProgressiveUnfreezing``.
UnfreezingSpec = Union[Mapping[str, Any], Recipe, Callable[[LayerwiseOptimizer], ProgressiveUnfreezing], None]
EarlyStoppingSpec = Union[Mapping[str, Any], None]


def check_specs(unfreezing: UnfreezingSpec, early_stopping: EarlyStoppingSpec) -> None:
    if unfreezing is not None and not (isinstance(unfreezing, (Mapping, Recipe)) or callable(unfreezing)):
        raise TypeError(f"unfreezing must be a dict of ProgressiveUnfreezing arguments, a Recipe or a callable, got {unfreezing!r}")
    if early_stopping is not None:
        if not isinstance(early_stopping, Mapping):
            raise TypeError(f"early_stopping must be a dict of EarlyStopping arguments, got {early_stopping!r}")
        for key in ("model", "unfreezing"):
            if key in early_stopping:
                raise ValueError(f"early_stopping: {key!r} is set by the callback, do not pass it")


class Driver:
    """Builds the schedule and the stopper over an optimizer, keeps state given before they exist,
    and turns steps, epochs and validation metrics into their calls."""

    def __init__(self, unfreezing: UnfreezingSpec, early_stopping: EarlyStoppingSpec) -> None:
        check_specs(unfreezing, early_stopping)
        self.unfreezing_spec = unfreezing
        self.early_stopping_spec = early_stopping
        self.optimizer: LayerwiseOptimizer | None = None
        self.schedule: ProgressiveUnfreezing | None = None
        self.stopper: EarlyStopping | None = None
        self.pending: dict[str, Any] | None = None
        self._hook = None

    def build(
        self, optimizer: LayerwiseOptimizer, model: nn.Module, reload_optimizer: bool = False, total_steps: int | None = None
    ) -> None:
        """Build over ``optimizer`` (once per fit) and apply state loaded before. With
        ``reload_optimizer`` (the framework loaded the optimizer's checkpoint before this call) the
        optimizer's state is reloaded after the schedule is built, since building one freezes and
        drops the state of what later stages hold."""
        self.close()
        snapshot = optimizer.state_dict() if reload_optimizer and self.pending else None
        self.optimizer = optimizer
        spec = self.unfreezing_spec
        if spec is None:
            self.schedule = None
        elif isinstance(spec, Recipe):
            self.schedule = spec.schedule(optimizer, total_steps)
        elif isinstance(spec, Mapping):
            kwargs = dict(spec)
            if isinstance(kwargs.get("plateau"), Mapping):
                kwargs["plateau"] = Plateau(**kwargs["plateau"])
            with warnings.catch_warnings():
                if snapshot is not None:  # stages look empty while the loaded frozen set is in place
                    warnings.simplefilter("ignore", UserWarning)
                self.schedule = ProgressiveUnfreezing(optimizer, **kwargs)
        else:
            self.schedule = spec(optimizer)
            if not isinstance(self.schedule, ProgressiveUnfreezing):
                raise TypeError(f"unfreezing callable returned {type(self.schedule).__name__}, not ProgressiveUnfreezing")
        if self.early_stopping_spec is None:
            self.stopper = None
        else:
            kwargs = dict(self.early_stopping_spec)
            if kwargs.get("restore_best") or kwargs.get("best_weights_path"):
                kwargs["model"] = model
            self.stopper = EarlyStopping(**kwargs, unfreezing=self.schedule)
        if self.schedule is not None:
            self._hook = optimizer.register_step_post_hook(lambda *args: self.schedule.step())
        if self.pending:
            self.load_state_dict(self.pending)
            self.pending = None
            if snapshot is not None:
                optimizer.load_state_dict(snapshot)

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def end_epoch(self) -> list[str]:
        return [] if self.schedule is None else self.schedule.end_epoch()

    def validate(self, metric: float | torch.Tensor | None, step: int, name: str) -> Decision | None:
        """Feed a validation metric to the schedule's plateau and to the stopper; ``None`` when
        there is nothing to feed. Raises KeyError when a consumer exists but the metric is missing."""
        wants = self.stopper is not None or (self.schedule is not None and self.schedule.plateau is not None)
        if not wants:
            return None
        if metric is None:
            raise KeyError(f"the monitored metric {name!r} was not logged")
        if self.schedule is not None and self.schedule.plateau is not None:
            self.schedule.observe(float(metric))
        return None if self.stopper is None else self.stopper.step(metric, step)

    def state_dict(self) -> dict[str, Any]:
        """The schedule's and stopper's state; before :meth:`build`, what was loaded (or ``{}``)."""
        if self.optimizer is None:
            return dict(self.pending or {})
        return {
            "unfreezing": None if self.schedule is None else self.schedule.state_dict(),
            "early_stopping": None if self.stopper is None else self.stopper.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Applied now when built, else kept until :meth:`build`.

        Raises:
            ValueError: the state has a schedule or stopper this configuration lacks, or the reverse.
        """
        if not state:  # saved before anything was built
            return
        for key, spec in (("unfreezing", self.unfreezing_spec), ("early_stopping", self.early_stopping_spec)):
            if (state.get(key) is None) != (spec is None):
                raise ValueError(f"saved state {'has' if state.get(key) is not None else 'lacks'} {key}, this callback "
                                 f"{'lacks' if spec is None else 'has'} it")
        if self.optimizer is None:
            self.pending = dict(state)
            return
        if self.schedule is not None:
            self.schedule.load_state_dict(state["unfreezing"])
        if self.stopper is not None:
            self.stopper.load_state_dict(state["early_stopping"])
