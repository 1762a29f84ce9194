"""Pre-registered learning rates and seed counts: the tuning stage writes them, the confirmatory
stage reads them.

Selecting each strategy's lr inside the run that tests a hypothesis mixes "which lr won on
validation" into the effect (science review 4, sec. 1.2: the ConvNeXt and ViT forgetting verdicts
moved with the selected lr, not with the strategy). So a suite runs in two stages:

1. **Tuning** (``quick_tuning``): every strategy on its lr grid, a few seeds each with its own
   source model, grid edges extended (:mod:`benchmarks.selection`); the lr with the best validation
   accuracy pooled over the seeds is each strategy's pre-registered lr.
2. **Confirmatory** (``quick``): fresh seeds and fresh source models at those lrs only
   (:func:`benchmarks.suites.confirmatory`); a changed lr changes every cell key it touches.

:func:`register` turns a finished tuning run into the pre-registration (``benchmarks/
preregistration/<suite>.json``, versioned by the hash of its lrs and seed counts): the lrs, and
the confirmatory seeds per experiment. Each confirmatory hypothesis needs the fewest seeds at which
two independent confirmatory runs give compatible, decided verdicts with probability at least
:data:`TARGET_AGREEMENT` (:func:`benchmarks.stats.agreement_probability` at the tuning stage's
effect and standard deviation, at the first Holm step's level; at most :data:`MAX_SEEDS`). Every
experiment starts at :data:`MIN_SEEDS`; the needs are met cheapest first (the added seeds times the
experiment's cost per seed) while the estimate stays within :data:`WORKER_SECONDS`. A hypothesis
whose need is not met (its effect sits on a boundary, or its seeds do not fit the budget) is
listed as unmet: its verdict will likely read *fragile*. :func:`compare` reports whether a rerun of the tuning stage selects the same lrs.

Example:
    >>> lrs = [{"experiment": "q2", "target": "t", "strategy": "full", "lr": 0.003}]
    >>> compare({"lrs": lrs}, {"lrs": [{**lrs[0], "lr": 0.001}]}).same.tolist()
    [False]
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .selection import mark_capped, runs_frame, select_lr
from .stats import ALPHA, agreement_probability
from .store import atomic_write, read_runs
from .suites import PREREGISTRATION_DIR, Suite

#: Format of the pre-registration file.
FORMAT = 1
#: Sizing: two independent confirmatory runs should agree on a verdict with at least this probability.
TARGET_AGREEMENT = 0.9
#: Never fewer confirmatory seeds per experiment than this, never more than MAX_SEEDS.
MIN_SEEDS = 6
MAX_SEEDS = 40
#: Estimated worker-seconds of the confirmatory stage's cells and source models, per confirmatory
#: suite (quick: about 9 minutes of wall time on 2 cores; the guards come on top).
WORKER_SECONDS = {"quick": 1050.0, "standard": 4000.0}


def confirmatory_name(tuning: Suite) -> str:
    """The confirmatory suite of a tuning suite: ``quick_tuning`` -> ``quick``."""
    return tuning.name.removesuffix("_tuning")


def path_for(tuning: Suite) -> Path:
    """Where the committed pre-registration of ``tuning``'s confirmatory suite lives."""
    return PREREGISTRATION_DIR / f"{confirmatory_name(tuning)}.json"


def _selected(tuning: Suite, folder: Path) -> pd.DataFrame:
    records = [r for r in read_runs(folder / "runs.jsonl") if r.get("status") == "ok"]
    runs = runs_frame(tuning, records)
    if runs.empty:
        raise ValueError(f"{folder}: no finished runs of suite {tuning.name!r}: run the tuning stage first")
    from .report import add_derived_metrics

    return add_derived_metrics(mark_capped(tuning, select_lr(runs)))[0]


