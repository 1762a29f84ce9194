"""Replication report: a new run of a suite against a reference run (e.g. ``runs/quick`` against the
committed ``results/quick``).

* Verdict by verdict: whether the two verdicts are compatible under the nesting of the words
  (:func:`benchmarks.stats.compatible`: *contradicted* and *direction only* each imply *not
  reproduced*), opposed (:func:`benchmarks.stats.opposed`, listed apart), or one run undecided;
  with both effects, units and replication probabilities.
* Cell by cell (experiment, target, strategy at its selected lr): whether the new mean test
  accuracy is consistent with the reference's, and whether the same lr was selected.
* Across families (suites whose claims are tested on several backbones, ``across.csv``): the
  pooled verdict of each claim in both runs.

Writes ``<new>/replication.md`` and ``<new>/replication.csv``.

Example:
    >>> import pandas as pd
    >>> ref = pd.DataFrame({"hypothesis": ["H1"], "verdict": ["reproduced"], "effect": [0.1]})
    >>> compare_verdicts(ref, ref.assign(effect=[0.12])).same.tolist()
    [True]
    >>> compare_verdicts(ref.assign(verdict=["contradicted"]), ref.assign(verdict=["not reproduced"])).compatible.tolist()
    [True]
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .report import write_reports
from .stats import NOT_RUN, compatible, opposed
from .store import atomic_write
from .suites import Suite

#: Columns of each run's verdicts.csv carried into the comparison (when present).
_CARRIED = ("verdict", "effect", "unit", "units", "replication_probability")


def compare_verdicts(reference: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Per hypothesis of the reference: both verdicts and effects (and units and replication
    probabilities where recorded), ``same`` (the same word), ``compatible`` (the same word or one
    implying the other), ``opposed`` (the two verdicts exclude each other) and ``compared`` (both
    runs ran it: a *not run* verdict of a partial run, or a hypothesis the new run lacks, is neither
    agreement nor disagreement, and is counted apart)."""
    columns = ["hypothesis", *(c for c in _CARRIED if c in reference and c in new)]
    merged = reference[columns].merge(new[columns], on="hypothesis", how="left", suffixes=("_reference", "_new"))
    merged["same"] = merged.verdict_reference == merged.verdict_new
    merged["compatible"] = [compatible(str(a), str(b)) for a, b in zip(merged.verdict_reference, merged.verdict_new, strict=True)]
    merged["opposed"] = [opposed(str(a), str(b)) for a, b in zip(merged.verdict_reference, merged.verdict_new, strict=True)]
    merged["compared"] = [NOT_RUN not in (str(a), str(b)) and str(b) != "nan"
                          for a, b in zip(merged.verdict_reference, merged.verdict_new, strict=True)]
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
    merged["inside"] = [bool(math.isfinite(v) and abs(v - r) <= h) for r, h, v in zip(ref, half_ref, value, strict=True)]
    merged["consistent"] = [bool(math.isfinite(v) and abs(v - r) <= math.hypot(a, b))
                            for r, a, b, v in zip(ref, half_ref, half_new, value, strict=True)]
    merged["same_lr"] = merged.lr_reference == merged.lr_new
    return merged.sort_values(keys, kind="stable").reset_index(drop=True)


def compare_across(reference_csv: Path, new_csv: Path) -> pd.DataFrame:
    """Per claim tested in at least two families in the reference (``across.csv``): both sign counts
    and descriptive pooled means, and ``same`` (the same number of families on the predicted side,
    of the same number in scope); empty without such claims."""
    columns = ["claim", "comparison", "metric", "sign_count", "pooled_effect", "on_predicted_side",
               "families_in_scope"]
    if not reference_csv.exists() or not new_csv.exists():
        return pd.DataFrame(columns=[*columns, "same"])
    reference = pd.read_csv(reference_csv)
    new = pd.read_csv(new_csv)
    if "sign_count" not in reference or "sign_count" not in new:  # an across.csv of an older format
        return pd.DataFrame(columns=[*columns, "same"])
    reference = reference[reference.families >= 2]
    merged = reference[columns].merge(new[columns], on=["claim", "comparison", "metric"],
                                      how="left", suffixes=("_reference", "_new"))
    merged["same"] = ((merged.on_predicted_side_reference == merged.on_predicted_side_new)
                      & (merged.families_in_scope_reference == merged.families_in_scope_new))
    return merged


