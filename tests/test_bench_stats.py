"""benchmarks.stats against known values: paired t intervals and p-values, Holm's correction, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.stats import holm, mean_ci, paired_difference, verdict


def test_paired_difference_matches_hand_computed_t_interval() -> None:
    # differences 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5), t_{0.975, 4} = 2.7764451, t = 4.2426407
    d = paired_difference([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert d.n == 5 and d.effect == pytest.approx(3)
    half = 2.7764451052 * math.sqrt(0.5)
    assert (d.ci_low, d.ci_high) == pytest.approx((3 - half, 3 + half), abs=1e-9)
    assert d.p == pytest.approx(0.0132356, abs=1e-6)  # two-sided p of t = 4.2426 with 4 df


def test_paired_difference_is_paired_not_two_sample() -> None:
    better = [0.90, 0.80, 0.70, 0.60, 0.50]
    worse = [x - 0.01 for x in better]  # a tiny but constant gain, drowned by the spread between seeds
    d = paired_difference(better, worse)
    assert d.effect == pytest.approx(0.01) and d.p == 0 and d.ci_low == d.ci_high


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


def test_verdict_rules() -> None:
    assert verdict(0.10, 0.01, 0.05) == "reproduced"
    assert verdict(0.03, 0.01, 0.05) == "undetermined"  # significant but below the minimum effect
    assert verdict(-0.10, 0.01, 0.05) == "contradicted"
    assert verdict(0.10, 0.20, 0.05) == "undetermined"
    assert verdict(0.10, 0.01, 0.05, gate_ok=False) == "undetermined"
    assert verdict(0.10, math.nan, 0.05) == "undetermined"


def test_mean_ci() -> None:
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2 and half == pytest.approx(4.30265273 * 1 / math.sqrt(3))
    assert math.isnan(mean_ci([1.0])[1])
    assert np.isfinite(mean_ci([0.5, 0.5])[1])
