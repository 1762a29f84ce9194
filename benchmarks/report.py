"""Reports of a suite's runs.jsonl: verdicts first, then the tables they rest on; data only. The
tables are computed by :mod:`benchmarks.analysis`; this module writes them as CSV, markdown
(``summary.md``, the README and docs tables that :mod:`benchmarks.blocks` places) and figures.

* ``verdicts.csv``: one row per hypothesis: the paired effect over seeds, its Holm-adjusted
  interval (``ci_low``, ``ci_high``, two-sided at ``ci_level``), ``p`` and ``p_holm``, the
  verdict (:func:`benchmarks.stats.verdict`), its unit and replication probability, the preconditions and their outcome,
  the power line (``mde``: minimum detectable effect at the run's seeds and the hypothesis' Holm
  level; ``seeds_needed`` for its minimum effect), the minimum effect and where it comes from, the
  published number. Exploratory rows carry an unadjusted 95% interval and no verdict.
* ``selected.csv``: per (experiment, target, strategy) the lr chosen on validation, whether it is at
  an edge of the lrs run and whether that edge is capped, the mean and 95% half-width of every
  metric over seeds at that lr. ``runs.csv``: every run's scalar metrics.
* ``gates.csv``: per target, the best pretrained strategy against scratch and pixel, and the source gate.
* ``convergence.csv`` / ``curves_<experiment>_<target>.png``: normalised validation AUC, validation
  accuracy at a quarter of the budget and steps to ``THRESHOLD_FRACTION`` of the best final
  validation accuracy, per strategy; learning curves with 95% bands.
* ``forgetting.csv`` / ``forgetting_<experiment>_<target>.png``: source retention (precise BN) at a
  matched target accuracy (interpolated along every run's trajectory, at ``MATCH_FRACTION`` of the
  lowest peak of the strategies' mean test-accuracy curves), retention and backward transfer at
  the end.
* ``ood.csv``: OOD accuracy per corruption and strategy; corruptions at chance for every strategy flagged.
* ``budget_check.csv``: every confirmatory hypothesis at twice the budget on the first seeds.
* ``summary.md``: all of the above as tables, and how to regenerate the folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .across import across_families, claim_of, family_label
from .across import plot as plot_across
from .analysis import (
    MATCH_FRACTION,
    THRESHOLD_FRACTION,
    add_derived_metrics,
    budget_check,
    convergence,
    forgetting,
    gates,
    mean_curve,
    ood_table,
    pareto,
    selected_table,
    verdicts,
)
from .selection import BUDGET_CHECK_FACTOR, EXTENSION_CAP, mark_capped, runs_frame, select_lr
from .stats import (
    ALPHA,
    FRAGILE_BELOW,
    NOT_RUN,
    mean_ci,
)
from .store import atomic_write, read_runs
from .suites import CURVE_METRICS, Suite

#: The summary's Verdicts section of a suite without confirmatory hypotheses.
NO_HYPOTHESES = ("No confirmatory hypotheses declared: a suite states them as `[[hypotheses]]` tables "
                 "(`benchmarks/configs/README.md`, `docs/benchmarks/own-suites.md`).")


# --- Writing -------------------------------------------------------------------------------------


def _fmt(value: Any, ci: Any = None, digits: int = 3) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        text = f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
        if ci is not None and not (isinstance(ci, float) and math.isnan(ci)):
            text += f" ± {ci:.{digits}f}"
        return text
    return str(value)


def markdown_table(frame: pd.DataFrame, columns: Mapping[str, str], with_ci: bool = False) -> str:
    """``frame`` as a markdown table: a column per ``columns`` key, headed by its value, each cell
    formatted as the reports print numbers (with ``with_ci``, `` ± <column>_ci`` where there is one)."""
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row.get(c), row.get(f"{c}_ci") if with_ci else None) for c in columns)
                     + " |")
    return "\n".join(lines)


def _table_or(frame: pd.DataFrame, columns: Mapping[str, str], empty: str, with_ci: bool = False) -> str:
    """``frame`` as a markdown table, or the sentence ``empty`` where it has no row (no header-only tables)."""
    return markdown_table(frame, columns, with_ci) if len(frame) else empty


def _strategy_table(part: pd.DataFrame) -> str:
    metrics = [m for m in ("test_accuracy", "ood_accuracy", "val_auc", "retention_precise_bn", "ood_cka", "id_cka",
                           "probe_C", "probe_train_ce") if m in part and part[m].notna().any()]
    head = ["strategy", "lr (selected)", "lrs run", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in part.iterrows():
        if row.kind == "derived":
            lr = f"{row.lr:g} (parent's)"
        else:
            lr = f"{row.lr:g}" + (" (capped edge)" if row.capped else " (edge)" if row.edge else "")
        cells = [row.strategy, lr, str(row.lrs_run)]
        cells += [_fmt(row.get(metric), row.get(f"{metric}_ci")) for metric in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: The colour of each built-in strategy in every figure (curves, forgetting, Pareto, WiSE-FT), whatever
#: else a figure shows; strategies named alike by role share a colour family (the surgical blocks, the
#: layer decays). A derived strategy (``<parent>+wise_<alpha>``) takes its parent's colour.
STRATEGY_COLOURS = {
    "full": "#1f77b4", "ft": "#1f77b4", "top_ft": "#1f77b4",
    "discriminative": "#ff7f0e", "gradual_unfreezing": "#2ca02c", "l2_sp": "#d62728",
    "layer_decay_0.75": "#9467bd", "layer_decay_0.65": "#c5b0d5",
    "lp_ft": "#8c564b", "top_lp_ft": "#8c564b", "linear_probe": "#bcbd22",
    "surgical_first": "#17becf", "surgical_middle": "#9edae5", "surgical_last": "#e377c2",
    "surgical_head": "#ffbb78", "bn_only": "#98df8a", "no_adaptation": "#000000",
    "scratch": "#7f7f7f", "pixel": "#c7c7c7",
}
#: Colours of strategies :data:`STRATEGY_COLOURS` does not name (a suite of one's own), chosen by a
#: hash of the name, so that a strategy has one colour in every figure of every run.
_OTHER_COLOURS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
                  "#756bb1", "#636363", "#6baed6", "#fd8d3c", "#74c476", "#9e9ac8", "#ad494a", "#a55194")


def strategy_colour(strategy: str) -> str:
    """The one colour of ``strategy`` in every figure the suite draws (:data:`STRATEGY_COLOURS`).

    Example:
        >>> strategy_colour("l2_sp"), strategy_colour("top_lp_ft+wise_0.5") == strategy_colour("top_lp_ft")
        ('#d62728', True)
    """
    import zlib

    name = strategy.split("+", 1)[0]
    return STRATEGY_COLOURS.get(name) or _OTHER_COLOURS[zlib.crc32(name.encode()) % len(_OTHER_COLOURS)]


def _save_figure(fig: Any, out: Path, name: str) -> str:
    """Write ``fig`` to ``out / name`` (PNG, 110 dpi), close it, return ``name``."""
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def curve_band(curves: pd.Series, low: float = 0.0, high: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean of per-seed ``curves`` (lists of equal length) and its 95% band (mean ± the Student-t
    half-width at each step), the band clipped to the metric's range ``[low, high]`` (accuracy: [0, 1];
    with few seeds the half-width alone runs far outside it). Returns (mean, band low, band high)."""
    arrays = np.asarray([c for c in curves if isinstance(c, list)], dtype=float)
    mean = arrays.mean(0)
    half = np.array([mean_ci(arrays[:, i].tolist())[1] for i in range(arrays.shape[1])]) if len(arrays) > 1 else 0
    return mean, np.clip(mean - half, low, high), np.clip(mean + half, low, high)


