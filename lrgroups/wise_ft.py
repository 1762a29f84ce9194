"""WiSE-FT: interpolate, in weight space, between the pretrained and the fine-tuned model.

Wortsman et al., "Robust fine-tuning of zero-shot models" (CVPR 2022): ``theta = (1 - alpha) * theta_0
+ alpha * theta_1`` keeps much of the fine-tuned model's in-distribution accuracy and recovers the
pretrained model's robustness under distribution shift; alpha = 0.5 is the paper's usual choice,
alpha is chosen on held-out data otherwise. Their official code (mlfoundations/wise-ft) interpolates
every entry of the two state dicts; here the cases it leaves implicit are explicit choices.

Example:
    >>> import copy, torch, torch.nn as nn, lrgroups
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    >>> pretrained = copy.deepcopy(model.state_dict())
    >>> _ = model.train()(torch.randn(4, 2))            # ... fine-tune ...
    >>> with torch.no_grad(): _ = model[0].weight.add_(1.0)
    >>> model.load_state_dict(lrgroups.wise_ft(pretrained, model.state_dict(), alpha=0.5))
    <All keys matched successfully>
    >>> torch.allclose(model[0].weight, pretrained["0.weight"] + 0.5)
    True
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Mapping, Union

import torch

__all__ = ["wise_ft"]

Alpha = Union[float, Callable[[str], float]]
_UNMATCHED = ("error", "finetuned")


def _alpha_of(alpha: Alpha, name: str) -> float:
    value = alpha(name) if callable(alpha) else alpha
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"alpha must be in [0, 1], got {value!r} for {name!r}")
    return float(value)


def _shape(value: Any) -> Any:
    """A tensor's shape; ``None`` for any other entry (a module's extra state, an int, a string)."""
    return value.shape if isinstance(value, torch.Tensor) else None


def _copy(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


def wise_ft(
    pretrained: Mapping[str, torch.Tensor],
    finetuned: Mapping[str, torch.Tensor],
    alpha: Alpha,
    *,
    unmatched: str = "error",
) -> dict[str, torch.Tensor]:
    """The WiSE-FT state dict ``(1 - alpha) * pretrained + alpha * finetuned``, entry by entry.

    * Floating-point entries (weights, BatchNorm ``running_mean`` / ``running_var``) are interpolated
      with ``torch.lerp`` in the fine-tuned entry's dtype and device; ``alpha = 0`` gives the
      pretrained entry and ``alpha = 1`` the fine-tuned one exactly (bitwise).
    * Other entries (integer buffers such as BatchNorm's ``num_batches_tracked``, and entries that are
      not tensors: a module's ``get_extra_state()``, ints, strings; deep-copied) are taken from the
      endpoint alpha is nearer to (the fine-tuned one at 0.5), so both identities hold for the whole
      state dict. Interpolated BatchNorm statistics are an approximation: re-estimate them on data
      with :func:`lrgroups.precise_bn` after loading if the model has BatchNorm.
    * Entries with no counterpart of the same shape (a new head: missing from ``pretrained``, or the
      source head with another number of classes) raise, listed, with ``unmatched="error"``
      (default); with ``unmatched="finetuned"`` the fine-tuned entry is kept as it is and pretrained
      entries absent from ``finetuned`` are dropped.

    Args:
        pretrained: state dict before fine-tuning (theta_0), e.g. a ``copy.deepcopy(model.state_dict())``.
        finetuned: state dict after fine-tuning (theta_1); the result has its keys, in its order.
        alpha: the weight of the fine-tuned model, in [0, 1]; or a function ``name -> alpha`` for
            per-layer interpolation (by name, or by depth through :func:`lrgroups.param_depths`).
        unmatched: ``"error"`` or ``"finetuned"`` (see above).

    Returns:
        A new state dict (no tensor shared with the inputs), to ``model.load_state_dict``.

    Raises:
        ValueError: alpha outside [0, 1] or not finite; unmatched entries with ``unmatched="error"``;
            an entry whose dtype kind differs between the two (floating vs integer); an unknown
            ``unmatched``.

    Example:
        >>> import torch
        >>> theta0 = {"w": torch.zeros(2), "head.w": torch.zeros(3)}
        >>> theta1 = {"w": torch.ones(2), "head.w": torch.ones(5)}
        >>> wise_ft(theta0, theta1, alpha=lambda name: 0.0 if name.startswith("head") else 0.25,
        ...         unmatched="finetuned")
        {'w': tensor([0.2500, 0.2500]), 'head.w': tensor([1., 1., 1., 1., 1.])}
    """
    if unmatched not in _UNMATCHED:
        raise ValueError(f"unmatched must be one of {_UNMATCHED}, got {unmatched!r}")
    missing = [name for name in finetuned if name not in pretrained]
    reshaped = [name for name in finetuned if name in pretrained and _shape(pretrained[name]) != _shape(finetuned[name])]
    dropped = [name for name in pretrained if name not in finetuned]
    if unmatched == "error" and (missing or reshaped or dropped):
        problems = [
            f"{what}: {', '.join(names[:10])}"
            for what, names in (("only in finetuned", missing), ("shapes differ", reshaped), ("only in pretrained", dropped))
            if names
        ]
        raise ValueError("state dicts do not match (pass unmatched='finetuned' to keep the fine-tuned entries "
                         "of a new head): " + "; ".join(problems))
    merged = {}
    for name, theta1 in finetuned.items():
        if name in missing or name in reshaped:
            merged[name] = _copy(theta1)
            continue
        theta0 = pretrained[name]
        weight = _alpha_of(alpha, name)
        if not isinstance(theta1, torch.Tensor) or not isinstance(theta0, torch.Tensor):
            merged[name] = copy.deepcopy(theta0 if weight < 0.5 else theta1)  # extra state: the nearer end point
            continue
        if theta0.is_floating_point() != theta1.is_floating_point():
            raise ValueError(f"{name}: {theta0.dtype} in pretrained, {theta1.dtype} in finetuned")
        if weight == 0 or (weight < 0.5 and not theta1.is_floating_point()):
            merged[name] = theta0.to(device=theta1.device, dtype=theta1.dtype, copy=True)
        elif weight == 1 or not theta1.is_floating_point():
            merged[name] = theta1.clone()
        else:
            merged[name] = torch.lerp(theta0.to(device=theta1.device, dtype=theta1.dtype), theta1, weight)
    return merged
