"""Choosing what to tune from the gradients: the relative gradient norm and Auto-RGN.

Lee et al. (ICLR 2023, "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts", §5) rank
the layers that most need to change for a target distribution by their *relative gradient norm*
``RGN = ||g|| / ||theta||`` (the gradient of the target loss at the pretrained weights, over the
weights' own norm), and propose **Auto-RGN**: each tensor's lr is the base lr times its RGN divided by
the largest RGN, so the layers the target pulls hardest train fastest and the others barely move. The
authors' code (``get_lr_weights``) measures RGN on 5 training batches, averages the per-batch values,
and normalises by the maximum.

:func:`relative_gradient_norms` measures it (per tensor or per depth) without changing the model;
:func:`auto_rgn` turns it into a :class:`~lrgroups.Rule` of lr multipliers that composes with every
other rule.

Example:
    >>> import torch, torch.nn as nn, lrgroups
    >>> from lrgroups.rgn import auto_rgn
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> batches = [(torch.randn(16, 4), torch.randint(0, 2, (16,))) for _ in range(5)]
    >>> loss = lambda model, batch: nn.functional.cross_entropy(model(batch[0]), batch[1])
    >>> opt = lrgroups.LayerwiseOptimizer(model, torch.optim.Adam, lr=1e-3, rules=[auto_rgn(model, batches, loss)])
    >>> lrs = opt.explain()["lr"]
    >>> bool(lrs.max() == 1e-3 and (lrs > 0).all())
    True
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from .depth import describe
from .rules import Rule

__all__ = ["relative_gradient_norms", "auto_rgn"]

LossFn = Callable[[nn.Module, Any], torch.Tensor]
_BY = ("tensor", "depth")


def relative_gradient_norms(
    model: nn.Module, batches: Iterable[Any], loss_fn: LossFn, *, by: str = "tensor", coarse: bool = False
) -> dict[Any, float]:
    """The relative gradient norm ``||g|| / ||theta||`` of every trainable tensor (or depth), averaged
    over ``batches`` (Lee et al., ICLR 2023, §5).

    Gradients come from :func:`torch.autograd.grad`, so ``.grad`` is left as it was; the forward
    passes run in the model's current mode (the authors' code: train mode), and every buffer
    (BatchNorm running statistics) is restored afterwards: the model is unchanged.

    Args:
        model: any ``nn.Module`` (wrappers are looked through, as by :class:`~lrgroups.LayerwiseOptimizer`).
        batches: an iterable of batches (the authors use 5 training batches); each is passed to
            ``loss_fn`` as it is.
        loss_fn: ``loss_fn(model, batch) -> loss``, a scalar tensor (the target task's training loss).
        by: ``"tensor"`` (the paper: one value per parameter tensor, keyed by its name) or
            ``"depth"`` (one value per depth, keyed by the depth, over the tensors of that depth:
            ``||g_depth|| / ||theta_depth||`` with the norms over all of them).
        coarse: stage-wise depths, as ``coarse=`` of :class:`~lrgroups.LayerwiseOptimizer` (``by="depth"``).

    Returns:
        ``{name or depth: mean RGN}`` over the tensors with ``requires_grad``; a tensor (or depth)
        whose weights are all zero has no RGN (``nan``), unless its gradient is zero too (``0.0``).

    Raises:
        ValueError: ``by`` unknown, no trainable tensor, ``batches`` empty, or a loss that is not a
            finite scalar.
    """
    if by not in _BY:
        raise ValueError(f"by must be one of {_BY}, got {by!r}")
    infos = [info for info in describe(model, coarse) if info.param.requires_grad]
    if not infos:
        raise ValueError("the model has no trainable parameter (requires_grad=True) to measure")
    keys = [info.name if by == "tensor" else info.depth for info in infos]
    params = [info.param for info in infos]
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    sums: dict[Any, float] = {}
    count = 0
    try:
        for batch in batches:
            loss = loss_fn(model, batch)
            if not (isinstance(loss, torch.Tensor) and loss.ndim == 0 and torch.isfinite(loss)):
                raise ValueError(f"loss_fn must return a finite scalar tensor, got {loss!r}")
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            squares: dict[Any, list[float]] = {}
            for key, param, grad in zip(keys, params, grads, strict=True):
                g2 = 0.0 if grad is None else float(grad.detach().double().pow(2).sum())
                entry = squares.setdefault(key, [0.0, 0.0])
                entry[0] += g2
                entry[1] += float(param.detach().double().pow(2).sum())
            for key, (g2, w2) in squares.items():
                sums[key] = sums.get(key, 0.0) + _ratio(math.sqrt(g2), math.sqrt(w2))
            count += 1
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    if count == 0:
        raise ValueError("batches is empty: the relative gradient norm needs at least one batch")
    return {key: total / count for key, total in sums.items()}


def _ratio(grad_norm: float, weight_norm: float) -> float:
    if weight_norm > 0:
        return grad_norm / weight_norm
    return 0.0 if grad_norm == 0 else math.nan


def auto_rgn(
    model: nn.Module, batches: Iterable[Any], loss_fn: LossFn, *, by: str = "tensor", coarse: bool = False
) -> Rule:
    """Auto-RGN (Lee et al., ICLR 2023): a rule setting each tensor's lr multiplier to its relative
    gradient norm over the largest one, measured now on ``batches``.

    The multipliers are in ``[0, 1]``: the tensor (or depth) the target loss pulls hardest keeps the
    running lr, the others get proportionally less. A tensor whose weights are all zero (a
    zero-initialised bias) has no RGN and keeps the running lr (multiplier 1). The rule multiplies, so
    it composes with the rules before it (a head rule, layer decay); tensors frozen now are not
    measured and the rule leaves them alone.

    The multipliers are measured once, when the rule is made (the authors' code measures again at
    every epoch and rebuilds its optimizer: to do that, build a new optimizer with a new rule), and
    belong to this ``model``'s tensors (the rule selects them by identity).

    Args:
        model: the model the optimizer will manage, at its starting (pretrained) weights.
        batches: a few batches of the target's training data (the authors use 5).
        loss_fn: ``loss_fn(model, batch) -> loss``, a scalar tensor.
        by: ``"tensor"`` (the paper) or ``"depth"`` (one multiplier per depth).
        coarse: stage-wise depths (``by="depth"``).

    Returns:
        The :class:`~lrgroups.Rule` (``name="auto_rgn"``).

    Raises:
        ValueError: as :func:`relative_gradient_norms`, or every gradient is zero (nothing to rank).
    """
    rgn = relative_gradient_norms(model, batches, loss_fn, by=by, coarse=coarse)
    top = max((value for value in rgn.values() if not math.isnan(value)), default=0.0)
    if top <= 0:
        raise ValueError("every measured gradient is zero: the batches give Auto-RGN nothing to rank")
    multiplier: dict[int, float] = {}
    for info in describe(model, coarse):
        if info.param.requires_grad:
            value = rgn[info.name if by == "tensor" else info.depth]
            multiplier[id(info.param)] = 1.0 if math.isnan(value) else value / top
    return Rule(
        where=lambda info: id(info.param) in multiplier,
        lr_mult=lambda info: multiplier[id(info.param)],
        name=f"auto_rgn(by={by})",
    )