def _band(ax: Any, curves: pd.Series, steps: list[float], label: str) -> None:
    mean, band_low, band_high = curve_band(curves)
    colour = strategy_colour(label)
    ax.plot(steps, mean, label=label, color=colour)
    ax.fill_between(steps, band_low, band_high, alpha=0.2, color=colour)


def _plot_curves(runs: pd.DataFrame, out: Path) -> list[str]:
    names = []
    trained = runs[runs.selected & runs.kind.isin(("finetune", "scratch")) & runs.curve_step.notna()]
    for (experiment, target), part in trained.groupby(["experiment", "target"], sort=False):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for strategy, group in part.groupby("strategy", sort=False):
            if len({len(c) for c in group.curve_step}) == 1:
                _band(ax, group.curve_val_accuracy, list(group.curve_step.iloc[0]), strategy)
        ax.set(xlabel="step", ylabel="validation accuracy (mean, 95% band over seeds)",
               title=f"{experiment} / {target}: learning curves at the selected lrs")
        ax.legend(fontsize=8)
        names.append(_save_figure(fig, out, f"curves_{experiment}_{target}.png"))
    return names


def _plot_forgetting(runs: pd.DataFrame, levels: pd.DataFrame, out: Path) -> list[str]:
    names = []
    tracked = runs[runs.selected & (runs.kind == "finetune") & runs.curve_retention_precise_bn.notna()]
    for (experiment, target), part in tracked.groupby(["experiment", "target"], sort=False):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for strategy, group in part.groupby("strategy", sort=False):
            x, y = mean_curve(group.curve_test_accuracy), mean_curve(group.curve_retention_precise_bn)
            if x is not None and y is not None:
                ax.plot(x, y, marker=".", label=strategy, color=strategy_colour(strategy))
        level = levels[(levels.experiment == experiment) & (levels.target == target)] if len(levels) else levels
        if len(level):
            ax.axvline(float(level.matched_test_accuracy.iloc[0]), color="grey", linestyle="--", linewidth=1,
                       label="matched accuracy")
        ax.set(xlabel="target test accuracy (mean trajectory over seeds)", ylabel="source retention (precise BN)",
               title=f"{experiment} / {target}: forgetting along training")
        ax.legend(fontsize=8)
        names.append(_save_figure(fig, out, f"forgetting_{experiment}_{target}.png"))
    return names


