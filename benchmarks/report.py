"""Reports of a suite's runs.jsonl: verdicts first, then the tables they rest on; data only.

* ``verdicts.csv``: one row per hypothesis: ``hypothesis, mirrors, comparison, metric, effect,
  ci_low, ci_high, p, p_holm, verdict``, the minimum effect, the gate and the published number.
* ``selected.csv``: per (experiment, target, strategy) the lr chosen on validation (mean over
  seeds), whether it is at the edge of the grid, and the mean and 95% half-width of every metric
  over seeds at that lr. ``runs.csv``: every run's scalar metrics.
* ``gates.csv``: per target, the best pretrained strategy against scratch and pixel, and the source gate.
* ``forgetting.csv`` / ``forgetting_<experiment>_<target>.png``: source retention (precise BN)
  against target accuracy for every strategy and lr, and retention interpolated at a matched
  target accuracy. ``wise_<experiment>.png``: WiSE-FT ID against OOD accuracy.
* ``summary.md``: the verdict table, then gates, per-target tables, matched-accuracy forgetting,
  convergence, and how to regenerate the folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .stats import holm, mean_ci, paired_difference, verdict  # noqa: E402
from .store import atomic_write, read_runs  # noqa: E402
from .suites import Suite  # noqa: E402

#: Scalar metrics of a run, in table order.
METRICS = ("test_accuracy", "ood_accuracy", "val_accuracy", "retention_precise_bn", "retention_weights_only",
           "ood_cka", "test_cka", "still_improving", "train_seconds", "wall_seconds")
#: Kinds of strategies that start from the pretrained backbone (the transfer gate compares these).
PRETRAINED_KINDS = ("finetune", "probe", "derived")


def runs_frame(suite: Suite, records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per successful run of the suite's cells (matched by config), plus one per WiSE-FT
    variant (kind ``derived``, strategy ``<parent>+wise_<alpha>``)."""
    wanted = {json.dumps(_canonical(cell.config()), sort_keys=True): cell for cell in suite.cells()}
    rows = []
    for record in records:
        cell = wanted.get(json.dumps(record.get("config"), sort_keys=True))
        if cell is None or record.get("status") != "ok":
            continue
        base = {"experiment": cell.experiment.name, "target": cell.target.name, "strategy": cell.strategy.name,
                "kind": cell.strategy.kind, "seed": cell.seed, "lr": cell.lr, "parent": cell.strategy.name,
                "lr_index": cell.experiment.grid(cell.strategy).index(cell.lr),
                "grid_size": len(cell.experiment.grid(cell.strategy))}
        rows.append({**base, **{m: _number(record.get(m)) for m in METRICS},
                     "source_accuracy": (record.get("source_model") or {}).get("source_accuracy"),
                     "source_min_accuracy": (record.get("source_model") or {}).get("min_accuracy")})
        for name, variant in (record.get("variants") or {}).items():
            rows.append({**base, "strategy": name, "kind": "derived", **{m: _number(variant.get(m)) for m in METRICS}})
    return pd.DataFrame(rows)


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else math.nan