def write_replication(reference_dir: Path, new_dir: Path, reference_suite: Suite, new_suite: Suite) -> bool:
    """Rebuild both runs' reports (each with its own suite), compare them and write
    ``replication.md``/``.csv`` into ``new_dir``; returns whether every confirmatory verdict is
    compatible (:func:`benchmarks.stats.compatible`).

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
    same = bool(verdicts.compatible.all()) and not bool((~verdicts.compared).any())
    across = compare_across(reference_dir / "across.csv", new_dir / "across.csv")
    shown, uncompared, verdicts = verdicts, verdicts[~verdicts.compared], verdicts[verdicts.compared]

    def probability(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) and math.isfinite(value) else "–"

    lines = [
        f"# Replication of `{reference_dir}` (suite `{reference_suite.name}`) by `{new_dir}` "
        f"(suite `{new_suite.name}`)",
        "",
        _summary(verdicts, uncompared, cells),
        "",
        "| hypothesis | verdict (reference) | verdict (new) | effect (reference) | effect (new) | units (reference) | "
        "(new) | replication probability (reference) | (new) | compatible | opposed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {r.hypothesis} | {r.verdict_reference} | {r.verdict_new} | {r.effect_reference:.3f} | "
          f"{r.effect_new:.3f} | {getattr(r, 'units_reference', '–')} | {getattr(r, 'units_new', '–')} | "
          f"{probability(getattr(r, 'replication_probability_reference', None))} | "
          f"{probability(getattr(r, 'replication_probability_new', None))} | {'yes' if r.compatible else 'NO'} | "
          f"{'YES' if r.opposed else 'no'} |" for r in shown.itertuples()],
        "",
        *([f"Sign counts across families equal: {int(across.same.sum())} of {len(across)} (the pooled means are "
           "descriptive and carry no verdict).", "",
           "| claim | comparison | metric | sign count (reference) | (new) | pooled mean (reference) | (new) | same |",
           "|---|---|---|---|---|---|---|---|",
           *[f"| {r.claim} | {r.comparison} | {r.metric} | {r.sign_count_reference} | {r.sign_count_new} | "
             f"{r.pooled_effect_reference:.3f} | {r.pooled_effect_new:.3f} | {'yes' if r.same else 'NO'} |"
             for r in across.itertuples()], ""] if len(across) else []),
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


def _summary(verdicts: pd.DataFrame, uncompared: pd.DataFrame, cells: pd.DataFrame) -> str:
    """The replication report's first paragraph: the compared verdicts' agreement under the nesting,
    the opposed ones, those not compared, and the cells' consistency."""
    opposed_rows = verdicts[verdicts.opposed]
    return (
        f"Confirmatory verdicts compatible (the same word, or one implying the other: contradicted and direction "
        f"only each imply not reproduced): {int(verdicts.compatible.sum())} of {len(verdicts)} "
        f"({verdicts.compatible.mean():.0%}); the same word: {int(verdicts.same.sum())} of {len(verdicts)}; opposed "
        f"(no single true effect gives both): {int(verdicts.opposed.sum())}"
        f"{' (' + ', '.join(opposed_rows.hypothesis) + ')' if len(opposed_rows) else ''}; the rest: one run "
        f"decided, the other undetermined or out of scope."
        + (f" Not compared (a run has not run it): {len(uncompared)} ({', '.join(uncompared.hypothesis)})."
           if len(uncompared) else "")
        + f" Cells whose new mean test accuracy is consistent with "
        f"the reference (difference inside its 95% interval): {int(cells.consistent.sum())} of {len(cells)}; "
        f"inside the reference's own 95% interval: {int(cells.inside.sum())} of {len(cells)}; same lr: "
        f"{int(cells.same_lr.sum())} of {len(cells)}."
    )
