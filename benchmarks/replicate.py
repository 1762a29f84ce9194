"""Replication report: a new run of a suite against a reference run (e.g. ``runs/quick`` against the
committed ``results/quick``).

* Verdict by verdict: the same verdict or not, with both effects.
* Cell by cell (experiment, target, strategy at its selected lr): whether the new mean test
  accuracy is consistent with the reference's, and whether the same lr was selected.
* Across families (suites whose claims are tested on several backbones, ``across.csv``): the
  pooled verdict of each claim in both runs.
* Source seeds: per hypothesis, the effect over the seeds of each source-pretraining seed, and the
  verdicts whose effect changes side of the minimum effect between them.

Writes ``<new>/replication.md`` and ``<new>/replication.csv``.

Example:
    >>> import pandas as pd
    >>> ref = pd.DataFrame({"hypothesis": ["H1"], "verdict": ["reproduced"], "effect": [0.1]})
    >>> compare_verdicts(ref, ref.assign(effect=[0.12])).same.tolist()
    [True]
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .report import write_reports
from .store import atomic_write
from .suites import Suite

#: Verdicts that exclude each other: an effect of at least the minimum (reproduced) against one below
#: it (not reproduced) or of the other sign (contradicted). The other differences are between a
#: verdict and *undetermined* or *out of scope*: one run could not decide.
OPPOSED = {("reproduced", "not reproduced"), ("reproduced", "contradicted")}


def opposed(a: str, b: str) -> bool:
    """Whether two verdicts exclude each other (:data:`OPPOSED`, either order)."""
    return (a, b) in OPPOSED or (b, a) in OPPOSED


def compare_verdicts(reference: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Per hypothesis of the reference: both verdicts and effects, ``same``, and ``opposed`` (the
    two verdicts exclude each other)."""
    merged = reference[["hypothesis", "verdict", "effect"]].merge(
        new[["hypothesis", "verdict", "effect"]], on="hypothesis", how="left", suffixes=("_reference", "_new"))
    merged["same"] = merged.verdict_reference == merged.verdict_new
    merged["opposed"] = [opposed(str(a), str(b)) for a, b in zip(merged.verdict_reference, merged.verdict_new)]
    return merged


def compare_cells(reference: pd.DataFrame, new: pd.DataFrame, metric: str = "test_accuracy") -> pd.DataFrame:
    """Per (experiment, target, strategy) of the reference's selected table: the new mean of
    ``metric``, ``inside`` (it lies inside the reference mean ± its 95% half-width), ``consistent``
    (the difference of the two means lies inside its own 95% interval, ``sqrt(h_ref^2 + h_new^2)``
    for independent seeds), and whether the same lr was selected."""
    keys = ["experiment", "target", "strategy"]
    merged = reference[[*keys, "lr", metric, f"{metric}_ci"]].merge(
        new[[*keys, "lr", metric, f"{metric}_ci"]], on=keys, how="left", suffixes=("_reference", "_new"))
    ref, value = merged[f"{metric}_reference"], merged[f"{metric}_new"]
    half_ref, half_new = merged[f"{metric}_ci_reference"].fillna(0), merged[f"{metric}_ci_new"].fillna(0)
    merged["inside"] = [bool(math.isfinite(v) and abs(v - r) <= h) for r, h, v in zip(ref, half_ref, value)]
    merged["consistent"] = [bool(math.isfinite(v) and abs(v - r) <= math.hypot(a, b))
                            for r, a, b, v in zip(ref, half_ref, half_new, value)]
    merged["same_lr"] = merged.lr_reference == merged.lr_new
    return merged.sort_values(keys, kind="stable").reset_index(drop=True)


def compare_across(reference_csv: Path, new_csv: Path) -> pd.DataFrame:
    """Per claim pooled over at least two families in the reference (``across.csv``): both pooled
    verdicts and effects, the families on the predicted side, and ``same``; empty without such claims."""
    columns = ["claim", "comparison", "metric", "pooled_verdict", "pooled_effect", "on_predicted_side",
               "families_in_scope"]
    if not reference_csv.exists() or not new_csv.exists():
        return pd.DataFrame(columns=[*columns, "same", "opposed"])
    reference = pd.read_csv(reference_csv)
    reference = reference[reference.families >= 2]
    merged = reference[columns].merge(pd.read_csv(new_csv)[columns], on=["claim", "comparison", "metric"],
                                      how="left", suffixes=("_reference", "_new"))
    merged["same"] = merged.pooled_verdict_reference == merged.pooled_verdict_new
    merged["opposed"] = [opposed(str(a), str(b))
                         for a, b in zip(merged.pooled_verdict_reference, merged.pooled_verdict_new)]
    return merged


def source_seed_effects(suite: Suite, runs: pd.DataFrame) -> pd.DataFrame:
    """Per confirmatory hypothesis of a suite-pretrained source and per source-pretraining seed: the
    mean paired effect over the seeds fine-tuned from that source (selected lrs), and where it lies
    against the minimum effect (``above``: >= min effect, ``below``: <= -min effect, ``between``).
    Hypotheses on a shipped source (one source model for every seed) have no rows."""
    rows = []
    chosen = runs[runs.selected.astype(bool)] if "selected" in runs else runs.iloc[0:0]
    for h in suite.hypotheses:
        if h.exploratory or not suite.experiment(h.experiment).source.trained:
            continue
        part = chosen[(chosen.experiment == h.experiment) & (chosen.target == h.target)]
        sides = [part[part.strategy == name].set_index("seed") for name in (h.better, h.worse)]
        seeds = sorted(set(sides[0].index) & set(sides[1].index))
        if not seeds:
            continue
        diff = sides[0].loc[seeds, h.metric] - sides[1].loc[seeds, h.metric]
        source = sides[0].loc[seeds, "source_seed"].fillna(-1)
        for seed, values in diff.groupby(source):
            effect = float(values.mean())
            side = "above" if effect >= h.min_effect else "below" if effect <= -h.min_effect else "between"
            rows.append({"hypothesis": h.name, "source_seed": int(seed), "seeds": len(values), "effect": effect,
                         "side": side})
    return pd.DataFrame(rows, columns=["hypothesis", "source_seed", "seeds", "effect", "side"])


