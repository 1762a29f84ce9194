"""Which runs belong to a suite, which lr each strategy gets, and the cells the guards add.

* :func:`runs_frame`: one row per successful run of a suite (base grid, grid extensions and budget
  checks), plus one per WiSE-FT variant.
* :func:`select_lr`: per (experiment, target, strategy) the lr with the best mean validation
  accuracy over seeds; whether it sits at an edge of the lrs run, and whether that edge is capped.
* :func:`grid_extensions`: a choice at an edge extends the grid by one candidate beyond it (the
  grid's own ratio), up to ``EXTENSION_CAP`` candidates per side; the runner repeats until every
  choice is interior or capped.
* :func:`budget_check_cells`: both sides of every confirmatory hypothesis at their selected lr,
  at ``BUDGET_CHECK_FACTOR`` times the budget, on the first ``BUDGET_CHECK_SEEDS`` seeds (does the
  verdict depend on the budget?).

Example:
    >>> extend((0.001, 0.003, 0.009), "low"), extend((0.001, 0.003, 0.009), "high")
    (0.000333, 0.027)
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .suites import Cell, Experiment, Suite

#: At most this many candidates are added beyond each end of a strategy's base grid.
EXTENSION_CAP = 2
#: The budget check runs the selected cells at this many times the steps.
BUDGET_CHECK_FACTOR = 2
#: ... on this many seeds (the experiment's first).
BUDGET_CHECK_SEEDS = 2
#: Scalar metrics the runner records per run, in table order (``ood_accuracy_<corruption>`` too).
RUN_METRICS = ("test_accuracy", "ood_accuracy", "val_accuracy", "retention_precise_bn", "retention_weights_only",
               "backward_transfer", "ood_cka", "test_cka", "id_cka", "val_auc", "val_at_quarter",
               "probe_C", "probe_train_ce", "train_seconds", "wall_seconds")
#: Per-run curves kept in the frame: ``val_accuracy`` at ``step``; ``test_accuracy`` and
#: ``retention_precise_bn`` at ``forgetting_step``.
CURVES = ("step", "val_accuracy", "forgetting_step", "test_accuracy", "retention_precise_bn")


def extend(grid: Sequence[float], side: str) -> float:
    """The next candidate beyond the ``"low"`` or ``"high"`` end of a sorted ``grid`` (of at least
    2 values), at the ratio of its two values at that end, to 3 significant digits."""
    if side == "low":
        return float(f"{grid[0] * grid[0] / grid[1]:.3g}")
    return float(f"{grid[-1] * grid[-1] / grid[-2]:.3g}")


def _template(config: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in ("lr", "budget")}, sort_keys=True, default=str)


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def cell_template(config: Mapping[str, Any]) -> str:
    """What a cell's config says but for its lr and budget: the runs of one strategy on one target
    and seed share it (canonical JSON)."""
    return _template(_canonical(config))


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else math.nan


def runs_frame(suite: Suite, records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per successful run of the suite's cells, matched by config (any lr; the
    experiment's budget or a multiple of it: ``budget_factor``), plus one per WiSE-FT variant
    (kind ``derived``, strategy ``<parent>+wise_<alpha>``, the parent's lr)."""
    templates: dict[str, Cell] = {}
    for cell in suite.cells():
        templates.setdefault(cell_template(cell.config()), cell)
    rows = []
    for record in records:
        config = record.get("config") or {}
        cell = templates.get(_template(config))
        if cell is None or record.get("status") != "ok":
            continue
        steps = (config.get("budget") or {}).get("steps", 0)
        factor = steps / cell.experiment.budget.steps
        base = {"experiment": cell.experiment.name, "target": cell.target.name, "strategy": cell.strategy.name,
                "kind": cell.strategy.kind, "seed": cell.seed, "lr": float(config["lr"]), "parent": cell.strategy.name,
                "budget_factor": int(factor) if float(factor).is_integer() else factor,
                "source_seed": (config.get("source") or {}).get("seed")}
        scalars = {m: _number(record.get(m)) for m in RUN_METRICS}
        scalars.update({k: _number(v) for k, v in record.items() if k.startswith("ood_accuracy_")})
        curve = record.get("curve") or {}
        rows.append({**base, **scalars, **{f"curve_{name}": curve.get(name) for name in CURVES},
                     "source_accuracy": (record.get("source_model") or {}).get("source_accuracy")})
        for name, variant in (record.get("variants") or {}).items():
            rows.append({**base, "strategy": name, "kind": "derived",
                         **{k: _number(v) for k, v in variant.items()}})
    return pd.DataFrame(rows)


def select_lr(runs: pd.DataFrame) -> pd.DataFrame:
    """Mark each run's selection: per (experiment, target, parent strategy), among runs at the
    experiment's own budget, the lr with the best mean validation accuracy over seeds (ties: the
    smaller lr); derived rows follow their parent's choice. Adds ``selected``, ``edge`` (the
    choice is the lowest or highest lr run, of more than one) and ``capped`` (an edge the grid may
    not extend further: ``EXTENSION_CAP`` candidates already added on that side)."""
    main = runs[(runs.budget_factor == 1) & (runs.kind != "derived")]
    mean_val = main.groupby(["experiment", "target", "parent", "lr"], as_index=False).val_accuracy.mean()
    mean_val = mean_val.sort_values(["experiment", "target", "parent", "val_accuracy", "lr"],
                                    ascending=[True, True, True, False, True])
    chosen = mean_val.drop_duplicates(["experiment", "target", "parent"])[["experiment", "target", "parent", "lr"]]
    spans = main.groupby(["experiment", "target", "parent"]).lr.agg(["min", "max", "nunique"]).reset_index()
    chosen = chosen.merge(spans, on=["experiment", "target", "parent"])
    chosen["edge"] = (chosen["nunique"] > 1) & ((chosen.lr == chosen["min"]) | (chosen.lr == chosen["max"]))
    chosen = chosen.rename(columns={"min": "lr_min", "max": "lr_max", "nunique": "lrs_run"})
    out = runs.merge(chosen.rename(columns={"lr": "selected_lr"}), on=["experiment", "target", "parent"], how="left")
    out["selected"] = (out.lr == out.selected_lr) & (out.budget_factor == 1)
    out["edge"] = out.edge.fillna(False).astype(bool) & out.selected
    return out


