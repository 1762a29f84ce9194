"""Tests for benchmarks.across: a claim stated per family and pooled across families."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.across import across_families, claim_of
from benchmarks.stats import ALPHA


def _rows(effects, sds, seeds=10, scope=None, verdicts=None, claim="H9", min_effect=0.02):
    n = len(effects)
    families = ["ResNet", "ConvNeXt", "ViT", "EfficientNet", "MobileNet"][:n]
    tags = ["resnet", "convnext", "vit", "lite0", "mobilenet"][:n]
    return pd.DataFrame({
        "hypothesis": [f"{claim}-{t}" for t in tags], "comparison": "a > b", "metric": "test_accuracy",
        "effect": effects, "sd": sds, "seeds": seeds, "min_effect": min_effect, "exploratory": False,
        "verdict": verdicts or ["undetermined"] * n, "ci_low": [e - 0.1 for e in effects],
        "ci_high": [e + 0.1 for e in effects], "scope": scope or [""] * n, "family": families})


def test_claim_is_the_name_before_the_family_tag() -> None:
    assert [claim_of(n) for n in ("H2a-vit", "H3a-lite0", "H1a")] == ["H2a", "H3a", "H1a"]


@given(st.lists(st.tuples(st.floats(-0.2, 0.2), st.floats(0.005, 0.2)), min_size=2, max_size=5),
       st.integers(3, 12))
def test_pooled_effect_is_the_random_effects_estimate(families, seeds) -> None:
    """Whatever the families' effects and spreads (variances sd^2 / seeds): where the families
    disagree more than their sampling error predicts (statsmodels' method-of-moments tau^2 > 0), the
    pooled effect, its standard error and tau are statsmodels' DerSimonian-Laird estimate; where they
    do not, tau is 0 and the pooled effect is the fixed-effect (inverse-variance) mean."""
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
    # one pooled claim: its interval is the plain 95% normal interval
    assert math.isclose(row.pooled_ci_high - row.pooled_ci_low, 2 * 1.959963984540054 * se, rel_tol=1e-6)


def test_families_out_of_scope_are_not_pooled_and_verdicts_follow_the_rule() -> None:
    table = across_families(pd.concat([
        _rows([0.10, 0.12, 0.5], [0.02, 0.03, 0.01], scope=["", "", "precondition failed"],
              verdicts=["reproduced", "reproduced", "out of scope"]),
        _rows([0.001, -0.002], [0.01, 0.012], claim="H8", verdicts=["not reproduced", "not reproduced"]),
        _rows([0.2], [0.05], claim="H7", verdicts=["reproduced"]),
    ]))
    h9, h8, h7 = (table[table.claim == c].iloc[0] for c in ("H9", "H8", "H7"))
    assert (h9.families, h9.families_in_scope, h9.on_predicted_side, h9.reproduced) == (3, 2, 2, 2)
    assert h9.pooled_effect < 0.12 and h9.pooled_verdict == "reproduced" and h9.consistent
    assert h8.pooled_verdict == "not reproduced" and h8.consistent
    assert h7.families_in_scope == 1 and h7.pooled_verdict == "out of scope" and not h7.consistent
    assert "ViT (vit): +0.500" in h9.per_family


def test_pooled_intervals_agree_with_the_holm_adjusted_p() -> None:
    """The pooled interval excludes 0 exactly when the Holm-adjusted pooled p is below ALPHA."""
    rng = np.random.default_rng(0)
    frames = [_rows(list(rng.normal(mu, 0.02, 3)), [0.03] * 3, claim=f"H{i}")
              for i, mu in enumerate((0.0, 0.01, 0.02, 0.04, 0.08))]
    table = across_families(pd.concat(frames))
    for row in table.itertuples():
        assert (row.pooled_ci_low > 0 or row.pooled_ci_high < 0) == (row.pooled_p_holm < ALPHA)


def test_exploratory_rows_are_left_out() -> None:
    rows = _rows([0.1, 0.1], [0.01, 0.01]).assign(exploratory=True)
    assert across_families(rows).empty


def test_opposed_verdicts_are_those_that_exclude_each_other():
    from benchmarks.replicate import compare_verdicts, opposed

    assert opposed("reproduced", "contradicted") and opposed("not reproduced", "reproduced")
    assert not opposed("reproduced", "undetermined") and not opposed("not reproduced", "contradicted")
    ref = pd.DataFrame({"hypothesis": ["A", "B"], "verdict": ["reproduced", "undetermined"], "effect": [0.1, 0.0]})
    new = ref.assign(verdict=["not reproduced", "reproduced"])
    assert compare_verdicts(ref, new).opposed.tolist() == [True, False]
