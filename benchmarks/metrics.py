"""Convergence and forgetting metrics: pure functions, tensors or plain floats in, floats out.

Example:
    >>> retention(after=0.9, before=0.95) < 1
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
from scipy import stats
from torch import Tensor, nn


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear centred kernel alignment of two feature matrices of the same n examples.

    With Xc, Yc the column-centred x [n, d1] and y [n, d2] (Kornblith et al., 2019, "Similarity of
    Neural Network Representations Revisited", eq. 5):

        CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)

    In [0, 1]; 1 for identical features, invariant to orthogonal transforms and isotropic scaling.
    Computed in float64, through the n x n Gram matrices when n is smaller than the widths.
    """
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"need [n, d1] and [n, d2] features, got {tuple(x.shape)} and {tuple(y.shape)}")
    xc = x.double() - x.double().mean(0)
    yc = y.double() - y.double().mean(0)
    if len(x) < max(x.shape[1], y.shape[1]):
        gram_x, gram_y = xc @ xc.T, yc @ yc.T
        cross, norm_x, norm_y = (gram_x * gram_y).sum(), gram_x.norm(), gram_y.norm()
    else:
        cross, norm_x, norm_y = (yc.T @ xc).norm() ** 2, (xc.T @ xc).norm(), (yc.T @ yc).norm()
    if norm_x == 0 or norm_y == 0:
        raise ValueError("CKA is undefined for constant features")
    return float(cross / (norm_x * norm_y))


def relative_weight_distance(w: Tensor, w0: Tensor) -> float:
    """||W - W0||_F / ||W0||_F: how far a weight tensor moved from its reference W0."""
    if w.shape != w0.shape:
        raise ValueError(f"shapes differ: {tuple(w.shape)} vs {tuple(w0.shape)}")
    return float((w.double() - w0.double()).norm() / w0.double().norm())


def per_stage_weight_distance(
    model: nn.Module,
    reference_state_dict: Mapping[str, Tensor],
    stage_of: Callable[[str], Hashable | None],
) -> dict[Hashable, float]:
    """Relative weight distance per stage: ||W_s - W0_s|| / ||W0_s|| over all parameters of stage s.

    W_s concatenates the parameters whose name `stage_of` maps to s (stages in order of first
    appearance); parameters mapped to None (e.g. a replaced head) are left out. A parameter that is
    kept must be in `reference_state_dict` with the same shape.
    """
    totals: dict[Hashable, tuple[float, float]] = {}
    for name, param in model.named_parameters():
        stage = stage_of(name)
        if stage is None:
            continue
        if name not in reference_state_dict or reference_state_dict[name].shape != param.shape:
            raise ValueError(f"parameter {name} {tuple(param.shape)} has no reference of that shape")
        reference = reference_state_dict[name].detach().double()
        moved, norm = totals.get(stage, (0.0, 0.0))
        totals[stage] = (
            moved + float((param.detach().double() - reference).norm() ** 2),
            norm + float(reference.norm() ** 2),
        )
    return {stage: math.sqrt(moved / norm) for stage, (moved, norm) in totals.items()}


def retention(after: float, before: float) -> float:
    """after / before: the share of source-task accuracy kept through fine-tuning (1 = no forgetting)."""
    if before == 0:
        raise ValueError("retention is undefined when the accuracy before is 0")
    return after / before


def backward_transfer(after: float, before: float) -> float:
    """after - before: the change in source-task accuracy through fine-tuning (negative = forgetting)."""
    return after - before


def steps_to_fraction(curve_steps: Sequence[float], curve_values: Sequence[float], fraction: float = 0.95) -> float:
    """The first step (or second, or any x) at which the curve reaches fraction x its best value.

    For a curve to maximise with a positive best, e.g. validation accuracy.
    """
    if len(curve_steps) != len(curve_values) or not curve_steps:
        raise ValueError("need equally long, non-empty steps and values")
    threshold = fraction * max(curve_values)
    return next(float(step) for step, value in zip(curve_steps, curve_values) if value >= threshold)


def area_under_curve(steps: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under the curve divided by the step range: the curve's mean height.

    An accuracy curve gives a number in [0, 1], higher for faster convergence.
    """
    if len(steps) != len(values) or len(steps) < 2 or not all(b > a for a, b in zip(steps, steps[1:])):
        raise ValueError("need at least two points with strictly increasing steps")
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width) of the two-sided 95% Student-t interval: t_{0.975, n-1} s / sqrt(n).

    s is the sample standard deviation (n - 1 denominator); the half-width is nan for one value.
    """
    if not values:
        raise ValueError("need at least one value")
    n = len(values)
    mean = float(np.mean(values))
    if n == 1:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy: the share of rows whose argmax equals the label."""
    return float((logits.argmax(-1) == labels).double().mean())


def agreement(logits_a: Tensor, logits_b: Tensor) -> float:
    """Top-1 agreement: the share of rows on which two models predict the same class."""
    return float((logits_a.argmax(-1) == logits_b.argmax(-1)).double().mean())


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices (in input order) of the points no other point dominates, maximising both coordinates.

    Point q dominates p when q >= p in both coordinates and q != p; equal points all stay on the front.
    Meant for (target accuracy, retention) pairs.
    """
    return [
        index
        for index, (a, b) in enumerate(points)
        if not any(qa >= a and qb >= b and (qa, qb) != (a, b) for qa, qb in points)
    ]
