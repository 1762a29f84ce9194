"""What the framework callbacks share: building ProgressiveUnfreezing / EarlyStopping from their
configuration once the optimizer exists, feeding them the framework's events, and their state."""

from __future__ import annotations

import difflib
import inspect
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


def _check_keys(what: str, given: Mapping[str, Any], target: Callable, set_here: tuple[str, ...]) -> None:
    accepted = [name for name in inspect.signature(target).parameters if name not in ("self", *set_here)]
    unknown = [key for key in given if key not in accepted]
    if unknown:
        hints = [f"{key!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, accepted, n=1))
                 else repr(key) for key in unknown]
        raise TypeError(f"{what}: unknown arguments {', '.join(hints)}; accepted: {', '.join(accepted)}")


def check_specs(unfreezing: UnfreezingSpec, early_stopping: EarlyStoppingSpec) -> None:
    """Check the configuration when a callback is built, not when training starts: known argument
    names (with the closest one), and values the schedule and the stopper accept (a stopper and a
    plateau are built once, on nothing, to run their own checks).

    Raises:
        TypeError: a spec of the wrong kind, or an unknown argument.
        ValueError: a value the schedule or the stopper refuses; ``model`` or ``unfreezing`` given
            in ``early_stopping`` (the callback sets them).
    """
    if unfreezing is not None and not (isinstance(unfreezing, (Mapping, Recipe)) or callable(unfreezing)):
        raise TypeError(f"unfreezing must be a dict of ProgressiveUnfreezing arguments, a Recipe or a callable, got {unfreezing!r}")
    if isinstance(unfreezing, Mapping):
        _check_keys("unfreezing", unfreezing, ProgressiveUnfreezing.__init__, ("optimizer",))
        for key in ("every_steps", "every_epochs", "warmup_steps", "depths_per_stage"):
            value = unfreezing.get(key)
            if value is not None and (not isinstance(value, int) or value < (0 if key == "warmup_steps" else 1)):
                raise ValueError(f"unfreezing: {key} must be an integer >= {0 if key == 'warmup_steps' else 1}, "
                                 f"got {value!r}")
        if isinstance(unfreezing.get("plateau"), Mapping):
            _check_keys("unfreezing.plateau", unfreezing["plateau"], Plateau.__init__, ())
            Plateau(**unfreezing["plateau"])
    if early_stopping is not None and isinstance(unfreezing, Mapping) and unfreezing.get("plateau") is not None:
        raise ValueError("one plateau per metric: a plateau in unfreezing and early_stopping would both watch the "
                         "monitor and advance two stages on one flat check. Give the patience to early_stopping "
                         "alone: on a plateau it advances the schedule while stages remain, then stops")
    if early_stopping is not None:
        if not isinstance(early_stopping, Mapping):
            raise TypeError(f"early_stopping must be a dict of EarlyStopping arguments, got {early_stopping!r}")
        for key in ("model", "unfreezing"):
            if key in early_stopping:
                raise ValueError(f"early_stopping: {key!r} is set by the callback, do not pass it")
        _check_keys("early_stopping", early_stopping, EarlyStopping.__init__, ("model", "unfreezing"))
        EarlyStopping(**{k: v for k, v in early_stopping.items() if k not in ("restore_best", "best_weights_path")})


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
            self.stopper = EarlyStopping.from_settings(self.early_stopping_spec, model=model, unfreezing=self.schedule)
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
