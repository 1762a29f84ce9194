"""Tests for benchmarks.across: a claim stated per family and pooled across families."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from benchmarks.across import POOLED_METHOD, across_families, claim_of


def _rows(effects, sds, seeds=10, scope=None, verdicts=None, claim="H9", min_effect=0.02):
    n = len(effects)
    families = ["ResNet", "ConvNeXt", "ViT", "EfficientNet", "MobileNet"][:n]
    tags = ["resnet", "convnext", "vit", "lite0", "mobilenet"][:n]
    return pd.DataFrame({
        "hypothesis": [f"{claim}-{t}" for t in tags], "comparison": "a > b", "metric": "test_accuracy",
        "effect": effects, "sd": sds, "seeds": seeds, "units": seeds, "min_effect": min_effect, "exploratory": False,
        "verdict": verdicts or ["undetermined"] * n, "ci_low": [e - 0.1 for e in effects],
        "ci_high": [e + 0.1 for e in effects], "scope": scope or [""] * n, "family": families})


def test_claim_is_the_name_before_the_family_tag() -> None:
    assert [claim_of(n) for n in ("H2a-vit", "H3a-lite0", "H1a")] == ["H2a", "H3a", "H1a"]


@given(st.lists(st.tuples(st.floats(-0.2, 0.2), st.floats(0.005, 0.2)), min_size=2, max_size=5),
       st.integers(3, 12))
def test_pooled_effect_is_the_random_effects_estimate(families, seeds) -> None:
    """Whatever the families' effects and spreads (variances sd^2 / seeds): where the families
    disagree more than their sampling error predicts (statsmodels' method-of-moments tau^2 > 0), the
    pooled effect and tau are statsmodels' DerSimonian-Laird estimate; where they do not, tau is 0
    and the pooled effect is the fixed-effect (inverse-variance) mean. The interval is the modified
    Hartung-Knapp one: t(k - 1) times the random-effects standard error scaled by max(1, q_HK)."""
    import warnings

    from statsmodels.stats.meta_analysis import combine_effects

    effects = np.array([e for e, _ in families])
    variances = np.array([s for _, s in families]) ** 2 / seeds
    row = across_families(_rows(list(effects), [s for _, s in families], seeds=seeds)).iloc[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = combine_effects(effects, variances, method_re="dl")
    if reference.tau2 > 1e-12:
        mean, se, tau = reference.mean_effect_re, reference.sd_eff_w_re, math.sqrt(reference.tau2)
    else:
        mean, se, tau = reference.mean_effect_fe, reference.sd_eff_w_fe, 0.0
    assert math.isclose(row.pooled_effect, mean, rel_tol=1e-7, abs_tol=1e-10)
    assert math.isclose(row.tau, tau, rel_tol=1e-6, abs_tol=1e-9)
    k = len(effects)
    weights = 1 / (variances + tau**2)
    q_hk = float(np.sum(weights * (effects - mean) ** 2) / (k - 1))
    half = scipy_stats.t.ppf(0.975, k - 1) * se * math.sqrt(max(1.0, q_hk))
    assert math.isclose(row.pooled_ci_high - row.pooled_ci_low, 2 * half, rel_tol=1e-5)
    assert half >= scipy_stats.t.ppf(0.975, k - 1) * se * (1 - 1e-9)  # never narrower than the RE interval


def test_hartung_knapp_is_wider_than_the_normal_interval_with_few_families() -> None:
    """With three families, the small-k interval uses t(2) (4.30), not the normal 1.96."""
    row = across_families(_rows([0.05, 0.06, 0.055], [0.02] * 3, seeds=10)).iloc[0]
    se = math.sqrt(1 / np.sum(1 / (np.array([0.02] * 3) ** 2 / 10)))  # families agree: tau = 0
    assert row.tau == 0 and math.isclose(row.pooled_ci_high - row.pooled_ci_low, 2 * 4.302652729911275 * se,
                                         rel_tol=1e-6)
    assert row.pooled_method == POOLED_METHOD and "no verdict" in POOLED_METHOD


def test_families_out_of_scope_are_not_pooled_and_verdicts_follow_the_rule() -> None:
    table = across_families(pd.concat([
        _rows([0.10, 0.12, 0.5], [0.02, 0.03, 0.01], scope=["", "", "precondition failed"],
              verdicts=["reproduced", "reproduced", "out of scope"]),
        _rows([0.001, -0.002], [0.01, 0.012], claim="H8", verdicts=["not reproduced", "not reproduced"]),
        _rows([0.2], [0.05], claim="H7", verdicts=["reproduced"]),
    ]))
    h9, h8, h7 = (table[table.claim == c].iloc[0] for c in ("H9", "H8", "H7"))
    assert (h9.families, h9.families_in_scope, h9.on_predicted_side, h9.reproduced) == (3, 2, 2, 2)
    assert h9.sign_count == "2 of 2 > 0 (2 reproduced, 0 contradicted)" and h9.consistent
    assert 0.10 <= h9.pooled_effect < 0.12
    assert h8.sign_count == "1 of 2 > 0 (0 reproduced, 0 contradicted)" and h8.consistent
    assert h7.families_in_scope == 1 and math.isnan(h7.pooled_effect) and h7.pooled_method == "" and not h7.consistent
    assert "ViT (vit): +0.500" in h9.per_family
    assert "pooled_verdict" not in table  # descriptive: no verdict across families


def test_exploratory_rows_are_left_out() -> None:
    rows = _rows([0.1, 0.1], [0.01, 0.01]).assign(exploratory=True)
    assert across_families(rows).empty


def test_replicate_reads_the_verdicts_as_nested():
    """`replicate` counts a verdict and a word it implies as agreement (contradicted / not
    reproduced, direction only / not reproduced), lists opposed verdicts apart, and counts a decided
    verdict against *undetermined* as neither."""
    from benchmarks.replicate import compare_verdicts

    ref = pd.DataFrame({"hypothesis": list("ABCDE"), "effect": [0.1, 0.0, -0.1, 0.01, 0.0],
                        "verdict": ["reproduced", "undetermined", "contradicted", "direction only", "not reproduced"]})
    new = ref.assign(verdict=["not reproduced", "reproduced", "not reproduced", "not reproduced", "contradicted"])
    table = compare_verdicts(ref, new)
    assert table.compatible.tolist() == [False, False, True, True, True]
    assert table.opposed.tolist() == [True, False, False, False, False]
    assert table.same.tolist() == [False] * 5
