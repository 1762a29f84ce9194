"""Reports of a suite's runs.jsonl: summary.csv, summary.md and PNG plots.

* ``summary.csv``: one row per (task, backbone, strategy): number of seeds, and for every metric
  the mean and the half-width of its 95% Student-t interval over seeds.
* ``summary.md``: per task, backbone x strategy tables of final target accuracy, retention, backward
  transfer, AUC and steps to 95% (best per backbone in bold), the budgets, the best strategies, and
  the failed cells; it says the command that regenerates it.
* ``pareto_<task>.png``: target accuracy against source retention, one panel per backbone, with the
  Pareto front; ``curves_<task>.png``: validation accuracy against steps.
"""

from __future__ import annotations

import json
import math
from io import BytesIO
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import pandas as pd  # noqa: E402

from . import metrics  # noqa: E402
from .store import atomic_write, read_runs  # noqa: E402
from .suites import IMAGENET, Suite  # noqa: E402

#: (record field, column title, higher is better) of the summary.md tables.
TABLE_METRICS = (
    ("final_target_accuracy", "target acc", True),
    ("retention", "retention", True),
    ("retention_source_bn_stats", "retention, source BN stats", True),
    ("backward_transfer", "BWT", True),
    ("auc", "AUC", True),
    ("steps_to_95", "steps to 95%", False),
)
#: Further per-run numbers aggregated into summary.csv.
CSV_METRICS = ("best_val_accuracy", "seconds_to_95", "source_accuracy_after", "cka_mean", "weight_distance_mean",
               "wall_seconds", "train_seconds", "steps_done", "peak_memory_mb")
MARKERS = "osD^vP*X<>hp"
#: tab10 and two more, so that the 11 strategies of a suite all differ in colour.
COLORS = (*plt.get_cmap("tab10").colors, (0.0, 0.0, 0.0), (0.72, 0.53, 0.04))


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def suite_records(suite: Suite, records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The records of the suite's cells (matched by config), in cell order; the latest per cell."""
    by_config: dict[str, dict[str, Any]] = {}
    for record in records:
        config = json.dumps(record.get("config"), sort_keys=True)
        previous = by_config.get(config)
        if previous is None or record.get("finished_at", "") >= previous.get("finished_at", ""):
            by_config[config] = dict(record)
    ordered = []
    for cell in suite.cells():
        record = by_config.get(json.dumps(_canonical(cell.config()), sort_keys=True))
        if record is not None:
            ordered.append(record)
    return ordered


def runs_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per successful run with its scalar metrics."""
    rows = []
    for record in records:
        if record.get("status") != "ok":
            continue
        row = {key: record[key] for key in ("task", "backbone", "strategy", "seed", "source_ok")}
        for field, _, _ in TABLE_METRICS:
            row[field] = record[field]
        for field in CSV_METRICS:
            row[field] = record.get(field)
        row["cka_mean"] = _mean(record["cka"].values())
        row["weight_distance_mean"] = _mean(record["weight_distance"].values())
        rows.append(row)
    columns = ["task", "backbone", "strategy", "seed", "source_ok", *(f for f, _, _ in TABLE_METRICS), *CSV_METRICS]
    return pd.DataFrame(rows, columns=columns)


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def summarize(runs: pd.DataFrame, order: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Per (task, backbone, strategy): n seeds, all sources ok, mean and 95% half-width of each metric;
    rows in suite order."""
    rows = []
    for (task, backbone, strategy), group in runs.groupby(["task", "backbone", "strategy"], sort=False):
        row: dict[str, Any] = {"task": task, "backbone": backbone, "strategy": strategy, "n": len(group),
                               "source_ok": bool(group["source_ok"].all())}
        for field in [f for f, _, _ in TABLE_METRICS] + list(CSV_METRICS):
            values = [float(v) for v in group[field] if v is not None and math.isfinite(float(v))]
            row[field], row[f"{field}_ci95"] = metrics.mean_ci95(values) if values else (math.nan, math.nan)
        rows.append(row)
    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    for column in ("task", "backbone", "strategy"):
        summary[column] = pd.Categorical(summary[column], categories=order[column], ordered=True)
    return summary.sort_values(["task", "backbone", "strategy"]).reset_index(drop=True)


def _suite_order(suite: Suite) -> dict[str, list[str]]:
    order: dict[str, list[str]] = {"task": [], "backbone": [], "strategy": []}
    for grid in suite.grids:
        for column, names in (("task", [t.name for t in grid.tasks]), ("backbone", grid.backbones),
                              ("strategy", [s.name for s in grid.strategies])):
            order[column] += [name for name in names if name not in order[column]]
    return order


def _format(mean: float, half_width: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}f}"
    return text + (f" ± {half_width:.{digits}f}" if math.isfinite(half_width) else "")


