"""Across backbones: each claim of a suite stated per timm family and across families.

A hypothesis named ``<claim>-<tag>`` (the standard suite's ``H2a-resnet``, ``H2a-convnext``, ...)
is one family's test of ``<claim>``; its family is the timm family of its experiment's backbone
(:func:`benchmarks.backbones.family`). Per claim (``across.csv``, a section of ``summary.md`` and
``across_backbones.png``):

* **per family**: the effect, its Holm-adjusted interval and the verdict, as in ``verdicts.csv``;
* **pooled**: the DerSimonian-Laird random-effects mean of the families' paired effects (each with
  variance ``sd^2 / seeds``), over the families in scope, its
  two-sided normal interval at the claim's Holm step level over the claims with at least two
  families (:func:`benchmarks.stats.holm_levels`), the between-family spread ``tau`` and ``I^2``;
* **verdict across families**: the five words (:func:`benchmarks.stats.verdict`) applied to the
  pooled effect and its adjusted interval (*out of scope* when fewer than two families are in
  scope);
* **sign consistency**: how many families' effects lie on the predicted side (> 0), and how many
  are reproduced or contradicted: ``consistent`` is true when every family in scope has the same
  verdict.

The random-effects interval is wide with three or four families (its between-family variance is
estimated from them); a claim that holds "across families" here holds on average over the families
run, with their spread reported beside it, not in every family: the per-family verdicts say that.

Example:
    >>> import pandas as pd
    >>> rows = pd.DataFrame({"hypothesis": ["H9-a", "H9-b"], "effect": [0.1, 0.12], "sd": [0.02, 0.03],
    ...                      "seeds": [10, 10], "min_effect": [0.02, 0.02], "exploratory": [False, False],
    ...                      "verdict": ["reproduced", "reproduced"], "ci_low": [0.08, 0.09],
    ...                      "ci_high": [0.12, 0.15], "scope": ["", ""], "family": ["ResNet", "ViT"]})
    >>> table = across_families(rows)
    >>> table[["claim", "families", "pooled_verdict", "consistent"]].values.tolist()
    [['H9', 2, 'reproduced', True]]
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .stats import ALPHA, holm, holm_levels, verdict

#: Columns of ``across.csv``.
COLUMNS = ("claim", "comparison", "metric", "min_effect", "families", "families_in_scope", "per_family",
           "pooled_effect", "pooled_ci_low", "pooled_ci_high", "pooled_p", "pooled_p_holm", "ci_level", "tau", "i2",
           "on_predicted_side", "reproduced", "contradicted", "consistent", "pooled_verdict")


def claim_of(hypothesis: str) -> str:
    """The claim a hypothesis tests: its name before the first ``-`` (``H2a-vit`` -> ``H2a``)."""
    return hypothesis.split("-", 1)[0]


def _label(row: object) -> str:
    """``Family (tag)``: the family and the hypothesis name's tag (two backbones may share a family)."""
    tag = row.hypothesis.split("-", 1)[1] if "-" in row.hypothesis else ""
    return f"{row.family} ({tag})" if tag else str(row.family)