def select_lr(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, target, parent strategy), the lr with the best mean validation accuracy over
    seeds (ties: the smaller lr); derived rows follow their parent's choice. Adds ``selected``
    and ``edge`` (chosen at the first or last candidate of a grid of more than one)."""
    parents = runs[runs.kind != "derived"]
    mean_val = parents.groupby(["experiment", "target", "parent", "lr"], as_index=False).val_accuracy.mean()
    mean_val = mean_val.sort_values(["experiment", "target", "parent", "val_accuracy", "lr"],
                                    ascending=[True, True, True, False, True])
    chosen = mean_val.drop_duplicates(["experiment", "target", "parent"])[["experiment", "target", "parent", "lr"]]
    chosen = chosen.assign(selected=True)
    out = runs.merge(chosen, on=["experiment", "target", "parent", "lr"], how="left")
    out["selected"] = out.selected.fillna(False).astype(bool)
    out["edge"] = out.selected & (out.grid_size > 1) & ((out.lr_index == 0) | (out.lr_index == out.grid_size - 1))
    return out


def selected_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% half-width over seeds of every metric at the selected lr."""
    rows = []
    chosen = runs[runs.selected]
    for (experiment, target, strategy), group in chosen.groupby(["experiment", "target", "strategy"], sort=False):
        row = {"experiment": experiment, "target": target, "strategy": strategy, "kind": group.kind.iloc[0],
               "lr": group.lr.iloc[0], "edge": bool(group.edge.iloc[0]), "seeds": len(group)}
        for metric in METRICS:
            values = group[metric].dropna() if metric in group else pd.Series(dtype=float)
            if len(values):
                row[metric], row[f"{metric}_ci"] = mean_ci(values.tolist())
        rows.append(row)
    columns = ["experiment", "target", "strategy", "kind", "lr", "edge", "seeds",
               *(f"{m}{suffix}" for m in METRICS for suffix in ("", "_ci"))]
    return pd.DataFrame(rows).reindex(columns=columns)