def _plot_pareto(front: pd.DataFrame, out: Path) -> list[str]:
    """Retention against target accuracy at every lr run (one line per strategy, lr in the labels),
    where some strategy ran more than one lr."""
    names = []
    for (experiment, target), part in front.groupby(["experiment", "target"], sort=False):
        if part.groupby("strategy").lr.nunique().max() < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for strategy, group in part.groupby("strategy", sort=False):
            group = group.sort_values("lr")
            ax.plot(group.test_accuracy, group.retention_precise_bn, marker="o", label=strategy,
                    color=strategy_colour(strategy))
            for row in group.itertuples():
                ax.annotate(f"{row.lr:g}", (row.test_accuracy, row.retention_precise_bn), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel="target test accuracy (mean over seeds)", ylabel="source retention at the end (precise BN)",
               title=f"{experiment} / {target}: forgetting across the lr grid")
        ax.legend(fontsize=8)
        names.append(_save_figure(fig, out, f"pareto_{experiment}_{target}.png"))
    return names


def _plot_wise(table: pd.DataFrame, out: Path) -> list[str]:
    names = []
    if "ood_accuracy" not in table:
        return names
    wise = table[table.strategy.str.contains(r"\+wise_") & table.ood_accuracy.notna()]
    for experiment, part in wise.groupby("experiment", sort=False):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        part = part.assign(parent=part.strategy.str.split("+").str[0],
                           alpha=part.strategy.str.split("_").str[-1].astype(float))
        for parent, curve in part.groupby("parent", sort=False):
            curve = curve.sort_values("alpha")
            ax.plot(curve.test_accuracy, curve.ood_accuracy, marker="o", label=f"{parent}: alpha 0 -> 1",
                    color=strategy_colour(parent))
        ax.set(xlabel="ID test accuracy", ylabel="OOD accuracy (mean over corruptions)",
               title=f"{experiment}: WiSE-FT interpolation")
        ax.legend(fontsize=8)
        names.append(_save_figure(fig, out, f"wise_{experiment}.png"))
    return names


VERDICT_COLUMNS = {"hypothesis": "hypothesis", "mirrors": "mirrors", "comparison": "comparison", "target": "target",
                   "metric": "metric", "effect": "effect", "ci_low": "adj. ci low", "ci_high": "adj. ci high",
                   "p_holm": "p (Holm)", "min_effect": "min effect", "mde": "MDE", "unit": "unit", "units": "units",
                   "seeds": "seeds", "seeds_needed": "seeds for min effect", "preconditions": "preconditions",
                   "verdict": "verdict", "replication_probability": "replication probability"}


