"""Early stopping on a validation metric, with best-weight restoring and unfreezing stages.

Train, validate every epoch, stop when the validation loss stops improving and put the weights of
the best epoch back into the model:

Example:

    >>> import torch
    >>> from lrgroups.early_stopping import EarlyStopping
    >>> _ = torch.manual_seed(0)
    >>> w = torch.randn(32, 1)  # a noisy linear task, small enough to overfit
    >>> x, x_val = torch.randn(24, 32), torch.randn(64, 32)
    >>> y, y_val = x @ w + torch.randn(24, 1), x_val @ w + torch.randn(64, 1)
    >>> model = torch.nn.Linear(32, 1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    >>> stopper = EarlyStopping("min", patience=5, min_delta=1e-3, restore_best=True, model=model)
    >>> for epoch in range(1000):
    ...     optimizer.zero_grad()
    ...     torch.nn.functional.mse_loss(model(x), y).backward()
    ...     optimizer.step()
    ...     with torch.no_grad():
    ...         val_loss = torch.nn.functional.mse_loss(model(x_val), y_val)
    ...     decision = stopper.observe(val_loss, step=epoch)
    ...     if decision.stop:
    ...         break
    >>> decision.stop, decision.restored, decision.step - decision.best_step
    (True, True, 5)
    >>> print(decision.reason)  # doctest: +ELLIPSIS
    no improvement > 0.001 in the last 5 checks (best ... at step ...)
    >>> with torch.no_grad():  # the model holds the weights of the best epoch again
    ...     torch.nn.functional.mse_loss(model(x_val), y_val).item() == decision.best
    True

The rules, applied to every check in this order:

1. **Improvement.** A finite value improves on the best iff it is below ``best - margin`` (mode
   ``"min"``) or above ``best + margin`` (``"max"``), where ``margin = min_delta``, or
   ``min_delta * |best|`` with ``relative=True``. The first finite value always improves. Ties and
   values exactly ``margin`` from the best do not; non-finite values (NaN, +-inf) never do.
2. **Non-finite.** With ``check_finite=True`` a NaN or infinite value stops (cause ``"non_finite"``).
   With ``check_finite=False`` it only counts as a check without improvement (rules 3-4 skip it).
3. **Divergence.** A value worse than ``divergence_threshold`` (strictly above it in ``"min"`` mode,
   below it in ``"max"``) stops (``"divergence"``).
4. **Good enough.** A value at least as good as ``stopping_threshold`` (``<=`` in ``"min"``, ``>=`` in
   ``"max"``) stops (``"stopping_threshold"``).
5. **Plateau.** After ``patience`` consecutive checks without improvement (at least one; ``patience``
   0 and 1 both fire on the first), it stops (``"plateau"``) -- unless an ``unfreezing`` schedule has
   stages remaining and ``stop_while_stages_remain=False``: then it calls
   ``unfreezing.advance(reason)``, does not stop, and (with ``reset_patience_on_advance=True``)
   restarts the count of checks without improvement, keeping the best value.
6. **Minimum steps.** While ``step < min_steps`` no stop of any cause is made (the counts go on, so a
   plateau held back stops at the first allowed check that does not improve). Stage advances are
   not held back.
7. **Restoring.** With ``restore_best=True`` the model's state dict (buffers included) is copied,
   bitwise, at every improving check -- to CPU memory, or to ``best_weights_path`` -- and loaded back
   into the model on every stop (and on ``restore()``). Entries that are not tensors (a module's
   ``get_extra_state()``, which may return a dict or any picklable object) are kept as deep copies,
   tensors inside them copied to the CPU like the others.

One verb feeds a metric everywhere in lrgroups: ``observe(metric, step=None)`` (:meth:`Plateau.observe`,
:meth:`EarlyStopping.observe`, :meth:`lrgroups.ProgressiveUnfreezing.observe`,
:meth:`lrgroups.driver.FineTuning.observe`); ``step()`` only ever counts optimizer steps.
``EarlyStopping.step(metric)`` and ``Plateau.update`` are deprecated names of ``observe``.

``patience`` follows Keras and Lightning (stop on the ``patience``-th check without improvement), not
``torch.optim.lr_scheduler.ReduceLROnPlateau`` (which tolerates ``patience`` such checks).
"""

from __future__ import annotations

import copy
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from . import _deprecated