def _pool(effects: np.ndarray, variances: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, standard error, tau, I^2) of the DerSimonian-Laird random-effects model (DerSimonian &
    Laird 1986): the method-of-moments between-family variance ``tau^2 = max(0, (Q - (k - 1)) / (S1
    - S2 / S1))`` with ``S_r = sum(w^r)``, ``w = 1 / variance``, then inverse-variance weights ``1 /
    (variance + tau^2)``. Written out rather than taken from statsmodels 0.14's ``combine_effects``,
    which does not truncate ``tau^2`` at 0 (negative weights when the families agree more than their
    sampling error predicts) and returns nan when every effect is equal; where its ``tau^2`` is
    positive the two agree (``tests/test_bench_across.py``)."""
    w = 1 / variances
    fixed = float(np.sum(w * effects) / np.sum(w))
    q = float(np.sum(w * (effects - fixed) ** 2))
    k = len(effects)
    tau2 = max(0.0, (q - (k - 1)) / (np.sum(w) - np.sum(w**2) / np.sum(w)))
    w_re = 1 / (variances + tau2)
    i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    return float(np.sum(w_re * effects) / np.sum(w_re)), float(math.sqrt(1 / np.sum(w_re))), math.sqrt(tau2), i2


def across_families(verdict_table: pd.DataFrame) -> pd.DataFrame:
    """One row per confirmatory claim tested in at least one family (see the module docstring).

    Args:
        verdict_table: ``verdicts.csv`` rows with a ``family`` column (one row per hypothesis).
    """
    rows = []
    confirmatory = verdict_table[~verdict_table.exploratory.astype(bool)]
    for claim, part in confirmatory.groupby(confirmatory.hypothesis.map(claim_of), sort=False):
        first = part.iloc[0]
        in_scope = part[(part.scope.fillna("") == "") & part.effect.notna() & part.sd.notna() & (part.seeds >= 2)]
        row = {"claim": claim, "comparison": first.get("comparison", ""), "metric": first.get("metric", ""),
               "min_effect": float(first.min_effect), "families": len(part), "families_in_scope": len(in_scope),
               "per_family": "; ".join(f"{_label(r)}: {r.effect:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}] {r.verdict}"
                                       if math.isfinite(r.effect) else f"{_label(r)}: {r.verdict}"
                                       for r in part.itertuples()),
               "on_predicted_side": int((in_scope.effect > 0).sum()),
               "reproduced": int((in_scope.verdict == "reproduced").sum()),
               "contradicted": int((in_scope.verdict == "contradicted").sum()),
               "consistent": bool(len(in_scope) >= 2 and in_scope.verdict.nunique() == 1),
               "pooled_effect": math.nan, "pooled_se": math.nan, "pooled_p": math.nan, "tau": math.nan,
               "i2": math.nan}
        if len(in_scope) >= 2:
            variances = (in_scope.sd.to_numpy(float) ** 2) / in_scope.seeds.to_numpy(float)
            effect, se, tau, i2 = _pool(in_scope.effect.to_numpy(float), np.maximum(variances, 1e-12))
            z = effect / se if se > 0 else math.inf
            row.update(pooled_effect=effect, pooled_se=se, tau=tau, i2=i2,
                       pooled_p=float(2 * scipy_stats.norm.sf(abs(z))))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    family = frame.pooled_p.notna()
    frame["pooled_p_holm"], frame["ci_level"] = math.nan, ALPHA
    if family.any():
        frame.loc[family, "pooled_p_holm"] = holm(frame.pooled_p[family].tolist())
        frame.loc[family, "ci_level"] = holm_levels(frame.pooled_p[family].tolist())
    half = scipy_stats.norm.isf(frame.ci_level / 2) * frame.pooled_se
    frame["pooled_ci_low"], frame["pooled_ci_high"] = frame.pooled_effect - half, frame.pooled_effect + half
    frame["pooled_verdict"] = [verdict(r.pooled_effect, r.pooled_ci_low, r.pooled_ci_high, r.min_effect,
                                       in_scope=bool(family[i]))
                               for i, r in zip(frame.index, frame.itertuples())]
    return frame[list(COLUMNS)]


def plot(verdict_table: pd.DataFrame, table: pd.DataFrame, path: str) -> None:
    """A forest plot: per claim with at least two families, each family's effect with its adjusted
    interval (hollow when out of scope), the pooled effect and its interval, the minimum effect."""
    import matplotlib.pyplot as plt

    claims = table[table.families >= 2]
    if claims.empty:
        return
    columns = min(4, len(claims))
    rows_ = math.ceil(len(claims) / columns)
    fig, axes = plt.subplots(rows_, columns, figsize=(3.4 * columns, 2.4 * rows_), squeeze=False)
    confirmatory = verdict_table[~verdict_table.exploratory.astype(bool)]
    for ax, claim in zip(axes.flat, claims.itertuples()):
        part = confirmatory[confirmatory.hypothesis.map(claim_of) == claim.claim]
        labels = [_label(r) for r in part.itertuples()] + ["pooled"]
        for y, r in enumerate(part.itertuples()):
            in_scope = (r.scope if isinstance(r.scope, str) else "") == ""
            ax.errorbar(r.effect, y, xerr=[[r.effect - r.ci_low], [r.ci_high - r.effect]], fmt="o",
                        mfc="C0" if in_scope else "white", color="C0", capsize=2)
        y = len(part)
        if math.isfinite(claim.pooled_effect):
            ax.errorbar(claim.pooled_effect, y, xerr=[[claim.pooled_effect - claim.pooled_ci_low],
                                                      [claim.pooled_ci_high - claim.pooled_effect]],
                        fmt="D", color="C3", capsize=2)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.axvline(claim.min_effect, color="grey", linewidth=0.8, linestyle="--")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(f"{claim.claim}: {claim.comparison}\n{claim.metric}: {claim.pooled_verdict}", fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(claims):]:
        ax.axis("off")
    fig.suptitle("Effect per family (Holm-adjusted interval) and pooled across families; dashed: minimum effect",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