def gates(suite: Suite, runs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per target: best pretrained strategy's mean test accuracy against the best of scratch and
    pixel (the transfer gate, margin ``Experiment.gate_margin``), and the source gate."""
    rows = []
    for experiment in suite.experiments:
        for target in experiment.targets:
            part = table[(table.experiment == experiment.name) & (table.target == target.name)]
            if part.empty:
                continue
            pretrained = part[part.kind.isin(PRETRAINED_KINDS)].dropna(subset=["test_accuracy"])
            baselines = part[part.strategy.str.contains("scratch|pixel")].dropna(subset=["test_accuracy"])
            if pretrained.empty or baselines.empty:  # an unfinished suite: no gate yet
                continue
            best, baseline = pretrained.loc[pretrained.test_accuracy.idxmax()], baselines.loc[baselines.test_accuracy.idxmax()]
            sources = runs[(runs.experiment == experiment.name) & runs.source_accuracy.notna()]
            source_accuracy = float(sources.source_accuracy.iloc[0]) if len(sources) else math.nan
            source_ok = math.isnan(source_accuracy) or source_accuracy >= experiment.source.min_accuracy
            margin = float(best.test_accuracy - baseline.test_accuracy)
            rows.append({"experiment": experiment.name, "target": target.name, "best_pretrained": best.strategy,
                         "best_pretrained_accuracy": best.test_accuracy, "best_baseline": baseline.strategy,
                         "best_baseline_accuracy": baseline.test_accuracy, "margin": margin,
                         "required_margin": experiment.gate_margin, "transfer_ok": margin >= experiment.gate_margin,
                         "source_accuracy": source_accuracy, "source_min_accuracy": experiment.source.min_accuracy,
                         "source_ok": source_ok})
    return pd.DataFrame(rows)


def verdicts(suite: Suite, runs: pd.DataFrame, gate_table: pd.DataFrame) -> pd.DataFrame:
    """One row per hypothesis: paired difference over seeds at each side's selected lr, 95%
    interval, p, Holm-adjusted p across the suite, verdict."""
    rows = []
    chosen = runs[runs.selected]
    for h in suite.hypotheses:
        part = chosen[(chosen.experiment == h.experiment) & (chosen.target == h.target)]
        sides = [part[part.strategy == name].set_index("seed")[h.metric].dropna() for name in (h.better, h.worse)]
        seeds = sorted(set(sides[0].index) & set(sides[1].index))
        gate = gate_table[(gate_table.experiment == h.experiment) & (gate_table.target == h.target)]
        gate_ok = bool(len(gate) and gate.transfer_ok.iloc[0] and gate.source_ok.iloc[0])
        row = {"hypothesis": h.name, "mirrors": h.mirrors, "comparison": h.comparison, "metric": h.metric,
               "experiment": h.experiment, "target": h.target, "seeds": len(seeds), "min_effect": h.min_effect,
               "gate_ok": gate_ok, "published": h.published}
        if len(seeds) >= 2:
            d = paired_difference(sides[0][seeds].tolist(), sides[1][seeds].tolist())
            row.update(effect=d.effect, ci_low=d.ci_low, ci_high=d.ci_high, p=d.p)
        else:
            row.update(effect=math.nan, ci_low=math.nan, ci_high=math.nan, p=math.nan)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    tested = frame.p.notna()
    frame["p_holm"] = math.nan
    frame.loc[tested, "p_holm"] = holm(frame.p[tested].tolist())
    frame["verdict"] = [verdict(r.effect, r.p_holm, r.min_effect, r.gate_ok) for r in frame.itertuples()]
    columns = ["hypothesis", "mirrors", "comparison", "metric", "effect", "ci_low", "ci_high", "p_holm", "verdict",
               "p", "min_effect", "seeds", "experiment", "target", "gate_ok", "published"]
    return frame[columns]


def matched_forgetting(runs: pd.DataFrame) -> pd.DataFrame:
    """Retention (precise BN) at a matched target accuracy, per (experiment, target, strategy):
    each fine-tuned strategy's (mean test accuracy, mean retention) points over its lr grid, linear
    interpolation at the matched level: the middle of the accuracy interval every strategy's grid
    spans (from the highest of their lowest to the lowest of their best mean accuracies), or, when
    the ranges do not overlap, the lowest best; nan outside a strategy's range."""
    rows = []
    tuned = runs[(runs.kind == "finetune") & runs.retention_precise_bn.notna()]
    for (experiment, target), part in tuned.groupby(["experiment", "target"], sort=False):
        points = part.groupby(["strategy", "lr"], sort=False)[["test_accuracy", "retention_precise_bn",
                                                                "retention_weights_only"]].mean().reset_index()
        spans = points.groupby("strategy").test_accuracy.agg(["min", "max"])
        low, high = spans["min"].max(), spans["max"].min()
        level = (low + high) / 2 if low <= high else high
        for strategy, curve in points.groupby("strategy", sort=False):
            curve = curve.sort_values("test_accuracy")
            inside = curve.test_accuracy.min() <= level <= curve.test_accuracy.max()
            value = float(np.interp(level, curve.test_accuracy, curve.retention_precise_bn)) if inside else math.nan
            rows.append({"experiment": experiment, "target": target, "strategy": strategy,
                         "matched_test_accuracy": level, "retention_precise_bn_at_match": value})
    return pd.DataFrame(rows)


# --- Writing -------------------------------------------------------------------------------------


def _fmt(value: Any, ci: Any = None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        text = f"{value:.{digits}f}"
        if ci is not None and not (isinstance(ci, float) and math.isnan(ci)):
            text += f" ± {ci:.{digits}f}"
        return text
    return str(value)


def _markdown(frame: pd.DataFrame, columns: Mapping[str, str]) -> str:
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _strategy_table(part: pd.DataFrame) -> str:
    metrics = [m for m in ("test_accuracy", "ood_accuracy", "retention_precise_bn", "retention_weights_only",
                           "ood_cka", "still_improving") if m in part and part[m].notna().any()]
    head = ["strategy", "lr (selected)", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in part.iterrows():
        lr = f"{row.lr:g}" + (" (edge)" if row.edge else "") if row.kind != "derived" else f"{row.lr:g} (parent's)"
        cells = [row.strategy, lr]
        for metric in metrics:
            cells.append(_fmt(row.get(metric), row.get(f"{metric}_ci")) if metric != "still_improving"
                         else _fmt(row.get(metric), digits=2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_forgetting(runs: pd.DataFrame, matched: pd.DataFrame, out: Path) -> list[str]:
    names = []
    tuned = runs[(runs.kind == "finetune") & runs.retention_precise_bn.notna()]
    for (experiment, target), part in tuned.groupby(["experiment", "target"], sort=False):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        points = part.groupby(["strategy", "lr"], sort=False)[["test_accuracy", "retention_precise_bn"]].mean()
        for strategy, curve in points.reset_index().groupby("strategy", sort=False):
            curve = curve.sort_values("test_accuracy")
            ax.plot(curve.test_accuracy, curve.retention_precise_bn, marker="o", label=strategy)
        level = matched[(matched.experiment == experiment) & (matched.target == target)].matched_test_accuracy
        if len(level):
            ax.axvline(float(level.iloc[0]), color="grey", linestyle="--", linewidth=1, label="matched accuracy")
        ax.set(xlabel="target test accuracy (mean over seeds)", ylabel="source retention (precise BN)",
               title=f"{experiment} / {target}: forgetting against accuracy, one point per lr")
        ax.legend(fontsize=7)
        names.append(_save_figure(fig, out, f"forgetting_{experiment}_{target}.png"))
    return names


def _save_figure(fig: Any, out: Path, name: str) -> str:
    """Write ``fig`` to ``out / name`` (PNG, 110 dpi), close it, return ``name``."""
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _plot_wise(table: pd.DataFrame, out: Path) -> list[str]:
    names = []
    wise = table[table.strategy.str.contains(r"\+wise_") & table.ood_accuracy.notna()]
    for experiment, part in wise.groupby("experiment", sort=False):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        part = part.assign(parent=part.strategy.str.split("+").str[0],
                           alpha=part.strategy.str.split("_").str[-1].astype(float))
        for parent, curve in part.groupby("parent", sort=False):
            curve = curve.sort_values("alpha")
            ax.plot(curve.test_accuracy, curve.ood_accuracy, marker="o", label=f"{parent}: alpha 0 -> 1")
        ax.set(xlabel="ID test accuracy", ylabel="OOD accuracy", title=f"{experiment}: WiSE-FT interpolation")
        ax.legend(fontsize=8)
        names.append(_save_figure(fig, out, f"wise_{experiment}.png"))
    return names


def write_reports(out: Path, suite: Suite) -> None:
    """Write every report of ``out/runs.jsonl`` into ``out``."""
    records = read_runs(out / "runs.jsonl")
    runs = runs_frame(suite, records)
    environment_path = out / "environment.json"
    environment = json.loads(environment_path.read_text()) if environment_path.exists() else {}
    if runs.empty:
        atomic_write(out / "summary.md", f"# Suite `{suite.name}`\n\nNo finished runs yet.\n")
        return
    runs = select_lr(runs)
    table = selected_table(runs)
    gate_table = gates(suite, runs, table)
    if gate_table.empty:
        gate_table = pd.DataFrame(columns=["experiment", "target", "transfer_ok", "source_ok"])
    verdict_table = verdicts(suite, runs, gate_table)
    matched = matched_forgetting(runs)
    for name, frame in (("runs.csv", runs), ("selected.csv", table), ("gates.csv", gate_table),
                        ("verdicts.csv", verdict_table), ("forgetting.csv", matched)):
        atomic_write(out / name, frame.to_csv(index=False, float_format="%.6g"))
    plots = _plot_forgetting(runs, matched, out) + _plot_wise(table, out)
    failed = [r for r in records if r.get("status") == "failed"]
    parents = runs[runs.kind.isin(("finetune", "scratch"))]
    lines = [
        f"# Suite `{suite.name}`",
        "",
        suite.description,
        "",
        "## Verdicts",
        "",
        "Paired difference `better - worse` over seeds, each side at its validation-selected lr; 95% Student-t "
        "interval; p of the paired t-test, Holm-adjusted across the suite (alpha 0.05). A verdict needs the "
        "target's transfer and source gates.",
        "",
        _markdown(verdict_table, {"hypothesis": "hypothesis", "mirrors": "mirrors", "comparison": "comparison",
                                  "target": "target", "metric": "metric", "effect": "effect", "ci_low": "ci low",
                                  "ci_high": "ci high", "min_effect": "min effect", "p_holm": "p (Holm)",
                                  "verdict": "verdict", "published": "published"}),
        "",
        "## Gates",
        "",
        _markdown(gate_table, {"experiment": "experiment", "target": "target", "best_pretrained": "best pretrained",
                               "best_pretrained_accuracy": "acc", "best_baseline": "best baseline",
                               "best_baseline_accuracy": "acc ", "margin": "margin",
                               "required_margin": "required", "transfer_ok": "transfer ok",
                               "source_accuracy": "source acc", "source_min_accuracy": "source gate",
                               "source_ok": "source ok"}),
        "",
        "## Strategies at their selected lr (mean ± 95% half-width over seeds)",
    ]
    for experiment in suite.experiments:
        for target in experiment.targets:
            part = table[(table.experiment == experiment.name) & (table.target == target.name)]
            if part.empty:
                continue
            lines += ["", f"### {experiment.name} / {target.name}", "", _strategy_table(part)]
    lines += ["", "## Forgetting at matched target accuracy", "",
              _markdown(matched, {"experiment": "experiment", "target": "target", "strategy": "strategy",
                                  "matched_test_accuracy": "matched test acc",
                                  "retention_precise_bn_at_match": "retention (precise BN) at match"}), ""]
    lines += [f"![{name}]({name})" for name in plots]
    improving = parents.still_improving.mean() if len(parents) else math.nan
    lines += ["", "## Convergence", "",
              f"Runs still improving at the end of their budget: {_fmt(float(improving), digits=3)} of "
              f"{len(parents)} trained runs (all lrs); at the selected lrs: "
              f"{_fmt(float(parents[parents.selected].still_improving.mean()), digits=3)}.", ""]
    lines += ["## Failed cells", ""] + ([f"- {r.get('experiment')} / {r.get('target')} / {r.get('strategy')} / seed "
                                         f"{r.get('seed')} / lr {r.get('lr')}: {r.get('error')}" for r in failed]
                                        or ["none"])
    versions = environment.get("versions", {})
    lines += ["", "## Environment and how to regenerate", "",
              f"Regenerate with `{environment.get('command', f'python -m benchmarks run --suite {suite.name}')}` "
              f"(reports alone: `python -m benchmarks report --suite {suite.name} --out <this folder>`).", "",
              f"- {environment.get('device_name', '?')}, {environment.get('workers', '?')} worker process(es) of "
              f"{environment.get('threads_per_cell', '?')} torch thread(s) per cell; wall time "
              f"{_fmt(environment.get('wall_seconds'), digits=0)} s for {environment.get('computed', '?')} cells "
              f"(1/5/15-minute load average at the start {environment.get('load_average_start', '?')}, at the end "
              f"{environment.get('load_average', '?')}: other processes share the cores)",
              "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
              f"- git {environment.get('git', {}).get('commit', '?')}, python {environment.get('python', '?')}, "
              f"{environment.get('date', '?')}", ""]
    atomic_write(out / "summary.md", "\n".join(lines))


README_START, README_END = "<!-- verdicts:start -->", "<!-- verdicts:end -->"


def readme_table(verdict_table: pd.DataFrame) -> str:
    """The verdict table as the README shows it (from a verdicts.csv)."""
    return _markdown(verdict_table, {"hypothesis": "hypothesis", "mirrors": "mirrors", "comparison": "comparison",
                                     "target": "target", "metric": "metric", "effect": "effect",
                                     "ci_low": "ci low", "ci_high": "ci high", "p_holm": "p (Holm)",
                                     "verdict": "verdict", "published": "published"})


def write_readme_table(readme: Path, verdicts_csv: Path) -> None:
    """Replace the block between README_START and README_END of ``readme`` by the table of ``verdicts_csv``.

    Raises:
        ValueError: the README has no such block.
    """
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block")
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    table = readme_table(pd.read_csv(verdicts_csv))
    atomic_write(readme, f"{head}{README_START}\n{table}\n{README_END}{tail}")