def _extensions_run(experiment: Experiment, target: str, strategy_name: str, lrs: Sequence[float]) -> dict[str, int]:
    base = experiment.grid(experiment.strategy(strategy_name), target)
    return {"low": sum(lr < min(base) for lr in set(lrs)), "high": sum(lr > max(base) for lr in set(lrs))}


def mark_capped(suite: Suite, runs: pd.DataFrame) -> pd.DataFrame:
    """``select_lr``'s frame with ``capped``: a selected edge with ``EXTENSION_CAP`` candidates
    already beyond the base grid on that side (or a single-candidate grid)."""
    capped = []
    for row in runs.itertuples():
        if not (row.selected and row.edge and row.kind != "derived"):
            capped.append(False)
            continue
        experiment = suite.experiment(row.experiment)
        part = runs[(runs.experiment == row.experiment) & (runs.target == row.target) & (runs.parent == row.parent)
                    & (runs.budget_factor == 1)]
        done = _extensions_run(experiment, row.target, row.parent, part.lr.tolist())
        side = "low" if row.lr == part.lr.min() else "high"
        capped.append(done[side] >= EXTENSION_CAP)
    return runs.assign(capped=capped)


def grid_completions(suite: Suite, runs: pd.DataFrame) -> list[Cell]:
    """The cells that put every lr already run for a strategy (at the experiment's own budget) on
    every seed of the experiment it runs on (:meth:`benchmarks.suites.Experiment.seeds_of`): a run whose seeds grew after its grid was extended (a tuning stage
    given more seeds) would otherwise compare lrs by means over different seeds."""
    if runs.empty:
        return []
    main = runs[(runs.budget_factor == 1) & (runs.kind != "derived")]
    cells = []
    for (experiment_name, target_name, strategy_name), part in main.groupby(["experiment", "target", "parent"]):
        experiment = suite.experiment(experiment_name)
        target = next(t for t in experiment.targets if t.name == target_name)
        strategy = experiment.strategy(strategy_name)
        for lr in sorted(set(part.lr)):
            have = set(part[part.lr == lr].seed)
            cells += [Cell(experiment, target, strategy, seed, lr)
                      for seed in experiment.seeds_of(target_name, strategy_name) if seed not in have]
    return cells


def grid_extensions(suite: Suite, runs: pd.DataFrame) -> list[Cell]:
    """The cells that extend every grid whose selected lr sits at an uncapped edge: one candidate
    beyond that edge, for every seed the strategy runs on; and the cells that complete every lr
    already run on every seed (:func:`grid_completions`)."""
    if runs.empty:
        return []
    completions = grid_completions(suite, runs)
    chosen = mark_capped(suite, select_lr(runs))
    chosen = chosen[chosen.selected & chosen.edge & ~chosen.capped & (chosen.kind != "derived")]
    cells = []
    for (experiment_name, target_name, strategy_name), part in chosen.groupby(["experiment", "target", "parent"]):
        experiment = suite.experiment(experiment_name)
        lrs = sorted(set(runs[(runs.experiment == experiment_name) & (runs.target == target_name)
                              & (runs.parent == strategy_name) & (runs.budget_factor == 1)].lr))
        side = "low" if part.lr.iloc[0] == lrs[0] else "high"
        lr = extend(lrs, side)
        target = next(t for t in experiment.targets if t.name == target_name)
        cells += [Cell(experiment, target, experiment.strategy(strategy_name), seed, lr)
                  for seed in experiment.seeds_of(target_name, strategy_name)]
    return completions + cells


def budget_check_cells(suite: Suite, runs: pd.DataFrame) -> list[Cell]:
    """Both sides of every confirmatory hypothesis at their selected lr with ``BUDGET_CHECK_FACTOR``
    times the budget, on the experiment's first ``BUDGET_CHECK_SEEDS`` seeds (derived sides run
    their parent)."""
    if runs.empty:
        return []
    chosen = select_lr(runs)
    chosen = chosen[chosen.selected]
    cells: dict[str, Cell] = {}
    for h in suite.hypotheses:
        if h.exploratory:
            continue
        experiment = suite.experiment(h.experiment)
        longer = dataclasses.replace(experiment, budget=experiment.budget.scaled(BUDGET_CHECK_FACTOR))
        target = next(t for t in experiment.targets if t.name == h.target)
        for side in (h.better, h.worse):
            parent = side.split("+")[0]
            strategy = experiment.strategy(parent)
            if strategy.kind not in ("finetune", "scratch"):
                continue
            lr = chosen[(chosen.experiment == h.experiment) & (chosen.target == h.target)
                        & (chosen.parent == parent)].lr
            if lr.empty:
                continue
            for seed in experiment.seeds[:BUDGET_CHECK_SEEDS]:
                cell = Cell(longer, target, strategy, seed, float(lr.iloc[0]))
                cells.setdefault(cell.label + f" / x{BUDGET_CHECK_FACTOR}", cell)
    return list(cells.values())
