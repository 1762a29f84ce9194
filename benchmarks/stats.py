"""Statistics of the verdicts: paired differences over seeds, Student-t intervals, Holm's correction.

Example:
    >>> d = paired_difference([0.9, 0.8, 0.85], [0.7, 0.7, 0.75])
    >>> round(d.effect, 3), d.n
    (0.133, 3)
    >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
    [0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

#: Family-wise error rate of the verdicts (Holm across a suite's hypotheses).
ALPHA = 0.05
VERDICTS = ("reproduced", "contradicted", "undetermined")


@dataclass(frozen=True)
class Paired:
    """A paired difference ``better - worse`` over n seeds: mean (``effect``), its two-sided 95%
    Student-t interval and the two-sided p-value of the paired t-test (effect = 0)."""

    n: int
    effect: float
    ci_low: float
    ci_high: float
    p: float


def paired_difference(better: Sequence[float], worse: Sequence[float], confidence: float = 0.95) -> Paired:
    """Paired t statistics of ``better[i] - worse[i]`` (``scipy.stats.ttest_rel``).

    With zero spread the interval is the point and p is 0 (a non-zero difference) or 1.

    Raises:
        ValueError: lengths differ, or fewer than 2 pairs.
    """
    a, b = np.asarray(better, dtype=float), np.asarray(worse, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two equally long sequences of >= 2 values, got {a.shape} and {b.shape}")
    diff = a - b
    n, effect, sd = len(diff), float(diff.mean()), float(diff.std(ddof=1))
    if sd == 0:
        return Paired(n, effect, effect, effect, 0.0 if effect != 0 else 1.0)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
    p = float(stats.ttest_rel(a, b).pvalue)
    return Paired(n, effect, effect - half, effect + half, p)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (``statsmodels`` ``multipletests(method="holm")``)."""
    if len(p_values) == 0:
        return np.array([])
    return multipletests(np.asarray(p_values, dtype=float), alpha=ALPHA, method="holm")[1]


def verdict(effect: float, p_holm: float, min_effect: float, gate_ok: bool = True) -> str:
    """``reproduced``: Holm-significant (p_holm < ALPHA) with an effect in the hypothesised direction
    of at least ``min_effect``; ``contradicted``: Holm-significant in the opposite direction;
    ``undetermined`` otherwise, and whenever a transfer or source gate failed."""
    if not gate_ok or not math.isfinite(p_holm) or p_holm >= ALPHA:
        return "undetermined"
    if effect >= min_effect and effect > 0:
        return "reproduced"
    return "contradicted" if effect < 0 else "undetermined"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t interval); half-width nan for one value."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("need at least one value")
    if len(x) == 1:
        return float(x[0]), math.nan
    return float(x.mean()), float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