Mode = Literal["min", "max"]
Cause = Literal["non_finite", "divergence", "stopping_threshold", "plateau"]


class Unfreezing(Protocol):
    """What `EarlyStopping` needs of a progressive-unfreezing schedule."""

    @property
    def stages_remaining(self) -> int:
        """Stages not unfrozen yet."""
        ...

    def advance(self, reason: str) -> list[str]:
        """Unfreeze the next stage; returns the names unfrozen."""
        ...


def is_improvement(
    value: float, best: float | None, mode: Mode, min_delta: float, relative: bool = False
) -> bool:
    """Whether ``value`` improves on ``best`` by more than the margin (rule 1 of this module).

    >>> is_improvement(0.9, 1.0, "min", 0.1), is_improvement(0.89, 1.0, "min", 0.1)
    (False, True)
    >>> is_improvement(2.5, 2.0, "max", 0.2, relative=True)  # margin 0.2 * |2.0| = 0.4
    True
    """
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    margin = min_delta * abs(best) if relative else min_delta
    return value < best - margin if mode == "min" else value > best + margin


class Plateau:
    """The best value of a metric and how many checks have passed without improving on it.

    >>> plateau = Plateau("max", patience=2, min_delta=0.01)
    >>> [plateau.observe(accuracy, step) for step, accuracy in enumerate([0.80, 0.85, 0.855, 0.85])]
    [True, True, False, False]
    >>> plateau.is_plateau, plateau.best, plateau.best_step
    (True, 0.85, 1)
    >>> print(plateau.describe())
    no improvement > 0.01 in the last 2 checks (best 0.85 at step 1)

    Args:
        mode: ``"min"`` if lower is better (a loss), ``"max"`` if higher is (an accuracy).
        patience: consecutive checks without improvement that make a plateau (0 acts as 1).
        min_delta: the margin an improvement must exceed, >= 0.
        relative: if True the margin is ``min_delta * |best|`` instead of ``min_delta``.
    """

    def __init__(
        self, mode: Mode = "min", patience: int = 3, min_delta: float = 0.0, *, relative: bool = False
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {patience!r}")
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"min_delta must be finite and >= 0, got {min_delta!r}")
        self.mode, self.patience, self.min_delta, self.relative = mode, patience, min_delta, relative
        self.best: float | None = None
        self.best_step: int | None = None
        self.checks_since_improvement = 0
        #: Checks recorded so far (the default ``step`` of :meth:`observe` is this count, from 1).
        self.checks = 0

    @classmethod
    def from_settings(cls, settings: "Plateau | Mapping[str, Any]") -> "Plateau":
        """A Plateau from its keyword arguments (a schedule's configuration), or ``settings`` itself
        when it is one already: the one place a configuration's plateau is built.

        Args:
            settings: a :class:`Plateau`, or a mapping of its keyword arguments.

        Returns:
            The plateau.

        Raises:
            TypeError: ``settings`` is neither, or has an unknown key (the accepted ones are named).
            ValueError: as the constructor.

        Example:
            >>> Plateau.from_settings({"mode": "max", "patience": 2}).patience
            2
        """
        if isinstance(settings, Plateau):
            return settings
        if not isinstance(settings, Mapping):
            raise TypeError(f"a plateau is a Plateau or a dict of its arguments, got {settings!r}")
        accepted = ("mode", "patience", "min_delta", "relative")
        unknown = [
            f"{key!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(str(key), accepted, n=1))
            else repr(key)
            for key in settings
            if key not in accepted
        ]
        if unknown:
            raise TypeError(f"plateau: unknown arguments {', '.join(unknown)}; accepted: {', '.join(accepted)}")
        return cls(**settings)

    def observe(self, metric: float | torch.Tensor, step: int | None = None) -> bool:
        """Record one check of ``metric`` (a float or a one-element tensor).

        Args:
            metric: the value.
            step: the step the check is recorded at (:attr:`best_step` takes it); default the
                number of checks so far, this one included (1, 2, ...).

        Returns:
            Whether ``metric`` improved on the best (rule 1); :attr:`is_plateau` says whether the
            checks since the best now make a plateau.
        """
        self.checks += 1
        step = self.checks if step is None else step
        value = float(metric)
        improved = is_improvement(value, self.best, self.mode, self.min_delta, self.relative)
        if improved:
            self.best, self.best_step, self.checks_since_improvement = value, step, 0
        else:
            self.checks_since_improvement += 1
        return improved

    update = _deprecated.alias("observe")

    @property
    def is_plateau(self) -> bool:
        """Whether the last ``max(patience, 1)`` or more checks all failed to improve."""
        return self.checks_since_improvement >= max(self.patience, 1)

    def reset_patience(self) -> None:
        """Restarts the count of checks without improvement; the best value is kept."""
        self.checks_since_improvement = 0

    def describe(self) -> str:
        """The plateau in words, with its numbers."""
        margin = f"{self.min_delta:g}" + (" x |best|" if self.relative else "")
        return (
            f"no improvement > {margin} in the last {self.checks_since_improvement} checks"
            f" ({_best_text(self.best, self.best_step)})"
        )

    def state_dict(self) -> dict[str, Any]:
        """The mode, the best value and its step, the checks since it and all checks (plain values)."""
        return {
            "mode": self.mode,
            "best": self.best,
            "best_step": self.best_step,
            "checks_since_improvement": self.checks_since_improvement,
            "checks": self.checks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (see :meth:`state_dict`).

        Raises:
            ValueError: the state was saved in the other mode.
        """
        if state["mode"] != self.mode:
            raise ValueError(f"state was saved in mode {state['mode']!r}, this Plateau is {self.mode!r}")
        self.best, self.best_step = state["best"], state["best_step"]
        self.checks_since_improvement = state["checks_since_improvement"]
        self.checks = state.get("checks", 0)  # saved before the count was kept: 0


def _to_cpu(value: Any, clone: bool) -> Any:
    """A state-dict value on the CPU: tensors (also inside dicts, lists and tuples) moved, bitwise;
    any other value (a module's extra state) deep-copied when ``clone``, so later changes to the
    model's object do not reach the kept one."""
    if isinstance(value, torch.Tensor):
        return value.to("cpu", copy=clone)
    if isinstance(value, dict):
        return type(value)((k, _to_cpu(v, clone)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_to_cpu(v, clone) for v in value)
    return copy.deepcopy(value) if clone else value


def _best_text(best: float | None, best_step: int | None) -> str:
    return "no finite value yet" if best is None else f"best {best:g} at step {best_step}"


def _better(value: float, than: float, mode: Mode) -> bool:
    return value < than if mode == "min" else value > than


@dataclass(frozen=True)
class Decision:
    """What ``EarlyStopping.observe`` decided about one check.

    >>> EarlyStopping("min", patience=1).observe(float("nan"))  # doctest: +NORMALIZE_WHITESPACE
    Decision(stop=True, improved=False, advanced_stage=False, restored=False, cause='non_finite',
             reason='metric is nan at step 1 (no finite value yet)', step=1, value=nan, best=None,
             best_step=None)

    ``cause`` and ``reason`` are set when the check stops or advances an unfreezing stage, else None;
    ``restored`` says whether the best weights were loaded back into the model.
    """

    stop: bool
    improved: bool
    advanced_stage: bool
    restored: bool
    cause: Cause | None
    reason: str | None
    step: int
    value: float
    best: float | None
    best_step: int | None


class EarlyStopping:
    """Decides, check by check, whether to stop training, by the rules in this module's docstring.

    >>> stopper = EarlyStopping("min", patience=2, min_delta=1e-3)
    >>> checks = [(100, 0.5), (200, 0.4), (300, 0.3995), (400, 0.41)]
    >>> [stopper.observe(loss, step).stop for step, loss in checks]
    [False, False, False, True]
    >>> print(stopper.observe(0.45, 500).reason)
    no improvement > 0.001 in the last 3 checks (best 0.4 at step 200)

    Args:
        mode: ``"min"`` if lower is better, ``"max"`` if higher is (as for `Plateau`).
        patience: checks without improvement that make a plateau (as for `Plateau`).
        min_delta: the margin an improvement must exceed (as for `Plateau`).
        relative: the margin is ``min_delta * |best|`` (as for `Plateau`).
        min_steps: no stop while ``step < min_steps``.
        stopping_threshold: stop once the metric is at least this good.
        divergence_threshold: stop once the metric is worse than this.
        check_finite: stop on a NaN or infinite metric (else it counts as no improvement).
        restore_best: keep the best weights of ``model`` and load them back on stop.
        model: the model whose weights ``restore_best`` keeps.
        best_weights_path: keep them in this file instead of in CPU memory (for large models).
        unfreezing: an `Unfreezing` schedule to advance, instead of stopping, on a plateau.
        reset_patience_on_advance: restart the plateau count after each stage advance.
        stop_while_stages_remain: stop on a plateau even if ``unfreezing`` has stages left.
    """

    def __init__(
        self,
        mode: Mode = "min",
        patience: int = 3,
        min_delta: float = 0.0,
        *,
        relative: bool = False,
        min_steps: int = 0,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_finite: bool = True,
        restore_best: bool = False,
        model: nn.Module | None = None,
        best_weights_path: str | os.PathLike[str] | None = None,
        unfreezing: Unfreezing | None = None,
        reset_patience_on_advance: bool = True,
        stop_while_stages_remain: bool = False,
    ) -> None:
        self.plateau = Plateau(mode, patience, min_delta, relative=relative)
        if min_steps < 0:
            raise ValueError(f"min_steps must be >= 0, got {min_steps!r}")
        thresholds = {"stopping_threshold": stopping_threshold, "divergence_threshold": divergence_threshold}
        for name, threshold in thresholds.items():
            if threshold is not None and not math.isfinite(threshold):
                raise ValueError(f"{name} must be finite or None, got {threshold!r}")
        if None not in thresholds.values() and not _better(stopping_threshold, divergence_threshold, mode):
            raise ValueError(
                f"stopping_threshold {stopping_threshold:g} must be better than "
                f"divergence_threshold {divergence_threshold:g} in mode {mode!r}"
            )
        if restore_best != (model is not None):
            raise ValueError(f"restore_best={restore_best} but model is {model!r}: give both or neither")
        if best_weights_path is not None and not restore_best:
            raise ValueError("best_weights_path is only used with restore_best=True")
        if unfreezing is not None and not (
            hasattr(unfreezing, "stages_remaining") and callable(getattr(unfreezing, "advance", None))
        ):
            raise TypeError(f"unfreezing needs stages_remaining and advance(reason), got {unfreezing!r}")
        self.min_steps, self.check_finite = min_steps, check_finite
        self.stopping_threshold, self.divergence_threshold = stopping_threshold, divergence_threshold
        self.restore_best, self.model = restore_best, model
        self.best_weights_path = None if best_weights_path is None else Path(best_weights_path)
        self.unfreezing = unfreezing
        self.reset_patience_on_advance = reset_patience_on_advance
        self.stop_while_stages_remain = stop_while_stages_remain
        self._best_weights: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, model: nn.Module | None = None,
                      unfreezing: Unfreezing | None = None, **defaults: Any) -> "EarlyStopping":
        """An EarlyStopping from keyword ``settings`` (a recipe's, a framework callback's) and
        ``defaults`` under them: ``model`` is passed on only when the settings keep its best weights
        (``restore_best`` or ``best_weights_path``), so settings without them never fail for a model
        given. The one place recipes and callbacks build their stopper.

        Raises:
            ValueError, TypeError: as the constructor.

        Example:
            >>> import torch.nn as nn
            >>> EarlyStopping.from_settings({"patience": 3}, model=nn.Linear(2, 2), mode="max").model is None
            True
        """
        kwargs = {**defaults, **settings}
        if kwargs.get("restore_best") or kwargs.get("best_weights_path"):
            kwargs["model"] = model
        return cls(**kwargs, unfreezing=unfreezing)

    @property
    def best(self) -> float | None:
        """The best value of the metric so far (``None`` before the first check)."""
        return self.plateau.best

    @property
    def best_step(self) -> int | None:
        """The step of :attr:`best` (``None`` before the first check)."""
        return self.plateau.best_step

    @property
    def calls(self) -> int:
        """Checks recorded so far (:attr:`Plateau.checks` of :attr:`plateau`)."""
        return self.plateau.checks

    def observe(self, metric: float | torch.Tensor, step: int | None = None) -> Decision:
        """Record one check of ``metric`` and decide, by the rules of this module.

        Args:
            metric: the value (a float or a one-element tensor).
            step: the check index or training step; default the number of checks so far, this one
                included (1, 2, ...).

        Returns:
            The :class:`Decision` (``decision.stop``: stop training now).

        Raises:
            RuntimeError: a stop with ``best_weights_path`` whose file holds another step's weights.
        """
        step = self.plateau.checks + 1 if step is None else step
        value = float(metric)
        improved = self.plateau.observe(value, step)
        if improved and self.model is not None:
            self._save_best(self.model, step)
        cause, reason = self._cause(value, step)
        advanced = cause == "plateau" and self._advance(reason)
        stop = cause is not None and not advanced and step >= self.min_steps
        restored = stop and self.restore_best and self.plateau.best_step is not None
        if restored:
            self.restore()
        if not (stop or advanced):
            cause = reason = None
        best, best_step = self.plateau.best, self.plateau.best_step
        return Decision(stop, improved, advanced, restored, cause, reason, step, value, best, best_step)

    #: Deprecated name of :meth:`observe` (it fed a metric; ``step()`` counts optimizer steps elsewhere
    #: in lrgroups, and EarlyStopping counts no steps).
    step = _deprecated.alias("observe")

    def _cause(self, value: float, step: int) -> tuple[Cause | None, str | None]:
        mode, best = self.plateau.mode, _best_text(self.plateau.best, self.plateau.best_step)
        if not math.isfinite(value):
            if self.check_finite:
                return "non_finite", f"metric is {value} at step {step} ({best})"
        elif self.divergence_threshold is not None and _better(self.divergence_threshold, value, mode):
            return "divergence", (
                f"metric {value:g} at step {step} is worse than divergence_threshold "
                f"{self.divergence_threshold:g} ({best})"
            )
        elif self.stopping_threshold is not None and not _better(self.stopping_threshold, value, mode):
            return "stopping_threshold", (
                f"metric {value:g} at step {step} reached stopping_threshold {self.stopping_threshold:g}"
            )
        if self.plateau.is_plateau:
            return "plateau", self.plateau.describe()
        return None, None

    def _advance(self, reason: str) -> bool:
        unfreezing = self.unfreezing
        if unfreezing is None or self.stop_while_stages_remain or unfreezing.stages_remaining <= 0:
            return False
        unfreezing.advance(reason)
        if self.reset_patience_on_advance:
            self.plateau.reset_patience()
        return True

    def _save_best(self, model: nn.Module, step: int) -> None:
        if self.best_weights_path is None:
            self._best_weights = {name: _to_cpu(value, clone=True) for name, value in model.state_dict().items()}
            return
        # torch.save copies one storage at a time to the CPU; the rename makes the write atomic.
        partial = self.best_weights_path.with_name(self.best_weights_path.name + ".partial")
        torch.save({"step": step, "weights": model.state_dict()}, partial)
        os.replace(partial, self.best_weights_path)

    def restore(self) -> None:
        """Loads the best weights seen so far back into the model, in place."""
        if self.model is None:
            raise RuntimeError("restore() needs restore_best=True and a model")
        if self.plateau.best_step is None:
            raise RuntimeError("no best weights yet: no finite metric has been seen")
        if self.best_weights_path is None:
            # Extra state is handed to set_extra_state, which may keep and change it: give it a copy.
            weights = {k: v if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in self._best_weights.items()}
        else:
            saved = torch.load(self.best_weights_path, map_location="cpu", weights_only=True, mmap=True)
            if saved["step"] != self.plateau.best_step:
                raise RuntimeError(
                    f"{self.best_weights_path} holds the weights of step {saved['step']}, but the best is "
                    f"at step {self.plateau.best_step} (was it overwritten after this state was saved?)"
                )
            weights = saved["weights"]
        self.model.load_state_dict(weights)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values and tensors only: it loads with ``torch.load(weights_only=True)``."""
        state: dict[str, Any] = {"plateau": self.plateau.state_dict(), "calls": self.calls}
        if self.best_weights_path is not None:
            state["best_weights_path"] = str(self.best_weights_path)
        elif self.restore_best:
            state["best_weights"] = self._best_weights
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from ``state``; the unfreezing schedule keeps its own state."""
        saved = state.get("best_weights_path") or ("memory" if "best_weights" in state else "nowhere")
        mine = self._weights_location()
        if saved != mine:
            raise ValueError(f"state keeps best weights in {saved}, this EarlyStopping in {mine}")
        self.plateau.load_state_dict(state["plateau"])
        self.plateau.checks = state["calls"]
        if saved == "memory":
            weights = state["best_weights"]
            self._best_weights = None if weights is None else {k: _to_cpu(v, clone=False) for k, v in weights.items()}

    def _weights_location(self) -> str:
        if self.best_weights_path is not None:
            return str(self.best_weights_path)
        return "memory" if self.restore_best else "nowhere"
