"""Replication report: a new run of a suite against a reference run (e.g. ``runs/quick`` against the
committed ``results/quick``).

* Verdict by verdict: the same verdict or not, with both effects.
* Cell by cell (experiment, target, strategy at its selected lr): whether the new mean test
  accuracy lies inside the reference's 95% interval, and whether the same lr was selected.

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


def compare_verdicts(reference: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Per hypothesis of the reference: both verdicts and effects, and ``same``."""
    merged = reference[["hypothesis", "verdict", "effect"]].merge(
        new[["hypothesis", "verdict", "effect"]], on="hypothesis", how="left", suffixes=("_reference", "_new"))
    merged["same"] = merged.verdict_reference == merged.verdict_new
    return merged


def compare_cells(reference: pd.DataFrame, new: pd.DataFrame, metric: str = "test_accuracy") -> pd.DataFrame:
    """Per (experiment, target, strategy) of the reference's selected table: the new mean of
    ``metric`` and whether it lies inside the reference mean ± its 95% half-width; same lr or not."""
    keys = ["experiment", "target", "strategy"]
    columns = [*keys, "lr", metric, f"{metric}_ci"]
    merged = reference[columns].merge(new[[*keys, "lr", metric]], on=keys, how="left", suffixes=("_reference", "_new"))
    ref, half, value = merged[f"{metric}_reference"], merged[f"{metric}_ci"], merged[f"{metric}_new"]
    merged["inside"] = [(not math.isnan(v)) and (abs(v - r) <= h if not math.isnan(h) else v == r)
                        for r, h, v in zip(ref, half.fillna(math.nan), value.fillna(math.nan))]
    merged["same_lr"] = merged.lr_reference == merged.lr_new
    return merged


def write_replication(reference_dir: Path, new_dir: Path, suite: Suite) -> bool:
    """Rebuild both runs' reports, compare them and write ``replication.md``/``.csv`` into
    ``new_dir``; returns whether every verdict is the same.

    Raises:
        FileNotFoundError: a folder has no runs.jsonl.
    """
    for folder in (reference_dir, new_dir):
        if not (folder / "runs.jsonl").exists():
            raise FileNotFoundError(f"{folder} has no runs.jsonl: run the suite there first")
    write_reports(new_dir, suite)
    reference_verdicts = pd.read_csv(reference_dir / "verdicts.csv")
    new_verdicts = pd.read_csv(new_dir / "verdicts.csv")
    verdicts = compare_verdicts(reference_verdicts, new_verdicts)
    cells = compare_cells(pd.read_csv(reference_dir / "selected.csv"), pd.read_csv(new_dir / "selected.csv"))
    atomic_write(new_dir / "replication.csv", cells.to_csv(index=False, float_format="%.6g"))
    same = bool(verdicts.same.all())
    lines = [
        f"# Replication of `{reference_dir}` by `{new_dir}` (suite `{suite.name}`)",
        "",
        f"Verdicts equal: {int(verdicts.same.sum())} of {len(verdicts)}. Cells whose new mean test accuracy lies "
        f"inside the reference 95% interval: {int(cells.inside.sum())} of {len(cells)}; same selected lr: "
        f"{int(cells.same_lr.sum())} of {len(cells)}.",
        "",
        "| hypothesis | verdict (reference) | verdict (new) | effect (reference) | effect (new) | same |",
        "|---|---|---|---|---|---|",
        *[f"| {r.hypothesis} | {r.verdict_reference} | {r.verdict_new} | {r.effect_reference:.3f} | "
          f"{r.effect_new:.3f} | {'yes' if r.same else 'NO'} |" for r in verdicts.itertuples()],
        "",
        "| experiment | target | strategy | lr ref | lr new | test acc (reference) | test acc (new) | inside |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {r.experiment} | {r.target} | {r.strategy} | {r.lr_reference:g} | {r.lr_new:g} | "
          f"{r.test_accuracy_reference:.3f} ± {r.test_accuracy_ci:.3f} | {r.test_accuracy_new:.3f} | "
          f"{'yes' if r.inside else 'no'} |" for r in cells.itertuples()],
        "",
    ]
    atomic_write(new_dir / "replication.md", "\n".join(lines))
    return same
