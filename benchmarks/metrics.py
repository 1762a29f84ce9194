"""Forgetting and accuracy metrics: pure functions, tensors or plain floats in, floats out.

Example:
    >>> retention(after=0.9, before=0.95) < 1
    True
"""

from __future__ import annotations

import math

from torch import Tensor


def linear_cka(x: Tensor, y: Tensor, *, constant: str = "raise") -> float:
    """Linear centred kernel alignment of two feature matrices of the same n examples.

    With Xc, Yc the column-centred x [n, d1] and y [n, d2] (Kornblith et al., 2019, "Similarity of
    Neural Network Representations Revisited", eq. 5):

        CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)

    In [0, 1]; 1 for identical features, invariant to orthogonal transforms and isotropic scaling.
    Computed in float64, through the n x n Gram matrices when n is smaller than the widths.
    ``constant``: what constant features (undefined CKA) give: ``"raise"`` or ``"nan"``.

    Raises:
        ValueError: shapes that are not [n, d1] and [n, d2]; constant features with ``constant="raise"``.
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
        if constant == "nan":
            return math.nan
        raise ValueError("CKA is undefined for constant features")
    return float(cross / (norm_x * norm_y))


def retention(after: float, before: float) -> float:
    """after / before: the share of source-task accuracy kept through fine-tuning (1 = no forgetting)."""
    if before == 0:
        raise ValueError("retention is undefined when the accuracy before is 0")
    return after / before


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy: the share of rows whose argmax equals the label."""
    return float((logits.argmax(-1) == labels).double().mean())