def _in_suite_order(frame: pd.DataFrame, order: Mapping[tuple[str, str], int]) -> pd.DataFrame:
    """Rows sorted by the suite's (experiment, target) order, stable within."""
    if frame.empty:
        return frame
    rank = [order.get((e, t), len(order)) for e, t in zip(frame.experiment, frame.target, strict=True)]
    return frame.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)


ACROSS_COLUMNS = {"claim": "claim", "comparison": "comparison", "metric": "metric", "per_family": "per family: effect "
                  "[Holm-adjusted CI] verdict", "sign_count": "sign count (families in scope)",
                  "consistent": "same verdict in every family in scope", "pooled_effect": "pooled mean (descriptive)",
                  "pooled_ci_low": "HK 95% low", "pooled_ci_high": "HK 95% high", "tau": "tau"}


def _across_section(across: pd.DataFrame) -> list[str]:
    """The summary's cross-backbone section (claims tested in at least two families)."""
    return ["## Across backbones", "",
            "Each claim's verdicts are its per-family verdicts (above), with a sign count: the families in scope "
            "whose effect lies on the predicted side. The pooled mean is descriptive and carries no verdict: a "
            "random-effects mean of the families' effects with the small-k Hartung-Knapp 95% interval (Student-t, "
            "k - 1 df); the families are hand-picked architectures, not a sample of a population. tau: the "
            "between-family standard deviation of the effect (`benchmarks/across.py`).", "",
            markdown_table(across, ACROSS_COLUMNS), "", "![across_backbones.png](across_backbones.png)", ""]


def replicability(verdict_table: pd.DataFrame) -> str:
    """Two markdown bullets: the confirmatory verdicts with a replication probability of at least
    FRAGILE_BELOW, and the fragile ones, each with its verdict and probability (``summary.md`` and
    the ``replicability-<run>`` blocks of the docs)."""
    confirmatory = verdict_table[~verdict_table.exploratory.astype(bool)]
    not_run = confirmatory[confirmatory.verdict == NOT_RUN]
    confirmatory = confirmatory[confirmatory.verdict != NOT_RUN]
    solid = confirmatory[confirmatory.replication_probability >= FRAGILE_BELOW]
    fragile = confirmatory[~(confirmatory.replication_probability >= FRAGILE_BELOW)]

    def listing(part: pd.DataFrame) -> str:
        return "; ".join(f"{r.hypothesis} {r.verdict} ({r.replication_probability:.2f})" for r in part.itertuples()) \
            or "none"

    return "\n".join([
        f"- **{len(solid)} of {len(confirmatory)}** confirmatory verdicts have a replication probability of at least "
        f"{FRAGILE_BELOW}: {listing(solid)}.",
        f"- **Fragile** ({len(fragile)}): {listing(fragile)}.",
        *([f"- **Not run** ({len(not_run)}): {'; '.join(not_run.hypothesis)}."] if len(not_run) else [])])


def _regenerate_hint(suite: Suite, environment: Mapping[str, Any]) -> str:
    command = environment.get("command")
    if command:
        return f"`{command}`"
    return f"`python -m benchmarks run --suite {suite.name} --out <this folder>`"


