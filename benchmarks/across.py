"""Across backbones: each claim of a suite stated per timm family, with a sign count, and a
descriptive pooled mean.

A hypothesis named ``<claim>-<tag>`` (the standard suite's ``H2a-resnet``, ``H2a-convnext``, ...)
is one family's test of ``<claim>``; its family is the timm family of its experiment's backbone
(:func:`benchmarks.backbones.family`). Per claim (``across.csv``, a section of ``summary.md`` and
``across_backbones.png``):

* **per family**: the effect, its Holm-adjusted interval and the verdict, as in ``verdicts.csv``:
  these are the claim's verdicts;
* **sign count**: how many families in scope have an effect on the predicted side (> 0), how many
  are reproduced or contradicted, and whether every family in scope has the same verdict;
* **descriptive pooled mean**: the random-effects mean of the families' effects (each with variance
  ``sd^2 / units``; DerSimonian-Laird ``tau^2``) with the modified Hartung-Knapp-Sidik-Jonkman
  interval (95%, Student-t with k - 1 degrees of freedom: Hartung & Knapp 2001, IntHout et al. 2014,
  Roever et al. 2015), the small-k method. It carries **no verdict**: a handful of hand-picked architectures is not a
  sample from a population of families, so the mean describes the families run, nothing beyond
  them (science review 4, sec. 4).

Example:
    >>> import pandas as pd
    >>> rows = pd.DataFrame({"hypothesis": ["H9-a", "H9-b"], "effect": [0.1, 0.12], "sd": [0.02, 0.03],
    ...                      "units": [10, 10], "min_effect": [0.02, 0.02], "exploratory": [False, False],
    ...                      "verdict": ["reproduced", "reproduced"], "ci_low": [0.08, 0.09],
    ...                      "ci_high": [0.12, 0.15], "scope": ["", ""], "family": ["ResNet", "ViT"]})
    >>> table = across_families(rows)
    >>> table[["claim", "families", "sign_count", "consistent"]].values.tolist()
    [['H9', 2, '2 of 2 > 0 (2 reproduced, 0 contradicted)', True]]
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

#: Columns of ``across.csv``.
COLUMNS = ("claim", "comparison", "metric", "min_effect", "families", "families_in_scope", "per_family",
           "sign_count", "on_predicted_side", "reproduced", "contradicted", "consistent", "pooled_effect",
           "pooled_ci_low", "pooled_ci_high", "tau", "i2", "pooled_method")
#: What the pooled columns are.
POOLED_METHOD = "descriptive: random-effects mean, Hartung-Knapp 95% interval (t, k - 1 df); no verdict"


def claim_of(hypothesis: str) -> str:
    """The claim a hypothesis tests: its name before the first ``-`` (``H2a-vit`` -> ``H2a``)."""
    return hypothesis.split("-", 1)[0]


def family_label(row: object) -> str:
    """``Family (tag)``: the family and the hypothesis name's tag (two backbones may share a family)."""
    tag = row.hypothesis.split("-", 1)[1] if "-" in row.hypothesis else ""
    return f"{row.family} ({tag})" if tag else str(row.family)


def _pool(effects: np.ndarray, variances: np.ndarray) -> tuple[float, float, float, float, float]:
    """(mean, low, high, tau, I^2): the random-effects mean with the DerSimonian-Laird between-family
    variance ``tau^2 = max(0, (Q - (k - 1)) / (S1 - S2 / S1))`` (DerSimonian & Laird 1986; ``S_r =
    sum(w^r)``, ``w = 1 / variance``) and its Hartung-Knapp-Sidik-Jonkman 95% interval: variance
    ``max(1, q) / sum(w*)`` with ``q = sum(w* (y - mean)^2) / (k - 1)`` and ``w* = 1 / (variance +
    tau^2)``, Student-t quantile with k - 1 degrees of freedom (Hartung & Knapp 2001; the ``max(1,
    q)`` modification of Roever et al. 2015 keeps families that agree closely from shrinking the
    interval below the random-effects one). Written out rather than taken
    from statsmodels 0.14's ``combine_effects``, which does not truncate ``tau^2`` at 0; where its
    ``tau^2`` is positive the two agree (``tests/test_bench_across.py``)."""
    w = 1 / variances
    fixed = float(np.sum(w * effects) / np.sum(w))
    q = float(np.sum(w * (effects - fixed) ** 2))
    k = len(effects)
    tau2 = max(0.0, (q - (k - 1)) / (np.sum(w) - np.sum(w**2) / np.sum(w)))
    w_re = 1 / (variances + tau2)
    i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    mean = float(np.sum(w_re * effects) / np.sum(w_re))
    # the modified Knapp-Hartung factor max(1, q) (Roever et al. 2015): never narrower than the
    # random-effects interval's own variance, so agreeing families cannot collapse it to a point
    q_hk = float(np.sum(w_re * (effects - mean) ** 2) / (k - 1))
    variance = max(1.0, q_hk) / float(np.sum(w_re))
    half = float(scipy_stats.t.ppf(0.975, k - 1) * math.sqrt(variance))
    return mean, mean - half, mean + half, math.sqrt(tau2), i2


