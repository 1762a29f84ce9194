"""Statistics of the verdicts: paired differences over seeds, Holm's step-down correction with
intervals that agree with it, the five-word verdict rule and the power of a test.

* :func:`paired_difference`: the paired Student-t difference ``better - worse`` over seeds.
* :func:`holm` / :func:`holm_levels`: Holm-adjusted p-values (statsmodels) and, per hypothesis,
  the two-sided error level of its Holm-adjusted interval: ``ALPHA / (m - k + 1)`` at the step k
  where Holm's procedure stops (Holm 1979; the step-down intervals of Strassburger & Bretz 2008,
  conservative form). An adjusted interval excludes 0 exactly when the Holm-adjusted p is below
  ALPHA, so interval and p never disagree.
* :func:`verdict`: *reproduced*, *not reproduced*, *contradicted*, *undetermined*, *out of scope*.
* :func:`minimum_detectable_effect` / :func:`seeds_needed`: the paired t-test's power
  (statsmodels ``TTestPower``) at a Holm step's level.

Example:
    >>> d = paired_difference([0.9, 0.8, 0.85], [0.7, 0.7, 0.75])
    >>> round(d.effect, 3), d.n
    (0.133, 3)
    >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
    [0.03, 0.06, 0.06]
    >>> holm_levels([0.01, 0.04, 0.03]).round(4).tolist()
    [0.0167, 0.025, 0.025]
    >>> verdict(effect=0.05, ci_low=0.02, ci_high=0.08, min_effect=0.03)
    'reproduced'
    >>> verdict(effect=0.001, ci_low=-0.01, ci_high=0.012, min_effect=0.03)
    'not reproduced'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

#: Family-wise error rate of the verdicts (Holm across a suite's confirmatory hypotheses).
ALPHA = 0.05
#: Power at which the minimum detectable effect and the seeds needed are stated.
POWER = 0.8


@dataclass(frozen=True)
class Paired:
    """A paired difference ``better - worse`` over n seeds: mean (``effect``), the standard
    deviation of the differences (``sd``), the two-sided p-value of the paired t-test (effect = 0)."""

    n: int
    effect: float
    sd: float
    p: float

    def interval(self, error_level: float = ALPHA) -> tuple[float, float]:
        """The two-sided ``1 - error_level`` Student-t interval of the effect (the point when sd is 0)."""
        half = t_half_width(self.sd, self.n, error_level)
        return self.effect - half, self.effect + half


def t_half_width(sd: float, n: int, error_level: float = ALPHA) -> float:
    """Half-width of the two-sided ``1 - error_level`` Student-t interval of a mean of ``n`` values
    of standard deviation ``sd`` (0 when sd is 0)."""
    if sd == 0:
        return 0.0
    return float(stats.t.ppf(1 - error_level / 2, n - 1) * sd / math.sqrt(n))


def paired_difference(better: Sequence[float], worse: Sequence[float]) -> Paired:
    """Paired t statistics of ``better[i] - worse[i]`` (``scipy.stats.ttest_rel``).

    With zero spread p is 0 (a non-zero difference) or 1.

    Raises:
        ValueError: lengths differ, or fewer than 2 pairs.
    """
    a, b = np.asarray(better, dtype=float), np.asarray(worse, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two equally long sequences of >= 2 values, got {a.shape} and {b.shape}")
    diff = a - b
    n, effect, sd = len(diff), float(diff.mean()), float(diff.std(ddof=1))
    if sd == 0:
        return Paired(n, effect, 0.0, 0.0 if effect != 0 else 1.0)
    return Paired(n, effect, sd, float(stats.ttest_rel(a, b).pvalue))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (``statsmodels`` ``multipletests(method="holm")``)."""
    if len(p_values) == 0:
        return np.array([])
    return multipletests(np.asarray(p_values, dtype=float), alpha=ALPHA, method="holm")[1]


def holm_levels(p_values: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """Per hypothesis, the two-sided error level of its Holm-adjusted interval.

    Sorted by p, hypothesis k (1-based) of m is tested at ``alpha / (m - k + 1)`` while every
    earlier one was rejected; from the first that is not, all later ones keep that first level
    (the procedure has stopped, and their larger p cannot reject at it). The interval at this level
    excludes 0 if and only if the Holm-adjusted p is below ``alpha``.
    """
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    levels = np.empty(m)
    stopped: float | None = None
    for rank, index in enumerate(np.argsort(p, kind="stable")):
        level = alpha / (m - rank) if stopped is None else stopped
        if stopped is None and not p[index] < level:
            stopped = level
        levels[index] = level
    return levels


def verdict(effect: float, ci_low: float, ci_high: float, min_effect: float, in_scope: bool = True) -> str:
    """The verdict of a hypothesis predicting ``effect >= min_effect > 0`` from its adjusted interval.

    * ``out of scope``: a pre-registered precondition (or the transfer gate) failed;
    * ``contradicted``: the interval lies below 0 and the effect is at most ``-min_effect``;
    * ``reproduced``: the interval lies above 0 and the effect is at least ``min_effect``;
    * ``not reproduced``: the interval's upper end is below ``min_effect`` (an effect of the
      registered size is excluded);
    * ``undetermined``: otherwise (including no data).
    """
    if not in_scope:
        return "out of scope"
    if not all(math.isfinite(v) for v in (effect, ci_low, ci_high)):
        return "undetermined"
    if ci_high < 0 and effect <= -min_effect:
        return "contradicted"
    if ci_low > 0 and effect >= min_effect:
        return "reproduced"
    if ci_high < min_effect:
        return "not reproduced"
    return "undetermined"


def minimum_detectable_effect(sd: float, n: int, error_level: float = ALPHA, power: float = POWER) -> float:
    """The smallest true effect the two-sided paired t-test at ``error_level`` detects with
    ``power`` over ``n`` seeds, for differences of standard deviation ``sd`` (statsmodels
    ``TTestPower``); nan for n < 2, 0 when sd is 0."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=error_level, power=power, alternative="two-sided")
    return float(d) * sd


def seeds_needed(sd: float, effect: float, error_level: float = ALPHA, power: float = POWER) -> float:
    """Seeds the paired t-test at ``error_level`` needs to detect ``effect`` with ``power`` (rounded
    up); nan when sd or the effect is not a positive finite number."""
    if not (math.isfinite(sd) and sd > 0 and math.isfinite(effect) and effect > 0):
        return math.nan
    n = float(TTestPower().solve_power(effect_size=effect / sd, nobs=None, alpha=error_level, power=power,
                                       alternative="two-sided"))
    if not math.isfinite(n):  # the solver gives up (an effect of many sds at a tiny level): say so, do not guess
        return math.nan
    return float(math.ceil(max(n, 2.0)))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t interval); half-width nan for one value."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("need at least one value")
    if len(x) == 1:
        return float(x[0]), math.nan
    return float(x.mean()), float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