def write_reports(out: Path, suite: Suite) -> None:
    """Write every report of ``out/runs.jsonl`` into ``out``."""
    records = read_runs(out / "runs.jsonl")
    runs = runs_frame(suite, records)
    environment_path = out / "environment.json"
    environment = json.loads(environment_path.read_text()) if environment_path.exists() else {}
    if runs.empty:
        atomic_write(out / "summary.md", f"# Suite `{suite.name}`\n\nNo finished runs yet.\n")
        return
    tables = analyse(suite, runs)
    for name, frame in (("runs.csv", tables.scalar_runs), ("selected.csv", tables.selected), ("gates.csv", tables.gates),
                        ("verdicts.csv", tables.verdicts), ("convergence.csv", tables.convergence),
                        ("forgetting.csv", tables.forgetting), ("ood.csv", tables.ood),
                        ("budget_check.csv", tables.budget_check), ("across.csv", tables.across),
                        ("pareto.csv", tables.pareto)):
        atomic_write(out / name, frame.to_csv(index=False, float_format="%.6g"))
    plots = (_plot_curves(tables.runs, out) + _plot_forgetting(tables.runs, tables.levels, out)
             + _plot_pareto(tables.pareto, out) + _plot_wise(tables.selected, out))
    several = tables.across[tables.across.families >= 2]
    if len(several):
        plot_across(tables.verdicts, tables.across, str(out / "across_backbones.png"))
    failed = [r for r in records if r.get("status") == "failed"]
    lines = [f"# Suite `{suite.name}`", "", suite.description, "", "## Verdicts", "",
             *_verdict_section(tables.verdicts[~tables.verdicts.exploratory]),
             *(_across_section(several) if len(several) else []),
             *_exploratory_section(suite, tables.verdicts), *_budget_section(tables.budget_check),
             *_gates_section(tables.gates), *_lr_section(tables.selected), *_strategy_sections(suite, tables.selected),
             *_convergence_section(tables.convergence), *_forgetting_section(tables.levels, tables.forgetting),
             *_pareto_section(tables.pareto), *_ood_section(tables.ood)]
    lines += [f"![{name}]({name})" for name in plots]
    lines += ["", "## Failed cells", ""] + ([f"- {r.get('experiment')} / {r.get('target')} / {r.get('strategy')} / "
                                             f"seed {r.get('seed')} / lr {r.get('lr')}: {r.get('error')}"
                                             for r in failed] or ["none"])
    lines += _environment_section(suite, environment)
    atomic_write(out / "summary.md", "\n".join(lines))


@dataclass(frozen=True)
class Tables:
    """Every table of a suite's reports (:func:`analyse`)."""

    runs: pd.DataFrame
    levels: pd.DataFrame
    selected: pd.DataFrame
    gates: pd.DataFrame
    verdicts: pd.DataFrame
    convergence: pd.DataFrame
    forgetting: pd.DataFrame
    ood: pd.DataFrame
    budget_check: pd.DataFrame
    pareto: pd.DataFrame
    across: pd.DataFrame

    @property
    def scalar_runs(self) -> pd.DataFrame:
        """``runs.csv``: every run without its curves."""
        return self.runs.drop(columns=[c for c in self.runs if c.startswith("curve_")])


def analyse(suite: Suite, runs: pd.DataFrame) -> Tables:
    """Every table of the reports of ``runs`` (:func:`benchmarks.selection.runs_frame`, not empty):
    each strategy's lr selected, then :mod:`benchmarks.analysis` and the cross-family table; the
    per-target tables in the suite's order."""
    runs = mark_capped(suite, select_lr(runs))
    runs, levels = add_derived_metrics(runs)
    table = selected_table(runs)
    gate_table = gates(suite, runs, table)
    verdict_table = verdicts(suite, runs, gate_table)
    order = {(e.name, t.name): i for i, (e, t) in enumerate((e, t) for e in suite.experiments for t in e.targets)}
    converge, forget, ood = (_in_suite_order(frame, order)
                             for frame in (convergence(runs), forgetting(runs, levels), ood_table(suite, runs)))
    return Tables(runs, levels, table, gate_table, verdict_table, converge, forget, ood,
                  budget_check(suite, runs, verdict_table), pareto(runs), across_families(verdict_table))