def across_families(verdict_table: pd.DataFrame) -> pd.DataFrame:
    """One row per confirmatory claim tested in at least one family (see the module docstring).

    Args:
        verdict_table: ``verdicts.csv`` rows with a ``family`` column (one row per hypothesis).
    """
    rows = []
    confirmatory = verdict_table[~verdict_table.exploratory.astype(bool)]
    units = "units" if "units" in confirmatory else "seeds"
    for claim, part in confirmatory.groupby(confirmatory.hypothesis.map(claim_of), sort=False):
        first = part.iloc[0]
        in_scope = part[(part.scope.fillna("") == "") & part.effect.notna() & part.sd.notna() & (part[units] >= 2)]
        kinds = in_scope["kind"] if "kind" in in_scope else pd.Series("superiority", index=in_scope.index)
        predicted = np.where(kinds == "noninferiority", -in_scope.min_effect, 0.0)  # above -margin, or above 0
        side = int((in_scope.effect > predicted).sum())
        reproduced = int((in_scope.verdict == "reproduced").sum())
        contradicted = int((in_scope.verdict == "contradicted").sum())
        row = {"claim": claim, "comparison": first.get("comparison", ""), "metric": first.get("metric", ""),
               "min_effect": float(first.min_effect), "families": len(part), "families_in_scope": len(in_scope),
               "per_family": "; ".join(f"{family_label(r)}: {r.effect:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}] {r.verdict}"
                                       if math.isfinite(r.effect) else f"{family_label(r)}: {r.verdict}"
                                       for r in part.itertuples()),
               "sign_count": f"{side} of {len(in_scope)} > 0 ({reproduced} reproduced, {contradicted} contradicted)",
               "on_predicted_side": side, "reproduced": reproduced, "contradicted": contradicted,
               "consistent": bool(len(in_scope) >= 2 and in_scope.verdict.nunique() == 1),
               "pooled_effect": math.nan, "pooled_ci_low": math.nan, "pooled_ci_high": math.nan, "tau": math.nan,
               "i2": math.nan, "pooled_method": POOLED_METHOD if len(in_scope) >= 2 else ""}
        if len(in_scope) >= 2:
            variances = (in_scope.sd.to_numpy(float) ** 2) / in_scope[units].to_numpy(float)
            mean, low, high, tau, i2 = _pool(in_scope.effect.to_numpy(float), np.maximum(variances, 1e-12))
            row.update(pooled_effect=mean, pooled_ci_low=low, pooled_ci_high=high, tau=tau, i2=i2)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    return frame[list(COLUMNS)]


#: The forest plot's layout: panels per row, the figure's width (inches, at 110 dpi: about the width of
#: a documentation page, so that the page shows it near its own size) and the smallest font (points).
FOREST_COLUMNS, FOREST_WIDTH, FOREST_FONT = 2, 8.0, 9


def forest_figure(verdict_table: pd.DataFrame, table: pd.DataFrame):
    """The forest plot (a matplotlib figure; None without a claim tested in two families or more): per
    claim, each family's effect with its adjusted interval (hollow when out of scope), the pooled effect
    and its interval, 0 and the minimum effect; a legend entry for every marker and line."""
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    claims = table[table.families >= 2]
    if claims.empty:
        return None
    columns = min(FOREST_COLUMNS, len(claims))
    rows_ = math.ceil(len(claims) / columns)
    confirmatory = verdict_table[~verdict_table.exploratory.astype(bool)]
    families = int(claims.families.max())  # the rows of the tallest panel, the pooled mean besides
    fig, axes = plt.subplots(rows_, columns, figsize=(FOREST_WIDTH, (1.1 + 0.28 * (families + 1)) * rows_ + 0.9),
                             squeeze=False)
    for ax, claim in zip(axes.flat, claims.itertuples(), strict=False):  # strict=False: the grid has an axis or more past the last claim
        part = confirmatory[confirmatory.hypothesis.map(claim_of) == claim.claim]
        labels = [family_label(r) for r in part.itertuples()] + ["pooled (descriptive)"]
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
        ax.set_yticks(range(len(labels)), labels, fontsize=FOREST_FONT)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(axis="x", labelsize=FOREST_FONT)
        title = [f"{claim.claim}: {claim.comparison}", claim.metric, claim.sign_count]
        ax.set_title("\n".join(textwrap.fill(line, 44) for line in title), fontsize=FOREST_FONT)
    for ax in list(axes.flat)[len(claims):]:
        ax.axis("off")
    handles = [Line2D([], [], marker="o", color="C0", linestyle="", label="family in scope: effect, Holm-adjusted CI"),
               Line2D([], [], marker="o", color="C0", mfc="white", linestyle="", label="family whose gate or precondition did not pass"),
               Line2D([], [], marker="D", color="C3", linestyle="", label="pooled mean, Hartung-Knapp 95% (descriptive)"),
               Line2D([], [], color="grey", linewidth=0.8, label="no effect (0)"),
               Line2D([], [], color="grey", linewidth=0.8, linestyle="--", label="minimum effect")]
    fig.legend(handles=handles, loc="upper center", ncol=2, fontsize=FOREST_FONT, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / fig.get_figheight()))
    return fig


def plot(verdict_table: pd.DataFrame, table: pd.DataFrame, path: str) -> None:
    """Write the forest plot (:func:`forest_figure`) to ``path`` (PNG, 110 dpi), if there is one."""
    import matplotlib.pyplot as plt

    fig = forest_figure(verdict_table, table)
    if fig is None:
        return
    fig.savefig(path, dpi=110)
    plt.close(fig)
