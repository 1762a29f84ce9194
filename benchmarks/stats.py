"""Statistics of the verdicts: paired differences over seeds, Holm's step-down correction with
intervals that agree with it, the verdict rule and its nesting, the replication probability and the
power of a test.

* :func:`paired_difference`: the paired Student-t difference ``better - worse`` over seeds.
* :func:`holm` / :func:`holm_levels`: Holm-adjusted p-values (statsmodels) and, per hypothesis,
  the two-sided error level of its Holm-adjusted interval: ``ALPHA / (m - k + 1)`` at the step k
  where Holm's procedure stops (Holm 1979; the step-down intervals of Strassburger & Bretz 2008,
  conservative form). An adjusted interval excludes 0 exactly when the Holm-adjusted p is below
  ALPHA, so interval and p never disagree.
* :func:`verdict`: *reproduced*, *direction only* (the predicted sign, smaller than the minimum
  effect), *not reproduced*, *contradicted*, *undetermined*, *out of scope* (and :data:`NOT_RUN`
  where a partial run lacks the cells: no verdict yet); the words are nested (:data:`IMPLIES`: contradicted and direction only each imply not reproduced), and
  :func:`compatible` / :func:`opposed` compare two runs' words under that nesting.
* :func:`simulate_verdicts` / :func:`replication_probability` / :func:`agreement_probability`:
  a parametric bootstrap of the verdict an independent run of the same design would give
  (the unit's mean and standard deviation as estimated, the same seeds and level).
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
    >>> verdict(effect=0.024, ci_low=0.014, ci_high=0.029, min_effect=0.03)
    'direction only'
    >>> compatible("contradicted", "not reproduced"), opposed("reproduced", "direction only")
    (True, True)
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


#: The verdict words, and the words each implies: a contradicted effect (interval below 0) and an
#: effect of the predicted sign but below the minimum (*direction only*) both have an upper bound
#: below the minimum effect, which is what *not reproduced* says.
VERDICTS = ("reproduced", "direction only", "not reproduced", "contradicted", "undetermined", "out of scope")
#: The word of a hypothesis some of whose cells a partial run has not run (no test: not a verdict).
NOT_RUN = "not run"
IMPLIES = {"contradicted": frozenset({"not reproduced"}), "direction only": frozenset({"not reproduced"})}
#: Pairs of words no single true effect can give both of: an effect of at least the minimum against
#: one below it, and the predicted sign against the other sign.
OPPOSED = frozenset({frozenset({"reproduced", "not reproduced"}), frozenset({"reproduced", "contradicted"}),
                     frozenset({"reproduced", "direction only"}), frozenset({"direction only", "contradicted"})})


def verdict(effect: float, ci_low: float, ci_high: float, min_effect: float, in_scope: bool = True,
            kind: str = "superiority") -> str:
    """The verdict of a hypothesis from its adjusted interval.

    ``kind="superiority"`` predicts ``effect >= min_effect > 0``:

    * ``out of scope``: a pre-registered precondition (or the transfer gate) failed;
    * ``contradicted``: the interval lies below 0 and the effect is at most ``-min_effect``;
    * ``reproduced``: the interval lies above 0 and the effect is at least ``min_effect``;
    * ``direction only``: the interval lies above 0 and below ``min_effect`` (the predicted sign,
      smaller than predicted; implies *not reproduced*);
    * ``not reproduced``: the interval's upper end is below ``min_effect`` (an effect of the
      registered size is excluded);
    * ``undetermined``: otherwise (including no data).

    ``kind="noninferiority"`` predicts ``effect > -min_effect`` (``min_effect`` is the margin):
    *reproduced* when the interval lies above ``-min_effect``, *contradicted* when it lies below
    it, *undetermined* otherwise.
    """
    if not in_scope:
        return "out of scope"
    if not all(math.isfinite(v) for v in (effect, ci_low, ci_high)):
        return "undetermined"
    if kind == "noninferiority":
        return "reproduced" if ci_low > -min_effect else "contradicted" if ci_high < -min_effect else "undetermined"
    if ci_high < 0 and effect <= -min_effect:
        return "contradicted"
    if ci_low > 0 and effect >= min_effect:
        return "reproduced"
    if ci_low > 0 and ci_high < min_effect:
        return "direction only"
    if ci_high < min_effect:
        return "not reproduced"
    return "undetermined"


def compatible(a: str, b: str) -> bool:
    """Whether two runs' verdicts agree under the nesting (:data:`IMPLIES`): the same word, or one
    implies the other (*contradicted* and *not reproduced*). *undetermined* agrees only with itself."""
    return a == b or b in IMPLIES.get(a, ()) or a in IMPLIES.get(b, ())


def opposed(a: str, b: str) -> bool:
    """Whether two verdicts exclude each other (:data:`OPPOSED`)."""
    return frozenset({a, b}) in OPPOSED


#: Draws of the parametric bootstrap behind replication probabilities.
REPLICATION_DRAWS = 4000
#: A verdict whose replication probability is below this is marked *fragile*.
FRAGILE_BELOW = 0.9


def simulate_verdicts(effect: float, sd: float, n: int, min_effect: float, error_level: float,
                      kind: str = "superiority", draws: int = REPLICATION_DRAWS, seed: int = 0) -> np.ndarray:
    """Verdicts of ``draws`` independent runs of the same design (parametric bootstrap): each run
    draws ``n`` unit differences from ``Normal(effect, sd)`` (``sd`` of the unit, the source
    model's variance included when every unit has its own source), takes their mean and Student-t
    interval at ``error_level`` and applies :func:`verdict`. Reproducible (``seed``)."""
    rng = np.random.default_rng(seed)
    if n < 2 or not (math.isfinite(effect) and math.isfinite(sd)):
        return np.full(draws, "undetermined", dtype=object)
    d = rng.normal(effect, sd, size=(draws, n)) if sd > 0 else np.full((draws, n), effect)
    means, sds = d.mean(1), d.std(1, ddof=1)
    half = stats.t.ppf(1 - error_level / 2, n - 1) * sds / math.sqrt(n)
    low, high = means - half, means + half
    if kind == "noninferiority":  # verdict()'s rules, vectorised
        conditions = [low > -min_effect, high < -min_effect]
        words = ["reproduced", "contradicted"]
    else:
        conditions = [(high < 0) & (means <= -min_effect), (low > 0) & (means >= min_effect),
                      (low > 0) & (high < min_effect), high < min_effect]
        words = ["contradicted", "reproduced", "direction only", "not reproduced"]
    return np.select(conditions, np.array(words, dtype=object), default="undetermined").astype(object)


def replication_probability(observed: str, effect: float, sd: float, n: int, min_effect: float, error_level: float,
                            kind: str = "superiority", draws: int = REPLICATION_DRAWS, seed: int = 0) -> float:
    """The probability that an independent run of the same design gives a verdict compatible with
    ``observed`` (:func:`compatible`, the reading ``replicate`` counts as agreement: for an observed
    *contradicted* or *direction only*, a new *not reproduced* agrees), by :func:`simulate_verdicts`
    at the estimated ``effect`` and ``sd``, given that the new run's gates and preconditions hold as
    they did; nan for *out of scope* (see :func:`precondition_probability`) and without data.

    Example:
        >>> replication_probability("reproduced", 0.2, 0.05, 10, 0.03, 0.01) > 0.9
        True
        >>> round(replication_probability("reproduced", 0.03, 0.01, 10, 0.03, 0.05), 1)
        0.5
    """
    if observed == "out of scope" or n < 2 or not (math.isfinite(effect) and math.isfinite(sd)):
        return math.nan
    simulated = simulate_verdicts(effect, sd, n, min_effect, error_level, kind, draws, seed)
    return float(np.mean([compatible(observed, v) for v in simulated]))


def agreement_probability(effect: float, sd: float, n: int, min_effect: float, error_level: float,
                          kind: str = "superiority", draws: int = REPLICATION_DRAWS, seed: int = 0,
                          decided: bool = True) -> float:
    """The probability that two independent runs of ``n`` units give compatible verdicts, when the
    unit differences are ``Normal(effect, sd)`` (used to size seeds before a run); with ``decided``,
    compatible and both decided (two *undetermined* runs agree on nothing worth sizing for)."""
    first = simulate_verdicts(effect, sd, n, min_effect, error_level, kind, draws, seed)
    second = simulate_verdicts(effect, sd, n, min_effect, error_level, kind, draws, seed + 1)
    return float(np.mean([compatible(a, b) and not (decided and "undetermined" in (a, b))
                          for a, b in zip(first, second, strict=True)]))


#: The three states of a transfer gate decided on its 95% interval.
GATE_STATES = ("pass", "fail", "undecided")


def gate_state(low: float, high: float, required: float) -> str:
    """A transfer gate on the 95% interval ``[low, high]`` of the margin: ``pass`` when ``low >=
    required``, ``fail`` when ``high < required``, ``undecided`` otherwise (or without an interval)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "undecided"
    return "pass" if low >= required else "fail" if high < required else "undecided"


def gate_probability(state: str, margin: float, sd: float, n: int, required: float,
                     draws: int = REPLICATION_DRAWS, seed: int = 0) -> float:
    """The probability that an independent run of ``n`` units puts a transfer gate in the same
    ``state`` (:func:`gate_state` on the 95% Student-t interval of unit margins ``Normal(margin,
    sd)``); a parametric bootstrap; nan without data."""
    if n < 2 or not (math.isfinite(margin) and math.isfinite(sd)):
        return math.nan
    rng = np.random.default_rng(seed)
    d = rng.normal(margin, sd, size=(draws, n)) if sd > 0 else np.full((draws, n), margin)
    half = stats.t.ppf(0.975, n - 1) * d.std(1, ddof=1) / math.sqrt(n)
    low, high = d.mean(1) - half, d.mean(1) + half
    states = np.where(low >= required, "pass", np.where(high < required, "fail", "undecided"))
    return float(np.mean(states == state))


def precondition_probability(holds: bool, difference: float, sd: float, n: int) -> float:
    """The probability that an independent run of ``n`` units finds a precondition (mean
    difference ``better - worse >= 0``) the same way (holding when ``holds``), for unit differences
    ``Normal(difference, sd)``: ``Phi(+-difference / (sd / sqrt(n)))``; nan without data."""
    if n < 1 or not (math.isfinite(difference) and math.isfinite(sd)):
        return math.nan
    if sd == 0:
        return 1.0 if (difference >= 0) == holds else 0.0
    p_holds = float(stats.norm.cdf(difference / (sd / math.sqrt(n))))
    return p_holds if holds else 1 - p_holds


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