def _verdict_section(confirmatory: pd.DataFrame) -> list[str]:
    if not len(confirmatory):
        return [NO_HYPOTHESES, ""]
    return [
            "Paired difference `better - worse` per unit, each side at its selected lr (pre-registered in a "
            "confirmatory suite, chosen on validation in a grid suite). The unit: a seed with its own source model, a "
            "seed on shipped weights every seed shares by construction, or, where seeds share a suite-pretrained "
            "source model, the source model (its seeds averaged: the balanced mixed model's t on source means). "
            f"Interval: two-sided Student-t at the hypothesis' Holm step level (family-wise {ALPHA} over the "
            f"{int((confirmatory.p_holm.notna()).sum())} confirmatory hypotheses in scope), so it excludes 0 exactly "
            f"when p (Holm) < {ALPHA}. *reproduced*: interval above 0 and effect >= min effect; *direction only*: "
            "interval above 0 and below the min effect; *not reproduced*: interval's upper end below the min effect; "
            "*contradicted*: interval below 0 and effect <= -min effect (contradicted and direction only each imply "
            "not reproduced); *undetermined*: otherwise; *out of scope*: a precondition or the transfer gate failed. "
            + ("*not run*: some of the cells the hypothesis reads have not run (a part of the suite was run): no test, "
               "no verdict yet. " if (confirmatory.verdict == NOT_RUN).any() else "") +
            "A "
            "non-inferiority hypothesis (`>=`) is tested against minus its margin (the min effect): its p is that "
            f"test's, its interval excludes -margin exactly when p (Holm) < {ALPHA}; reproduced when the interval lies "
            "above -margin, contradicted when it lies below it. A transfer gate its interval does not decide leaves "
            "the verdict undetermined. Replication probability: the chance that an independent run of the same "
            "design gives a compatible verdict (the same word, or one implying the other), given that its gates and "
            "preconditions hold as here (parametric bootstrap at this run's effect and sd); for out of scope, that "
            f"the failing precondition or gate fails again; **fragile** below {FRAGILE_BELOW}. MDE: the smallest "
            "effect the test detects with 80% power at these units and this level.", "",
            replicability(confirmatory), "",
            markdown_table(marked_fragile(confirmatory), VERDICT_COLUMNS), "",
            "Minimum effects and their sources:", "",
            *[f"- {r.hypothesis}: {_fmt(r.min_effect)}" + (f" — {r.min_effect_source}" if r.min_effect_source else "")
              for r in confirmatory.itertuples()], "",
    ]


def _exploratory_section(suite: Suite, verdict_table: pd.DataFrame) -> list[str]:
    unmeasured = [h.name for h in suite.hypotheses if h.exploratory and h.metric in CURVE_METRICS
                  and not suite.experiment(h.experiment).track_forgetting]
    return [
        "## Exploratory comparisons (no verdict, not in the Holm family; unadjusted 95% interval)", "",
        *([f"Registered exploratory by the pre-registration (futile: on the tuning stage's numbers no seed count up "
           f"to the maximum decides them): {', '.join(suite.futile)}.", ""] if suite.futile else []),
        *([f"Not measured in this run: {', '.join(unmeasured)} (the forgetting curve is measured only where a "
           "confirmatory verdict reads it; the tuning stage measures it).", ""] if unmeasured else []),
        _table_or(verdict_table[verdict_table.exploratory],
                  {k: v for k, v in VERDICT_COLUMNS.items() if k not in ("p_holm", "verdict", "seeds_needed", "mde",
                                                                          "preconditions")},
                  "No exploratory comparisons declared."), "",
    ]


def _budget_section(check: pd.DataFrame) -> list[str]:
    return [
        f"## Budget check (selected cells at {BUDGET_CHECK_FACTOR}x the steps, first seeds)", "",
        _table_or(check, {"hypothesis": "hypothesis", "comparison": "comparison", "metric": "metric",
                          "seeds": "seeds", "effect_1x": "effect (1x, same seeds)",
                          "effect_longer": f"effect ({BUDGET_CHECK_FACTOR}x)", "verdict": "verdict",
                          "holds": "verdict holds"}, "No confirmatory hypothesis to check at a longer budget."), "",
    ]


def _gates_section(gate_table: pd.DataFrame) -> list[str]:
    return [
        "## Gates", "",
        markdown_table(gate_table, {"experiment": "experiment", "target": "target",
                                    "best_pretrained": "best pretrained", "best_pretrained_accuracy": "acc",
                                    "best_baseline": "best baseline", "best_baseline_accuracy": "acc ",
                                    "margin": "margin (mean per unit)", "margin_ci_low": "95% low", "units": "units",
                                    "margin_ci_high": "95% high", "required_margin": "required",
                                    "transfer": "transfer gate", "source_accuracy": "lowest source acc",
                                    "source_min_accuracy": "source gate", "source_ok": "source ok"}), "",
    ]


def _lr_section(table: pd.DataFrame) -> list[str]:
    tuned = table[(table.kind != "derived")]
    return [
        "## Learning-rate selection", "",
        f"{int(tuned.edge.sum())} of {len(tuned)} selected lrs sit at an edge of the lrs run; "
        f"{int(tuned.capped.sum())} ({_fmt(tuned.capped.mean() if len(tuned) else math.nan)}) at an edge the grid "
        f"may not extend further (at most {EXTENSION_CAP} candidates beyond each end of the base grid).", "",
        "## Strategies at their selected lr (mean ± 95% half-width over seeds)",
    ]