def _table(summary: pd.DataFrame) -> list[str]:
    """One markdown table (backbone x strategy) of a task's summary rows; best per backbone in bold."""
    header = ["backbone", "strategy", *(title for _, title, _ in TABLE_METRICS), "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    for backbone, block in summary.groupby("backbone", sort=False, observed=True):
        best = {}
        for field, _, higher in TABLE_METRICS:
            values = block[field].dropna()
            best[field] = (values.max() if higher else values.min()) if len(values) else None
        for _, row in block.iterrows():
            cells = [str(backbone) + ("" if row["source_ok"] else " ⚠"), str(row["strategy"])]
            for field, _, _ in TABLE_METRICS:
                digits = 0 if field == "steps_to_95" else 3
                text = _format(row[field], row[f"{field}_ci95"], digits)
                cells.append(f"**{text}**" if best[field] is not None and row[field] == best[field] else text)
            cells.append(str(row["n"]))
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _best_strategies(summary: pd.DataFrame) -> list[str]:
    lines = ["| task | backbone | best target acc | best retention | best AUC |", "|---|---|---|---|---|"]
    for (task, backbone), block in summary.groupby(["task", "backbone"], sort=False, observed=True):
        picks = []
        for field in ("final_target_accuracy", "retention", "auc"):
            top = block[field].max()
            names = ", ".join(str(s) for s in block.loc[block[field] == top, "strategy"])
            picks.append(f"{names} ({top:.3f})")
        lines.append(f"| {task} | {backbone} | " + " | ".join(picks) + " |")
    return lines


def _identical_runs(runs: pd.DataFrame) -> list[str]:
    """Strategies whose runs came out identical, seed by seed, on a (task, backbone): e.g. two recipes
    that train the same parameters within the budget."""
    fields = ["seed", "final_target_accuracy", "retention", "auc"]
    lines = []
    for (task, backbone), block in runs.groupby(["task", "backbone"], sort=False):
        signatures: dict[tuple, list[str]] = {}
        for strategy, group in block.groupby("strategy", sort=False):
            signature = tuple(map(tuple, group.sort_values("seed")[fields].round(12).to_numpy().tolist()))
            signatures.setdefault(signature, []).append(str(strategy))
        lines += [f"- {task} / {backbone}: {' = '.join(names)}" for names in signatures.values() if len(names) > 1]
    return lines


def _budgets(suite: Suite, records: Sequence[Mapping[str, Any]]) -> list[str]:
    source_accuracy: dict[tuple[str, str], float] = {}
    for record in records:
        info = record.get("source_model") or {}
        if info.get("source_accuracy") is not None:
            source_accuracy[(record["backbone"], record["config"]["task"]["source"])] = info["source_accuracy"]
    lines = ["| backbones | tasks (source → target) | seeds | steps | batch | image px | lr (head) | eval every |"
             " source model |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for grid in suite.grids:
        budget = grid.budget
        tasks = ", ".join(f"{t.name} ({t.source} → {t.target})" for t in grid.tasks)
        if grid.pretraining is not None:
            recipe = grid.pretraining
            accuracies = ", ".join(f"{b}/{s}: {a:.3f}" for (b, s), a in source_accuracy.items() if b in grid.backbones)
            source = (f"pretrained here: {recipe.steps} steps × {recipe.batch_size}, AdamW lr {recipe.lr:g} cosine;"
                      f" needs source acc ≥ {recipe.min_accuracy:g} (got {accuracies or 'n/a'})")
        else:
            source = (f"ImageNet weights; forgetting on {grid.probes.num_crops} natural-image probes at "
                      f"{grid.probes.image_size} px")
        lines.append(f"| {', '.join(grid.backbones)} | {tasks} | {len(grid.seeds)} | {budget.steps} | "
                     f"{budget.batch_size} | {budget.image_size} | {budget.lr:g} | {budget.eval_every} | {source} |")
    return lines


def regenerate_command(suite: Suite, out: Path) -> tuple[str, str]:
    """The commands that rebuild ``out``: everything (a run), and the reports only."""
    default = Path("results") / suite.name
    suffix = "" if Path(out) == default or Path(out).resolve() == default.resolve() else f" --out {out}"
    return (f"python -m benchmarks run --suite {suite.name}{suffix}",
            f"python -m benchmarks report --suite {suite.name}{suffix}")


def _environment_lines(out: Path, records: Sequence[Mapping[str, Any]]) -> list[str]:
    path = out / "environment.json"
    if not path.exists():
        return ["Environment: not recorded."]
    env = json.loads(path.read_text())
    lib = env.get("versions", {})
    git = env.get("git", {})
    commit = (git.get("commit") or "unknown")[:12] + (" (with uncommitted changes)" if git.get("dirty") else "")
    threads = f", {env.get('cpu_threads')} CPU threads" if env.get("device") == "cpu" else ""
    invocations = env.get("invocations") or [env]
    history = "; ".join(f"`{i.get('command')}` on {i.get('date')}: {i.get('wall_seconds') or math.nan:.0f} s, "
                        f"{i.get('computed')} cells computed, {i.get('skipped')} reused" for i in invocations[-5:])
    cell_seconds = sum(r.get("wall_seconds") or 0 for r in records)
    pretraining = sum(r["source_model"]["seconds"] for r in records
                      if r.get("status") == "ok" and r["source_model"].get("built_now"))
    return [
        f"Environment: torch {lib.get('torch')}, timm {lib.get('timm')}, lrgroups {lib.get('lrgroups')}; "
        f"{env.get('device')} ({env.get('device_name')}{threads}); commit {commit}. See environment.json.",
        "",
        f"Time: the cells took {cell_seconds:.0f} s in all (source pretraining included: {pretraining:.0f} s). "
        f"Invocations: {history}.",
    ]


def write_markdown(out: Path, suite: Suite, summary: pd.DataFrame, runs: pd.DataFrame,
                   records: Sequence[Mapping[str, Any]]) -> None:
    run_command, report_command = regenerate_command(suite, out)
    failed = [r for r in records if r.get("status") != "ok"]
    ok = len(records) - len(failed)
    imagenet = [g for g in suite.grids if g.probes is not None]
    lines = [
        f"# Benchmark suite `{suite.name}`",
        "",
        suite.description,
        "",
        f"Regenerate everything with `{run_command}` (computes only the cells missing from runs.jsonl, then"
        f" rewrites every report); tables and plots only: `{report_command}`.",
        "",
        *_environment_lines(out, records),
        "",
        f"Cells: {len(suite.cells())} in the suite, {ok} done, {len(failed)} failed.",
        "",
        "How to read: mean ± half-width of the 95% Student-t interval over seeds (n seeds; no interval with "
        "one). Target acc: top-1 on the target test half after the budget (early-stopped runs: their restored "
        "best weights). Retention = source accuracy after / before fine-tuning with the source head "
        "re-attached; BWT = after − before. Retention, source BN stats: the same with the source model's "
        "BatchNorm running statistics put back, so only the weights carry the fine-tuning (equal to retention "
        "for models without BatchNorm, such as the ViT). AUC: mean validation accuracy over the step budget. Steps to 95%:"
        " first evaluation reaching 95% of the run's best validation accuracy. **Bold**: the best strategy of "
        "that backbone in that column (highest; fewest steps). ⚠: the source backbone missed its required "
        "source accuracy.",
    ]
    if imagenet:
        lines += ["", "For `efficientnet_lite0` the source is ImageNet: its \"source accuracy\" is top-1 agreement "
                  "with the original model's ImageNet predictions on natural-image probes (1 before fine-tuning), "
                  "so retention = agreement and BWT = agreement − 1."]
    lines += ["", "## Budgets", "", "Every strategy gets the same steps, batch and lr (AdamW, constant, the head's "
              "lr; chosen once a priori, not tuned per strategy). See `benchmarks/suites.py`.", "",
              *_budgets(suite, records)]
    if not summary.empty:
        for task, block in summary.groupby("task", sort=False, observed=True):
            spec = next(t for g in suite.grids for t in g.tasks if t.name == task)
            source = "ImageNet" if spec.source == IMAGENET else spec.source
            lines += ["", f"## {task}: {source} → {spec.target}", "", *_table(block),
                      "", f"![target accuracy vs retention](pareto_{task}.png)", f"![learning curves](curves_{task}.png)"]
        lines += ["", "## Best strategy per backbone", "", *_best_strategies(summary)]
        identical = _identical_runs(runs)
        if identical:
            lines += ["", "## Identical runs", "", "These strategies gave the same numbers on every seed (they trained "
                      "the same parameters the same way within the budget, e.g. plateau unfreezing starts with the head "
                      "and the last block, which is what surgical_last trains, and no plateau came in time):", "",
                      *identical]
    if failed:
        lines += ["", "## Failed cells", "", "| backbone | task | strategy | seed | error |", "|---|---|---|---|---|"]
        lines += [f"| {r['backbone']} | {r['task']} | {r['strategy']} | {r['seed']} | {r.get('error', '')} |"
                  for r in failed]
    atomic_write(out / "summary.md", "\n".join(lines) + "\n")


def _style(strategies: Sequence[str]) -> dict[str, dict[str, Any]]:
    colors = COLORS
    return {name: {"color": colors[i % len(colors)], "marker": MARKERS[i % len(MARKERS)],
                   "linestyle": "-" if i < len(colors) else "--"} for i, name in enumerate(strategies)}


def _panels(count: int) -> tuple[plt.Figure, list[plt.Axes]]:
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(max(4.2 * columns, 10.0), 3.8 * rows), squeeze=False)
    flat = list(axes.flat)
    for axis in flat[count:]:
        axis.set_visible(False)
    return figure, flat[:count]


def plot_pareto(out: Path, task: str, summary: pd.DataFrame, runs: pd.DataFrame,
                style: Mapping[str, Mapping[str, Any]]) -> None:
    """Target accuracy against retention per backbone: the mean over seeds (large markers; the
    Pareto front, both maximised, edged in black and joined by a dashed line) and each seed's run
    (small faint markers). The 95% intervals are in the tables."""
    backbones = list(summary["backbone"].unique())
    figure, axes = _panels(len(backbones))
    for axis, backbone in zip(axes, backbones):
        block = summary[summary["backbone"] == backbone].reset_index(drop=True)
        points = list(zip(block["final_target_accuracy"], block["retention"]))
        front = set(metrics.pareto_front(points))
        for index, row in block.iterrows():
            s = style[row["strategy"]]
            seeds = runs[(runs["backbone"] == backbone) & (runs["strategy"] == row["strategy"])]
            axis.scatter(seeds["retention"], seeds["final_target_accuracy"], color=s["color"], marker=s["marker"],
                         s=14, alpha=0.35, linewidths=0)
            on_front = index in front
            axis.scatter([row["retention"]], [row["final_target_accuracy"]], color=s["color"], marker=s["marker"],
                         s=70 if on_front else 45, edgecolors="black" if on_front else "none", linewidths=1.2,
                         label=row["strategy"], zorder=3)
        front_points = sorted((points[i][1], points[i][0]) for i in front)
        axis.plot([p[0] for p in front_points], [p[1] for p in front_points], color="black", linestyle="--",
                  linewidth=1, zorder=2)
        axis.set_title(str(backbone))
        axis.set_xlabel("source retention (after / before)")
        axis.set_ylabel("target accuracy (test)")
        axis.grid(alpha=0.3)
    names = [name for name in style if name in set(summary["strategy"].astype(str))]
    handles = [Line2D([], [], color=style[n]["color"], marker=style[n]["marker"], linestyle="none") for n in names]
    figure.legend(handles, names, loc="lower center", ncol=min(6, len(names)), frameon=False)
    figure.suptitle(f"{task}: target accuracy vs source retention\n"
                    "large: mean over seeds · small: each seed · edged and dashed: Pareto front", fontsize=11)
    figure.tight_layout(rect=(0, 0.1 if len(names) > 6 else 0.06, 1, 1))
    _save(figure, out / f"pareto_{task}.png")


def _padded_curve(record: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """The validation curve, held at the restored accuracy up to the budget after an early stop."""
    steps, values = list(record["curve"]["step"]), list(record["curve"]["val_accuracy"])
    budget = record["config"]["budget"]["steps"]
    if steps[-1] < budget:
        steps.append(budget)
        values.append(record["final_val_accuracy"])
    return steps, values


def plot_curves(out: Path, task: str, records: Sequence[Mapping[str, Any]], order: Sequence[str],
                style: Mapping[str, Mapping[str, Any]]) -> None:
    """Validation accuracy against steps per backbone, mean over seeds."""
    backbones = list(dict.fromkeys(r["backbone"] for r in records))
    figure, axes = _panels(len(backbones))
    for axis, backbone in zip(axes, backbones):
        for strategy in order:
            runs = [r for r in records if r["backbone"] == backbone and r["strategy"] == strategy]
            if not runs:
                continue
            curves = pd.DataFrame({i: pd.Series(*reversed(_padded_curve(r))) for i, r in enumerate(runs)})
            mean = curves.sort_index().ffill().mean(axis=1)
            s = style[strategy]
            axis.plot(mean.index, mean.values, color=s["color"], linestyle=s["linestyle"], marker=s["marker"],
                      markersize=3, linewidth=1.2, label=strategy)
        axis.set_title(str(backbone))
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("target validation accuracy")
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), frameon=False)
    figure.suptitle(f"{task}: learning curves (mean over seeds)")
    figure.tight_layout(rect=(0, 0.1 if len(labels) > 6 else 0.06, 1, 1))
    _save(figure, out / f"curves_{task}.png")


def _save(figure: plt.Figure, path: Path) -> None:
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write(path, buffer.getvalue())


def write_reports(out: Path, suite: Suite) -> pd.DataFrame:
    """Rebuild summary.csv, summary.md and the plots from ``out``/runs.jsonl; returns the summary."""
    out = Path(out)
    records = suite_records(suite, read_runs(out / "runs.jsonl"))
    ok = [r for r in records if r.get("status") == "ok"]
    order = _suite_order(suite)
    runs = runs_frame(ok)
    summary = summarize(runs, order)
    atomic_write(out / "summary.csv", summary.to_csv(index=False))
    write_markdown(out, suite, summary, runs, records)
    style = _style(order["strategy"])
    if not summary.empty:
        for task, block in summary.groupby("task", sort=False, observed=True):
            plot_pareto(out, str(task), block, runs[runs["task"] == task], style)
            plot_curves(out, str(task), [r for r in ok if r["task"] == task], order["strategy"], style)
    return summary

