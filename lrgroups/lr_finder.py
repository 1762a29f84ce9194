"""An lr range test that keeps the rules' ratios: one multiplier swept over every param group's lr.

Smith's range test (WACV 2017, "Cyclical Learning Rates for Training Neural Networks", §3.3), as
fastai's ``lr_find`` and ``pytorch-lr-finder`` run it, raises the lr exponentially over a short
training run and reads the loss curve. Run on param groups they set every group to one lr (Lightning's
``Tuner.lr_find``, ``torch-lr-finder``) or sweep each group from its own start to one common end
(fastai v2), so the ratios the rules gave the groups (layer decay, a fast head) are lost.
:func:`lr_range_test` sweeps one multiplier ``m`` and sets every group's lr to ``m`` times the lr its
rules planned, so the curve answers "how far can I scale *this* plan", and then puts everything back:
the model's weights and buffers, the optimizer's state and hyperparameters, the modules' train/eval
modes and the random number generators are as they were.

Example:
    >>> import torch, torch.nn as nn, lrgroups
    >>> from lrgroups.lr_finder import lr_range_test
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])
    >>> batches = [(torch.randn(32, 4), torch.randint(0, 3, (32,))) for _ in range(8)]
    >>> loss = lambda model, batch: nn.functional.cross_entropy(model(batch[0]), batch[1])
    >>> result = lr_range_test(opt, model, batches, loss, start=1e-2, end=1e2, num_steps=40)
    >>> list(result.table.columns)[:4]
    ['step', 'multiplier', 'loss', 'smoothed_loss']
    >>> [round(lr, 6) for lr in result.lrs(1.0)] == [round(group["lr"], 6) for group in opt.param_groups]
    True
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from itertools import cycle, islice
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
import torch.nn as nn

from .optimizer import LayerwiseOptimizer

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LRRangeTest", "lr_range_test", "SUGGESTIONS"]

LossFn = Callable[[nn.Module, Any], torch.Tensor]

#: How a multiplier is suggested from the smoothed curve (``suggest=``).
SUGGESTIONS = {
    "steepest": "the multiplier where the smoothed loss falls fastest per unit of log(multiplier) "
    "(pytorch-lr-finder's suggestion; fastai's 'steep')",
    "minimum/10": "a tenth of the multiplier with the lowest smoothed loss (fastai's 'minimum' rule)",
}


@dataclass(frozen=True)
class LRRangeTest:
    """The result of :func:`lr_range_test`.

    Attributes:
        table: one row per step: ``step``, ``multiplier`` (of the planned lrs), ``loss`` (the batch's
            training loss), ``smoothed_loss`` (bias-corrected exponential moving average), then
            ``lr_<group>`` for every param group (its lr at that step).
        suggestion: the suggested multiplier (``None`` when the curve is too short to suggest one).
        rule: how ``suggestion`` was chosen, in words.
        planned_lrs: every param group's planned lr (the rules' lrs at multiplier 1).
        stopped: why the sweep ended: ``"end"`` (reached ``end``), ``"diverged"`` or ``"not finite"``.
    """

    table: "pd.DataFrame"
    suggestion: float | None
    rule: str
    planned_lrs: tuple[float, ...]
    stopped: str

    def lrs(self, multiplier: float | None = None) -> list[float]:
        """Every group's lr at ``multiplier`` (default: the suggestion), the rules' ratios kept: what to
        give a scheduler that takes one lr per group (``OneCycleLR(max_lr=result.lrs())``).

        Raises:
            ValueError: no multiplier given and none suggested.
        """
        multiplier = self.suggestion if multiplier is None else multiplier
        if multiplier is None:
            raise ValueError("the range test suggested no multiplier (too few steps); pass one")
        return [multiplier * lr for lr in self.planned_lrs]

    def plot(self, ax: Any = None) -> Any:
        """The smoothed loss against the multiplier (log scale), the suggestion marked; needs matplotlib.

        Returns:
            The matplotlib ``Axes``.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(self.table["multiplier"], self.table["smoothed_loss"], label="smoothed loss")
        ax.plot(self.table["multiplier"], self.table["loss"], alpha=0.3, label="loss")
        if self.suggestion is not None:
            ax.axvline(self.suggestion, color="tab:red", linestyle="--", label=f"suggested x{self.suggestion:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("multiplier of the rules' lrs")
        ax.set_ylabel("training loss")
        ax.legend()
        return ax


def lr_range_test(
    optimizer: LayerwiseOptimizer,
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn,
    *,
    start: float = 1e-4,
    end: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    diverge: float = 4.0,
    suggest: str = "steepest",
) -> LRRangeTest:
    """Sweep one multiplier of the rules' lrs from ``start`` to ``end`` (geometric, ``num_steps``
    steps), training on ``batches`` with ``loss_fn``, then restore everything.

    Each step sets every param group's lr to ``multiplier * planned_lr`` (frozen groups included, so
    the ratios hold when they thaw), computes ``loss_fn(model, batch)``, and steps ``optimizer``.
    Batches are cycled when there are fewer than ``num_steps``. The sweep ends early when the smoothed
    loss exceeds ``diverge`` times its minimum or a loss is not finite (fastai stops at 4x). The
    model trains in train mode. Step hooks registered on ``optimizer`` after hooks (a schedule's or a
    driver's step count) do not see the test's steps; ``optimizer.step()``'s own work (L2-SP, the
    frozen-parameter checks) runs as in training.

    Afterwards the model's ``state_dict`` (weights and buffers), every module's train/eval mode, the
    optimizer's ``state_dict`` and each group's hyperparameters (lr as a scheduler left it), ``.grad``
    (cleared) and torch's CPU and CUDA random states are as they were before the call.

    Args:
        optimizer: a :class:`~lrgroups.LayerwiseOptimizer` over ``model``.
        model: the model (any ``nn.Module``, a LightningModule, an HF model).
        batches: an iterable of batches (a DataLoader), passed to ``loss_fn`` as they are.
        loss_fn: ``loss_fn(model, batch) -> loss``, a scalar tensor to minimise.
        start: the first multiplier (> 0).
        end: the last multiplier (> ``start``).
        num_steps: steps in the sweep (>= 2).
        smoothing: the moving average's factor ``beta`` in ``[0, 1)`` (fastai: 0.98).
        diverge: stop when the smoothed loss exceeds this many times its minimum (> 1).
        suggest: ``"steepest"`` or ``"minimum/10"`` (see :data:`SUGGESTIONS`).

    Returns:
        The :class:`LRRangeTest` (its ``table``, ``suggestion``, ``rule``, :meth:`~LRRangeTest.lrs`,
        :meth:`~LRRangeTest.plot`).

    Raises:
        ValueError: a bad argument, an optimizer whose groups have no planned lr (an inner optimizer
            that computes its own), ``batches`` empty, or a loss that is not a scalar tensor.
        TypeError: ``optimizer`` is not a :class:`~lrgroups.LayerwiseOptimizer`.
    """
    if not isinstance(optimizer, LayerwiseOptimizer):
        raise TypeError(f"the range test sweeps a LayerwiseOptimizer's planned lrs; got {type(optimizer).__name__}")
    if not (0 < start < end and math.isfinite(end)):
        raise ValueError(f"need 0 < start < end < inf, got start={start!r}, end={end!r}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    if not diverge > 1:
        raise ValueError(f"diverge must be > 1, got {diverge!r}")
    if suggest not in SUGGESTIONS:
        raise ValueError(f"suggest must be one of {sorted(SUGGESTIONS)}, got {suggest!r}")
    planned = [lr for lr in optimizer._planned_lrs]
    if any(lr is None or not math.isfinite(lr) for lr in planned):
        raise ValueError("the range test needs every param group's planned lr; an inner optimizer that computes "
                         "its own lr (lr=None) has none to scale")

    saved = _Snapshot(model, optimizer)
    rows: list[dict[str, float]] = []
    stopped = "end"
    try:
        model.train()
        hooks = dict(optimizer._optimizer_step_post_hooks)
        optimizer._optimizer_step_post_hooks.clear()
        try:
            stopped = _sweep(optimizer, model, batches, loss_fn, planned, rows, start, end, num_steps, smoothing, diverge)
        finally:
            optimizer._optimizer_step_post_hooks.update(hooks)
    finally:
        saved.restore()
    if not rows:
        raise ValueError("batches is empty: the range test needs at least one batch")
    import pandas as pd

    table = pd.DataFrame(rows)
    return LRRangeTest(table, _suggest(table, suggest), SUGGESTIONS[suggest], tuple(planned), stopped)


def _sweep(optimizer, model, batches, loss_fn, planned, rows, start, end, num_steps, smoothing, diverge) -> str:
    average, best = 0.0, math.inf
    ratio = end / start
    for step, batch in enumerate(islice(cycle(batches), num_steps)):
        multiplier = start * ratio ** (step / (num_steps - 1))
        for group, lr in zip(optimizer.param_groups, planned, strict=True):
            group["lr"] = multiplier * lr
        optimizer.zero_grad()
        loss = loss_fn(model, batch)
        if not (isinstance(loss, torch.Tensor) and loss.ndim == 0):
            raise ValueError(f"loss_fn must return a scalar tensor, got {loss!r}")
        value = float(loss.detach())
        if not math.isfinite(value):
            return "not finite"
        loss.backward()
        optimizer.step()
        average = smoothing * average + (1 - smoothing) * value
        smoothed = average / (1 - smoothing ** (step + 1))
        rows.append({"step": step, "multiplier": multiplier, "loss": value, "smoothed_loss": smoothed,
                     **{f"lr_{i}": group["lr"] for i, group in enumerate(optimizer.param_groups)}})
        best = min(best, smoothed)
        if smoothed > diverge * best:
            return "diverged"
    return "end"


def _suggest(table: "pd.DataFrame", rule: str) -> float | None:
    curve = table[table["loss"].notna()]
    if rule == "minimum/10":
        return float(curve.loc[curve["smoothed_loss"].idxmin(), "multiplier"]) / 10 if len(curve) else None
    # steepest: skip the first tenth (the average is still warming up) and the last point.
    skip = max(1, len(curve) // 10)
    part = curve.iloc[skip:-1]
    if len(part) < 3:
        return None
    slope = part["smoothed_loss"].diff() / part["multiplier"].map(math.log).diff()
    return float(part.loc[slope.idxmin(), "multiplier"])


class _Snapshot:
    """What the range test changes, kept to put back: model state and modes, optimizer state and
    hyperparameters, gradients, random states."""

    def __init__(self, model: nn.Module, optimizer: LayerwiseOptimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.weights = copy.deepcopy(model.state_dict())
        self.modes = [(module, module.training) for module in model.modules()]
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.hyper = [{key: copy.deepcopy(value) for key, value in group.items() if key != "params"}
                      for group in optimizer.param_groups]
        self.grads = [(p, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def restore(self) -> None:
        self.model.load_state_dict(self.weights)
        for module, training in self.modes:
            module.training = training
        self.optimizer.load_state_dict(self.optimizer_state)
        for group, hyper in zip(self.optimizer.param_groups, self.hyper, strict=True):
            group.update(hyper)
        for param, grad in self.grads:
            param.grad = grad
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