def _strategy_sections(suite: Suite, table: pd.DataFrame) -> list[str]:
    lines = []
    for experiment in suite.experiments:
        for target in experiment.targets:
            part = table[(table.experiment == experiment.name) & (table.target == target.name)]
            if not part.empty:
                lines += ["", f"### {experiment.name} / {target.name}", "", _strategy_table(part)]
    return lines


def _convergence_section(converge: pd.DataFrame) -> list[str]:
    return ["", "## Convergence (selected lrs)", "",
            f"Threshold: {THRESHOLD_FRACTION:.0%} of the best pretrained strategy's mean final validation "
            "accuracy on the target; steps to it are averaged over the seeds that reach it.", "",
            _table_or(converge, {"experiment": "experiment", "target": "target", "strategy": "strategy",
                                 "val_auc": "val AUC", "val_at_quarter": "val acc at 25%",
                                 "threshold": "threshold", "steps_to_threshold": "steps to threshold",
                                 "reached": "share reaching it"}, "No learning curves at the selected lrs.",
                      with_ci=True), ""]


def _forgetting_section(levels: pd.DataFrame, forget: pd.DataFrame) -> list[str]:
    return ["## Forgetting (selected lrs)", "",
            f"Retention (precise BN) at matched target accuracy: along each run's trajectory, where its test "
            f"accuracy first reaches {MATCH_FRACTION:.0%} of the lowest peak of the strategies' mean test "
            "curves (the level is inside every strategy's span).", "",
            markdown_table(levels, {"experiment": "experiment", "target": "target",
                                    "matched_test_accuracy": "matched test acc", "lowest_peak_strategy": "lowest peak",
                                    "lowest_peak": "its peak"}) if len(levels) else "no tracked trajectories", "",
            _table_or(forget, {"experiment": "experiment", "target": "target", "strategy": "strategy",
                               "retention_at_match": "retention at match", "matched_seeds": "seeds matched",
                               "retention_precise_bn": "retention at end (precise BN)",
                               "retention_weights_only": "retention at end (weights only)",
                               "backward_transfer": "backward transfer"},
                      "No source retention measured (a source model's task is needed to measure forgetting).",
                      with_ci=True), ""]


def _pareto_section(front: pd.DataFrame) -> list[str]:
    if not len(front) or front.groupby(["experiment", "target", "strategy"]).lr.nunique().max() <= 1:
        return []
    return ["## Forgetting across the lr grid (Pareto)", "",
            "Every lr run, not the selected one alone: mean target test accuracy and mean source retention at "
            "the end (precise BN) over seeds; on the front: no other point of the target, any strategy and "
            "lr, has at least both and more of one (`pareto.csv`).", "",
            markdown_table(front, {"experiment": "experiment", "target": "target", "strategy": "strategy",
                                   "lr": "lr", "seeds": "seeds", "test_accuracy": "test acc",
                                   "retention_precise_bn": "retention (end)", "on_front": "on front",
                                   "front_share": "strategy's share on front"}), ""]


def _ood_section(ood: pd.DataFrame) -> list[str]:
    if not len(ood):
        return []
    wide = ood.pivot_table(index=["experiment", "corruption", "at_chance_for_all"], columns="strategy",
                           values="ood_accuracy", sort=False).reset_index()
    return ["## OOD accuracy per corruption (selected lrs, mean over seeds)", "",
            markdown_table(wide, {c: c for c in wide.columns}), ""]


def _environment_section(suite: Suite, environment: Mapping[str, Any]) -> list[str]:
    versions = environment.get("versions", {})
    phases = "; ".join(f"{p['phase']}: {p['computed']} of {p['cells']} cells in {p['seconds']:.0f} s"
                       for p in environment.get("phases") or [])
    return ["", "## Environment and how to regenerate", "",
            f"Regenerate with {_regenerate_hint(suite, environment)} (reports alone: "
            f"`python -m benchmarks report --out <this folder>`).", "",
            f"- {environment.get('device_name', '?')}, {environment.get('executor', 'local')} executor, "
            f"{environment.get('workers', '?')} worker process(es) of {environment.get('threads_per_cell', '?')} "
            f"torch thread(s) per cell; wall time {_fmt(environment.get('wall_seconds'), digits=0)} s for "
            f"{environment.get('computed', '?')} computed cells ({phases}); 1/5/15-minute load average at the "
            f"start {environment.get('load_average_start', '?')}, at the end {environment.get('load_average', '?')}",
            "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            f"- git {environment.get('git', {}).get('commit', '?')}, python {environment.get('python', '?')}, "
            f"{environment.get('date', '?')}", ""]