def write_replication(reference_dir: Path, new_dir: Path, reference_suite: Suite, new_suite: Suite) -> bool:
    """Rebuild both runs' reports (each with its own suite), compare them and write
    ``replication.md``/``.csv`` into ``new_dir``; returns whether every confirmatory verdict is the same.

    Raises:
        FileNotFoundError: a folder has no runs.jsonl.
    """
    for folder in (reference_dir, new_dir):
        if not (folder / "runs.jsonl").exists():
            raise FileNotFoundError(f"{folder} has no runs.jsonl: run the suite there first")
    write_reports(reference_dir, reference_suite)
    write_reports(new_dir, new_suite)
    reference_verdicts = pd.read_csv(reference_dir / "verdicts.csv")
    new_verdicts = pd.read_csv(new_dir / "verdicts.csv")
    reference_verdicts = reference_verdicts[~reference_verdicts.exploratory.astype(bool)]
    verdicts = compare_verdicts(reference_verdicts, new_verdicts)
    cells = compare_cells(pd.read_csv(reference_dir / "selected.csv"), pd.read_csv(new_dir / "selected.csv"))
    atomic_write(new_dir / "replication.csv", cells.to_csv(index=False, float_format="%.6g"))
    by_source = pd.concat([source_seed_effects(reference_suite, pd.read_csv(reference_dir / "runs.csv"))
                           .assign(run="reference"),
                           source_seed_effects(new_suite, pd.read_csv(new_dir / "runs.csv")).assign(run="new")])
    depends = sorted(h for h, part in by_source.groupby("hypothesis") if part.side.nunique() > 1)
    same = bool(verdicts.same.all())
    across = compare_across(reference_dir / "across.csv", new_dir / "across.csv")
    lines = [
        f"# Replication of `{reference_dir}` (suite `{reference_suite.name}`) by `{new_dir}` "
        f"(suite `{new_suite.name}`)",
        "",
        f"Verdicts equal: {int(verdicts.same.sum())} of {len(verdicts)}; opposed (reproduced in one run, not "
        f"reproduced or contradicted in the other): {int(verdicts.opposed.sum())}. Cells whose new mean test accuracy is "
        f"consistent with the reference (difference inside its 95% interval): {int(cells.consistent.sum())} of "
        f"{len(cells)}; inside the reference's own 95% interval: {int(cells.inside.sum())} of {len(cells)}; same "
        f"selected lr: {int(cells.same_lr.sum())} of {len(cells)}. Verdicts whose effect changes side of the "
        f"minimum effect between the source-pretraining seeds of both runs: {', '.join(depends) or 'none'}.",
        "",
        "| hypothesis | verdict (reference) | verdict (new) | effect (reference) | effect (new) | same | "
        "depends on source seed |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r.hypothesis} | {r.verdict_reference} | {r.verdict_new} | {r.effect_reference:.3f} | "
          f"{r.effect_new:.3f} | {'yes' if r.same else 'NO'} | {'YES' if r.hypothesis in depends else 'no'} |"
          for r in verdicts.itertuples()],
        "",
        *([f"Verdicts across families equal: {int(across.same.sum())} of {len(across)}; opposed: "
           f"{int(across.opposed.sum())}.", "",
           "| claim | comparison | metric | verdict across families (reference) | (new) | pooled effect (reference) | "
           "(new) | families > 0 (reference) | (new) | same |",
           "|---|---|---|---|---|---|---|---|---|---|",
           *[f"| {r.claim} | {r.comparison} | {r.metric} | {r.pooled_verdict_reference} | {r.pooled_verdict_new} | "
             f"{r.pooled_effect_reference:.3f} | {r.pooled_effect_new:.3f} | {r.on_predicted_side_reference} of "
             f"{r.families_in_scope_reference} | {r.on_predicted_side_new} of {r.families_in_scope_new} | "
             f"{'yes' if r.same else 'NO'} |" for r in across.itertuples()], ""] if len(across) else []),
        "Effect per source-pretraining seed (mean over the seeds fine-tuned from it):",
        "",
        "| run | hypothesis | source seed | seeds | effect | against min effect |",
        "|---|---|---|---|---|---|",
        *[f"| {r.run} | {r.hypothesis} | {r.source_seed} | {r.seeds} | {r.effect:.3f} | {r.side} |"
          for r in by_source.itertuples()],
        "",
        "| experiment | target | strategy | lr ref | lr new | test acc (reference) | test acc (new) | consistent | "
        "inside |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {r.experiment} | {r.target} | {r.strategy} | {r.lr_reference:g} | {r.lr_new:g} | "
          f"{r.test_accuracy_reference:.3f} ± {r.test_accuracy_ci_reference:.3f} | "
          f"{r.test_accuracy_new:.3f} ± {r.test_accuracy_ci_new:.3f} | "
          f"{'yes' if r.consistent else 'no'} | {'yes' if r.inside else 'no'} |" for r in cells.itertuples()],
        "",
    ]
    atomic_write(new_dir / "replication.md", "\n".join(lines))
    return same
