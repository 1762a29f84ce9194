"""benchmarks.stats against known values and invariants: paired t intervals and p-values, Holm's
correction and its intervals, the verdict words on constructed effects and their nesting, the
replication probability on constructed data, the power line."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from benchmarks.stats import (
    ALPHA,
    IMPLIES,
    OPPOSED,
    VERDICTS,
    agreement_probability,
    compatible,
    gate_probability,
    gate_state,
    holm,
    holm_levels,
    mean_ci,
    minimum_detectable_effect,
    opposed,
    paired_difference,
    precondition_probability,
    replication_probability,
    seeds_needed,
    simulate_verdicts,
    verdict,
)


def test_paired_difference_matches_hand_computed_t_interval() -> None:
    # differences 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5), t_{0.975, 4} = 2.7764451, t = 4.2426407
    d = paired_difference([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert d.n == 5 and d.effect == pytest.approx(3) and d.sd == pytest.approx(math.sqrt(2.5))
    half = 2.7764451052 * math.sqrt(0.5)
    assert d.interval(0.05) == pytest.approx((3 - half, 3 + half), abs=1e-9)
    assert d.p == pytest.approx(0.0132356, abs=1e-6)  # two-sided p of t = 4.2426 with 4 df
    wider = d.interval(0.01)
    assert wider[0] < 3 - half and wider[1] > 3 + half


def test_paired_difference_is_paired_not_two_sample() -> None:
    better = [0.90, 0.80, 0.70, 0.60, 0.50]
    worse = [x - 0.01 for x in better]  # a tiny but constant gain, drowned by the spread between seeds
    d = paired_difference(better, worse)
    assert d.effect == pytest.approx(0.01) and d.p == 0 and d.interval()[0] == d.interval()[1]


def test_paired_difference_without_difference() -> None:
    d = paired_difference([0.5, 0.6], [0.5, 0.6])
    assert (d.effect, d.p) == (0, 1)


def test_paired_difference_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1])
    with pytest.raises(ValueError):
        paired_difference([1], [1])


def test_holm_known_values() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4 0.02, x3 0.03, x2 0.06, x1 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert len(holm([])) == 0


def test_holm_levels_known_values() -> None:
    # 0.005 < 0.05/4 rejected; 0.01 < 0.05/3 rejected; 0.03 >= 0.05/2: stops, 0.04 keeps 0.025
    assert holm_levels([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.05 / 3, 0.025, 0.025, 0.0125])
    assert holm_levels([0.001]) == pytest.approx([0.05])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-0.3, 0.3), st.floats(0.005, 0.2)), min_size=1, max_size=8),
       st.integers(3, 12), st.integers(0, 2**31 - 1))
def test_an_adjusted_interval_excludes_zero_exactly_when_holm_rejects(hyps, n, seed) -> None:
    """For any family of paired tests, the interval at each hypothesis' Holm level excludes 0 if and
    only if its Holm-adjusted p-value is below ALPHA (interval and p never disagree)."""
    rng = np.random.default_rng(seed)
    tests = [paired_difference((mean + sd * rng.standard_normal(n)).tolist(), [0.0] * n) for mean, sd in hyps]
    p = [t.p for t in tests]
    for t, adjusted, level in zip(tests, holm(p), holm_levels(p), strict=True):
        low, high = t.interval(level)
        excludes = low > 0 or high < 0
        if not math.isclose(adjusted, ALPHA, rel_tol=1e-9):
            assert excludes == (adjusted < ALPHA)


@pytest.mark.parametrize(("effect", "low", "high", "in_scope", "expected"), [
    (0.10, 0.02, 0.18, True, "reproduced"),          # interval above 0, effect >= min effect (0.05)
    (0.04, 0.01, 0.07, True, "undetermined"),        # significant, below the minimum, upper end above it
    (0.01, 0.002, 0.02, True, "direction only"),     # significant, and an effect of 0.05 is excluded
    (-0.01, -0.02, 0.02, True, "not reproduced"),    # an effect of 0.05 excluded, the sign not settled
    (0.00, -0.03, 0.03, True, "not reproduced"),     # null, and 0.05 excluded
    (0.00, -0.10, 0.10, True, "undetermined"),       # too little data either way
    (-0.10, -0.18, -0.02, True, "contradicted"),     # significant the other way, at least the minimum
    (-0.02, -0.03, -0.01, True, "not reproduced"),   # significant the other way but small: not contradicted
    (0.10, 0.02, 0.18, False, "out of scope"),       # a precondition failed
    (math.nan, math.nan, math.nan, True, "undetermined"),
])
def test_verdict_rules_on_constructed_effects(effect, low, high, in_scope, expected) -> None:
    assert verdict(effect, low, high, 0.05, in_scope=in_scope) == expected


@pytest.mark.parametrize(("low", "high", "expected"), [
    (-0.02, 0.08, "reproduced"),     # above minus the margin (0.05): better matches or beats worse
    (-0.09, -0.06, "contradicted"),  # worse by more than the margin
    (-0.09, 0.01, "undetermined"),
])
def test_noninferiority_verdicts(low, high, expected) -> None:
    assert verdict((low + high) / 2, low, high, 0.05, kind="noninferiority") == expected


@given(st.floats(-0.3, 0.3), st.floats(0.0, 0.2), st.floats(0.005, 0.1))
@settings(max_examples=200, deadline=None)
def test_the_words_are_nested(effect, half, min_effect) -> None:
    """Whatever the interval, a *contradicted* or *direction only* verdict also satisfies the rule of
    *not reproduced* (upper end below the minimum effect), and the words it implies are compatible
    with it; no word is opposed to itself or to a word it implies."""
    word = verdict(effect, effect - half, effect + half, min_effect)
    assert word in VERDICTS
    if word in IMPLIES:
        assert effect + half < min_effect
        assert all(compatible(word, other) and compatible(other, word) and not opposed(word, other)
                   for other in IMPLIES[word])
    assert not opposed(word, word) and compatible(word, word)


def test_compatible_and_opposed_pairs() -> None:
    assert compatible("contradicted", "not reproduced") and compatible("not reproduced", "direction only")
    assert not compatible("contradicted", "direction only") and opposed("contradicted", "direction only")
    assert not compatible("reproduced", "undetermined") and not opposed("reproduced", "undetermined")
    assert all(opposed(*sorted(pair)) for pair in OPPOSED)
    assert not any(compatible(*sorted(pair)) for pair in OPPOSED)


def test_replication_probability_far_from_every_boundary_and_on_one() -> None:
    """An effect far from 0 and from the minimum effect replicates (>= 0.9); an effect sitting on the
    minimum effect replicates as a coin flip (about 0.5); a null effect with a tight interval keeps
    *not reproduced*."""
    assert replication_probability("reproduced", 0.20, 0.05, 10, 0.03, ALPHA / 10) >= 0.9
    on_boundary = replication_probability("reproduced", 0.03, 0.01, 12, 0.03, ALPHA)
    assert 0.4 <= on_boundary <= 0.6
    assert replication_probability("not reproduced", 0.0, 0.01, 12, 0.05, ALPHA) >= 0.9
    assert math.isnan(replication_probability("out of scope", 0.2, 0.05, 10, 0.03, ALPHA))


def test_simulated_verdicts_are_the_verdict_rule() -> None:
    """The vectorised bootstrap applies exactly :func:`verdict` to every simulated run."""
    rng = np.random.default_rng(5)
    d = rng.normal(0.02, 0.03, size=(300, 5))
    means = d.mean(1)
    half = scipy_stats.t.ppf(1 - 0.01 / 2, 4) * d.std(1, ddof=1) / math.sqrt(5)
    for kind in ("superiority", "noninferiority"):
        expected = [verdict(m, m - h, m + h, 0.03, kind=kind) for m, h in zip(means, half, strict=True)]
        assert simulate_verdicts(0.02, 0.03, 5, 0.03, 0.01, kind, draws=300, seed=5).tolist() == expected


def test_agreement_grows_with_seeds_and_gate_and_precondition_probabilities() -> None:
    assert agreement_probability(0.08, 0.06, 20, 0.03, 0.01) > agreement_probability(0.08, 0.06, 4, 0.03, 0.01)
    assert gate_probability("pass", 0.3, 0.05, 8, 0.05) == 1.0
    assert 0.3 < gate_probability("pass", 0.05 + 0.05 * 2.36 / math.sqrt(8), 0.05, 8, 0.05) < 0.7
    assert gate_probability("fail", -0.2, 0.05, 8, 0.05) == 1.0
    assert gate_state(0.06, 0.1, 0.05) == "pass" and gate_state(0.0, 0.04, 0.05) == "fail"
    assert gate_state(0.04, 0.1, 0.05) == "undecided" and gate_state(math.nan, math.nan, 0.05) == "undecided"
    assert precondition_probability(False, -0.1, 0.02, 8) > 0.99
    assert precondition_probability(True, 0.0, 0.02, 8) == pytest.approx(0.5)


def test_minimum_detectable_effect_matches_the_noncentral_t_power() -> None:
    """At the MDE the paired t-test's power (noncentral t) is POWER; seeds_needed inverts it."""
    sd, n, level = 0.03, 8, 0.01
    mde = minimum_detectable_effect(sd, n, level)
    df, nc = n - 1, mde / (sd / math.sqrt(n))
    crit = scipy_stats.t.ppf(1 - level / 2, df)
    power = scipy_stats.nct.sf(crit, df, nc) + scipy_stats.nct.cdf(-crit, df, nc)
    assert power == pytest.approx(0.8, abs=1e-4)
    assert seeds_needed(sd, mde, level) == n
    assert seeds_needed(sd, mde * 0.7, level) > n
    assert minimum_detectable_effect(0.0, 5) == 0 and math.isnan(minimum_detectable_effect(0.1, 1))
    assert math.isnan(seeds_needed(0.0, 0.02))


def test_mean_ci() -> None:
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2 and half == pytest.approx(4.30265273 * 1 / math.sqrt(3))
    assert math.isnan(mean_ci([1.0])[1])
    assert np.isfinite(mean_ci([0.5, 0.5])[1])