def marked_fragile(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with " (fragile)" after each fragile verdict (a verdicts.csv with a ``fragile`` column)."""
    if "fragile" not in frame:
        return frame
    fragile = frame.fragile.fillna(False).astype(bool)
    return frame.assign(verdict=[f"{v} (fragile)" if f else v for v, f in zip(frame.verdict, fragile, strict=True)])


#: The verdict tables of the README and the documentation pages: what decides the verdict (effect,
#: Holm-adjusted interval) and the verdict itself first, so that they fit the page's width; the rest after.
READABLE_VERDICT_COLUMNS = {"hypothesis": "hypothesis", "effect": "effect", "interval": "Holm-adjusted interval",
                            "verdict": "verdict", "replication_probability": "replication probability",
                            "comparison": "comparison", "target": "target", "metric": "metric", "p_holm": "p (Holm)",
                            "min_effect": "min effect", "unit": "unit", "units": "units", "seeds": "seeds"}


def interval(low: Any, high: Any) -> str:
    """``[low, high]`` as the tables print them, never broken across lines (a no-break space after the
    comma); ``–`` where there is no interval."""
    if any(v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)) for v in (low, high)):
        return "–"
    return f"[{_fmt(low)},\u00a0{_fmt(high)}]"


def with_interval(frame: pd.DataFrame, low: str = "ci_low", high: str = "ci_high") -> pd.DataFrame:
    """``frame`` with an ``interval`` column: ``[low, high]`` of each row (:func:`interval`)."""
    return frame.assign(interval=[interval(a, b) for a, b in zip(frame[low], frame[high], strict=True)])


def readme_table(verdict_table: pd.DataFrame) -> str:
    """The confirmatory verdict table as the README and the docs show it (from a verdicts.csv):
    :data:`READABLE_VERDICT_COLUMNS`."""
    confirmatory = with_interval(marked_fragile(verdict_table[~verdict_table.exploratory.astype(bool)]))
    return markdown_table(confirmatory, {k: v for k, v in READABLE_VERDICT_COLUMNS.items() if k in confirmatory})


def readme_across_table(across: pd.DataFrame, verdict_table: pd.DataFrame) -> str:
    """The cross-backbone table as the README and the docs show it (from an across.csv and the
    verdicts.csv of the same run): per claim, one column per family with its verdict, effect and
    Holm-adjusted interval (``–`` where the claim is not tested in that family), then the sign count,
    the descriptive pooled mean with its Hartung-Knapp interval (a claim tested in fewer than two
    families in scope has none), the comparison and the metric."""
    confirmatory = verdict_table[~verdict_table.exploratory.astype(bool)]
    confirmatory = confirmatory.assign(claim=confirmatory.hypothesis.map(claim_of),
                                       label=[family_label(r) for r in confirmatory.itertuples()])
    families = list(dict.fromkeys(confirmatory.label))
    cells = {(r.claim, r.label): f"{r.verdict}<br>{_fmt(r.effect)} {interval(r.ci_low, r.ci_high)}"
             if isinstance(r.effect, float) and math.isfinite(r.effect) else r.verdict
             for r in marked_fragile(confirmatory).itertuples()}
    table = with_interval(across, "pooled_ci_low", "pooled_ci_high")
    table = table.assign(**{f"family {i}": [cells.get((claim, family), "–") for claim in table.claim]
                            for i, family in enumerate(families)})
    return markdown_table(table, {"claim": "claim", **{f"family {i}": family for i, family in enumerate(families)},
                             "sign_count": "sign count (families in scope)", "pooled_effect": "pooled mean "
                             "(descriptive)", "interval": "Hartung-Knapp 95%", "consistent": "same verdict in every "
                             "family in scope", "comparison": "comparison", "metric": "metric", "tau": "tau"})