def _seeds_for(effect: float, sd: float, min_effect: float, kind: str, level: float) -> int | None:
    """The fewest seeds (MIN_SEEDS..MAX_SEEDS) at which two independent runs agree with probability
    TARGET_AGREEMENT; None when even MAX_SEEDS do not."""
    if not (math.isfinite(effect) and math.isfinite(sd)):
        return None
    for n in range(MIN_SEEDS, MAX_SEEDS + 1):
        if agreement_probability(effect, sd, n, min_effect, level, kind) >= TARGET_AGREEMENT:
            return n
    return None


def sizing(tuning: Suite, runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Per confirmatory hypothesis: the tuning stage's effect and sd over its seeds (each side at
    its selected lr) and the seeds the confirmatory stage needs (see the module docstring)."""
    from .report import seed_differences

    chosen = runs[runs.selected]
    confirmatory = [h for h in tuning.hypotheses if not h.exploratory]
    level = ALPHA / max(1, len(confirmatory))
    rows = []
    for h in confirmatory:
        d = seed_differences(chosen, h)
        effect = float(d.mean()) if len(d) else math.nan
        sd = float(d.std(ddof=1)) if len(d) >= 2 else math.nan
        rows.append({"hypothesis": h.name, "experiment": h.experiment, "tuning_seeds": len(d), "effect": effect,
                     "sd": sd, "level": level, "seeds_needed": _seeds_for(effect, sd, h.min_effect, h.kind, level)})
    return rows


def _cost_per_seed(tuning: Suite, runs: pd.DataFrame, folder: Path) -> dict[str, float]:
    """Estimated worker-seconds per confirmatory seed of each experiment: its cells' mean wall time at
    the selected lrs, plus one source model's pretraining (the tuning run's mean)."""
    environment = json.loads((folder / "environment.json").read_text()) if (folder / "environment.json").exists() \
        else {}
    built = [p["seconds"] for p in environment.get("preparations") or [] if p.get("source_seed") is not None
             and p.get("seconds") is not None]  # a reused source records the seconds it took to build
    source_seconds = float(np.mean(built)) if built else 0.0
    chosen = runs[runs.selected & (runs.kind != "derived")]
    cost = {}
    for e in tuning.experiments:
        part = chosen[chosen.experiment == e.name]
        cells = part.groupby(["target", "strategy"]).wall_seconds.mean().sum() if len(part) else 0.0
        cost[e.name] = float(cells) + (source_seconds if e.source.trained else 0.0)
    return cost


def allocate(needs: Mapping[str, tuple[str, int | None]], cost: Mapping[str, float],
             budget: float) -> tuple[dict[str, int], list[str]]:
    """Seeds per experiment and the hypotheses whose need is met: every experiment at MIN_SEEDS,
    then the needs (hypothesis -> (experiment, seeds)) met cheapest first while the cost stays
    within ``budget`` worker-seconds.

    Example:
        >>> allocate({"H1": ("a", 8), "H2": ("b", 30), "H3": ("a", None)}, {"a": 1.0, "b": 2.0}, 30.0)
        ({'a': 8, 'b': 6}, ['H1'])
    """
    seeds = {e: MIN_SEEDS for e in cost}
    open_ = {h: need for h, need in needs.items() if need[1] is not None}
    met = []

    def extra(h: str) -> float:
        experiment, n = open_[h]
        return max(0, n - seeds[experiment]) * cost[experiment]

    while open_:
        h = min(open_, key=lambda name: (extra(name), name))
        experiment, n = open_.pop(h)
        if sum(seeds[e] * cost[e] for e in seeds) + extra_cost(n, seeds[experiment], cost[experiment]) <= budget:
            seeds[experiment] = max(seeds[experiment], n)
            met.append(h)
    return seeds, sorted(met)


def extra_cost(n: int, current: int, cost_per_seed: float) -> float:
    """Worker-seconds of raising an experiment from ``current`` to ``n`` seeds."""
    return max(0, n - current) * cost_per_seed


def version_of(registration: Mapping[str, Any]) -> str:
    """12 hex digits of the sha256 of the registration's lrs and seed counts."""
    text = json.dumps({"lrs": registration["lrs"], "seeds": registration["seeds"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def register(tuning: Suite, folder: Path) -> dict[str, Any]:
    """The pre-registration that the finished tuning run in ``folder`` implies (see the module
    docstring): ``lrs`` (one row per experiment, target and strategy: the selected lr, its pooled
    validation accuracy, whether it sits at a grid edge and whether that edge is capped),
    ``seeds`` per experiment, ``sizing`` per hypothesis, the estimated cost, where it came from.

    Raises:
        ValueError: the folder holds no finished run of ``tuning``.
    """
    runs = _selected(tuning, folder)
    chosen = runs[runs.selected & (runs.kind != "derived")]
    lrs = []
    for (experiment, target, strategy), part in chosen.groupby(["experiment", "target", "strategy"], sort=False):
        lrs.append({"experiment": experiment, "target": target, "strategy": strategy, "lr": float(part.lr.iloc[0]),
                    "val_accuracy": round(float(part.val_accuracy.mean()), 6), "lrs_run": int(part.lrs_run.iloc[0]),
                    "edge": bool(part.edge.iloc[0]), "capped": bool(part.capped.iloc[0])})
    order = {(e.name, t.name, s.name): i for i, (e, t, s) in enumerate(
        (e, t, s) for e in tuning.experiments for t in e.targets for s in e.strategies)}
    lrs.sort(key=lambda r: order.get((r["experiment"], r["target"], r["strategy"]), len(order)))
    sized = sizing(tuning, runs)
    cost = _cost_per_seed(tuning, runs, folder)
    budget = WORKER_SECONDS.get(confirmatory_name(tuning), WORKER_SECONDS["quick"])
    seeds, met = allocate({r["hypothesis"]: (r["experiment"], r["seeds_needed"]) for r in sized}, cost, budget)
    for r in sized:
        r["need_met"] = r["hypothesis"] in met
    environment = json.loads((folder / "environment.json").read_text()) if (folder / "environment.json").exists() \
        else {}
    registration = {
        "format": FORMAT, "suite": confirmatory_name(tuning),
        "tuning": {"suite": tuning.name, "folder": str(folder), "seeds": {e.name: list(e.seeds) for e in tuning.experiments},
                   "git": (environment.get("git") or {}).get("commit"), "cpu": environment.get("device_name"),
                   "date": environment.get("date")},
        "written": datetime.date.today().isoformat(),
        "rule": "each strategy's lr: the best mean validation accuracy over the tuning seeds (ties: the smaller lr), "
                "grid edges extended; seeds: the fewest at which two independent runs agree on every sized verdict "
                f"with probability >= {TARGET_AGREEMENT} (min {MIN_SEEDS}, max {MAX_SEEDS}), the cheapest needs "
                f"first within {budget:.0f} estimated worker-seconds",
        "lrs": lrs, "seeds": seeds,
        "cost_per_seed_worker_seconds": {k: round(v, 2) for k, v in cost.items()},
        "estimated_worker_seconds": round(sum(seeds[e] * cost[e] for e in seeds), 1),
        "sizing": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in sized],
    }
    registration["version"] = version_of(registration)
    return registration


def compare(committed: Mapping[str, Any], new: Mapping[str, Any]) -> pd.DataFrame:
    """Per (experiment, target, strategy) of the committed pre-registration: both lrs and ``same``."""
    keys = ["experiment", "target", "strategy"]
    a = pd.DataFrame(committed["lrs"])[[*keys, "lr"]]
    b = pd.DataFrame(new["lrs"])[[*keys, "lr"]]
    merged = a.merge(b, on=keys, how="left", suffixes=("_committed", "_new"))
    merged["same"] = merged.lr_committed == merged.lr_new
    return merged


def write(registration: Mapping[str, Any], path: Path) -> None:
    """Write the pre-registration as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(registration, indent=2) + "\n")
