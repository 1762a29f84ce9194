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

A suite's :class:`SizingRule` (:data:`SIZING_RULES`) can make the sizing stricter, as the quick suite's
does since a first confirmatory run showed its 4-seed sizing too optimistic (H1f sized to 9 seeds
read 0.66; H2e's tuning sd was a fifth of the confirmatory one):

- ``sd_confidence``: size on the upper confidence limit of the tuning sd, not on the sd itself
  (Browne 1995, "On the use of a pilot sample for sample size determination", Stat. Med. 14:
  the pilot sd is too small half the time, and a plug-in sample size then misses its power about
  half the time): ``sd * sqrt((k - 1) / chi2.ppf(1 - sd_confidence, k - 1))`` over ``k`` tuning units.
- ``gates``: size every transfer gate a confirmatory hypothesis reads too: the fewest seeds at which
  an independent run decides the gate as the tuning stage's margin points, with probability
  :data:`TARGET_AGREEMENT` (:func:`benchmarks.stats.gate_probability`; an undecided gate makes
  the verdict *undetermined*).
- ``futility``: a hypothesis that no seed count up to :data:`MAX_SEEDS` decides (its tuning effect
  sits on its minimum effect) is registered exploratory (``futile`` in the file): the confirmatory
  stage reports its interval and gives it no verdict, as the issue retiring H2c and H3d asked for
  such hypotheses. This is decided on the tuning stage alone, before any confirmatory cell runs.

Example:
    >>> lrs = [{"experiment": "q2", "target": "t", "strategy": "full", "lr": 0.003}]
    >>> compare({"lrs": lrs}, {"lrs": [{**lrs[0], "lr": 0.001}]}).same.tolist()
    [False]
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .analysis import add_derived_metrics, gates, seed_differences, selected_table
from .selection import mark_capped, runs_frame, select_lr
from .stats import ALPHA, agreement_probability, gate_probability
from .store import atomic_write, read_runs
from .suites import PREREGISTRATION_DIR, Experiment, Suite

#: Format of the pre-registration file.
FORMAT = 1
#: Sizing: two independent confirmatory runs should agree on a verdict with at least this probability.
TARGET_AGREEMENT = 0.9
#: Never fewer confirmatory seeds per experiment than this, never more than MAX_SEEDS.
MIN_SEEDS = 6
MAX_SEEDS = 40
#: Device seconds of the GPU run's confirmatory stage for ``preregister --suite gpu_tuning`` by hand; the
#: GPU run itself computes its budget from the device time its calls have left
#: (:func:`benchmarks.gpu.confirmatory_budget`).
GPU_CONFIRMATORY_SECONDS = 360.0
#: Estimated worker-seconds (:func:`cost_model`) of the confirmatory stage's cells and source models,
#: per confirmatory suite. Measured: the quick reference estimated at 844 took 525 s of wall time on
#: 2 cores, guards and preparations included; so 870 keeps `make bench` (the run, then `replicate`)
#: within 10 minutes; 3000 gave the standard reference 1831 s (2,874 estimated). The quick suite's rule
#: reads each cell's fastest seed instead of the mean (``SizingRule.cost``): on that same reference the
#: fastest seeds sum to 0.838 of the means for the cells and 0.805 for the source models, so its budget
#: is 870 x 0.83 = 725 in those units.
WORKER_SECONDS = {"quick": 725.0, "standard": 3000.0, "gpu": GPU_CONFIRMATORY_SECONDS}


@dataclasses.dataclass(frozen=True)
class SizingRule:
    """How a confirmatory suite's seeds are sized from its tuning stage (see the module docstring):
    ``sd_confidence`` (None: the tuning sd as it is), ``gates`` (size the transfer gates too) and
    ``futility`` (register undecidable hypotheses exploratory)."""

    sd_confidence: float | None = None
    gates: bool = False
    futility: bool = False
    #: How a cell's (and a source model's) cost is read from the tuning run's wall times: ``"mean"``
    #: over its seeds, or ``"min"``, the fastest (timeit's rule: other load on the machine only adds
    #: time, so the minimum is the least disturbed measurement of a tuning run on a shared machine).
    cost: str = "mean"
    #: The fewest confirmatory seeds per experiment; with ``refuse``, a budget that cannot pay for them
    #: is an error (:class:`UnaffordableDesign`) instead of a registration that overruns it.
    min_seeds: int = MIN_SEEDS
    refuse: bool = False

    def __post_init__(self) -> None:
        """Raises ValueError for a cost reading other than mean or min, fewer than 2 seeds (no paired
        interval), or a confidence outside (0, 1)."""
        if self.cost not in ("mean", "min"):
            raise ValueError(f"SizingRule.cost must be 'mean' or 'min', got {self.cost!r}")
        if self.min_seeds < 2:
            raise ValueError(f"SizingRule.min_seeds must be at least 2 (a paired interval), got {self.min_seeds}")
        if self.sd_confidence is not None and not 0 < self.sd_confidence < 1:
            raise ValueError(f"SizingRule.sd_confidence must lie in (0, 1), got {self.sd_confidence}")

    def sd_for_sizing(self, sd: float, units: int) -> float:
        """The sd the seeds are sized on: ``sd``, or its upper ``sd_confidence`` confidence limit
        over ``units`` tuning units (nan with fewer than 2).

        Example:
            >>> round(SizingRule(sd_confidence=0.8).sd_for_sizing(1.0, 8), 3)
            1.353
        """
        if self.sd_confidence is None or not math.isfinite(sd):
            return sd
        if units < 2:
            return math.nan
        return sd * math.sqrt((units - 1) / stats.chi2.ppf(1 - self.sd_confidence, units - 1))


#: The sizing rule of each confirmatory suite (the standard suite keeps the first rule, with which its
#: committed registration and results were made).
SIZING_RULES = {"quick": SizingRule(sd_confidence=0.8, gates=True, futility=True, cost="min"),
                "standard": SizingRule(),
                # no futility: a 2-seed pilot's sd (1 degree of freedom) must not retire a hypothesis
                "gpu": SizingRule(cost="min", min_seeds=8, refuse=True)}


class UnaffordableDesign(ValueError):
    """The confirmatory stage's fewest seeds cost more than its budget: the run is refused, not shrunk."""


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
    return add_derived_metrics(mark_capped(tuning, select_lr(runs)))[0]


def _fewest_seeds(probability: Callable[[int], float], *values: float) -> int | None:
    """The fewest seeds n (MIN_SEEDS..MAX_SEEDS) with ``probability(n) >= TARGET_AGREEMENT``; None
    when even MAX_SEEDS do not, or when one of ``values`` (the inputs it reads) is not finite."""
    if not all(math.isfinite(v) for v in values):
        return None
    return next((n for n in range(MIN_SEEDS, MAX_SEEDS + 1) if probability(n) >= TARGET_AGREEMENT), None)


def _seeds_for(effect: float, sd: float, min_effect: float, kind: str, level: float) -> int | None:
    """The fewest seeds (MIN_SEEDS..MAX_SEEDS) at which two independent runs agree with probability
    TARGET_AGREEMENT; None when even MAX_SEEDS do not."""
    return _fewest_seeds(lambda n: agreement_probability(effect, sd, n, min_effect, level, kind), effect, sd)


def _gate_seeds_for(margin: float, sd: float, required: float) -> int | None:
    """The fewest seeds (MIN_SEEDS..MAX_SEEDS) at which an independent run decides a transfer gate
    the way ``margin`` points (pass at or above ``required``, else fail) with probability
    TARGET_AGREEMENT; None when even MAX_SEEDS do not.

    Example:
        >>> _gate_seeds_for(0.20, 0.03, 0.05), _gate_seeds_for(0.05, 0.03, 0.05)
        (6, None)
    """
    state = "pass" if margin >= required else "fail"
    return _fewest_seeds(lambda n: gate_probability(state, margin, sd, n, required), margin, sd)


def sizing(tuning: Suite, runs: pd.DataFrame, rule: SizingRule | None = None) -> list[dict[str, Any]]:
    """Per confirmatory hypothesis: the tuning stage's effect and sd over its seeds (each side at
    its selected lr) and the seeds the confirmatory stage needs; with ``rule.gates``, also one row
    per transfer gate those hypotheses read (``gate <experiment>/<target>``: the margin and its
    sd); with ``rule.sd_confidence``, ``sizing_sd`` is the sd's upper confidence limit (see the
    module docstring)."""
    rule = rule or SizingRule()
    chosen = runs[runs.selected]
    confirmatory = [h for h in tuning.hypotheses if not h.exploratory]
    level = ALPHA / max(1, len(confirmatory))
    rows = []
    for h in confirmatory:
        d = seed_differences(chosen, h)
        effect = float(d.mean()) if len(d) else math.nan
        sd = float(d.std(ddof=1)) if len(d) >= 2 else math.nan
        sizing_sd = rule.sd_for_sizing(sd, len(d))
        row = {"hypothesis": h.name, "experiment": h.experiment, "tuning_seeds": len(d), "effect": effect,
               "sd": sd, "level": level}
        if rule.sd_confidence is not None:
            row["sizing_sd"] = sizing_sd
        rows.append({**row, "seeds_needed": _seeds_for(effect, sizing_sd, h.min_effect, h.kind, level)})
    if rule.gates:
        read = {(h.experiment, t) for h in confirmatory for t in (h.target, h.versus) if t}
        table = gates(tuning, runs, selected_table(runs))
        for g in table.itertuples():
            if (g.experiment, g.target) not in read:
                continue
            sizing_sd = rule.sd_for_sizing(float(g.margin_sd), int(g.units))
            row = {"hypothesis": f"gate {g.experiment}/{g.target}", "experiment": g.experiment,
                   "tuning_seeds": int(g.units), "effect": float(g.margin), "sd": float(g.margin_sd),
                   "level": 0.05}
            if rule.sd_confidence is not None:
                row["sizing_sd"] = sizing_sd
            rows.append({**row, "seeds_needed": _gate_seeds_for(float(g.margin), sizing_sd,
                                                                float(g.required_margin))})
    return rows


def _source_group(experiment: Experiment) -> tuple[str, str]:
    """Experiments with the same backbone and source pretrain the same source model for a seed."""
    return experiment.backbone, json.dumps(dataclasses.asdict(experiment.source), sort_keys=True, default=str)


def _source_seconds(tuning: Suite, folder: Path, how: str = "mean") -> dict[str, float]:
    """Mean seconds to pretrain one source model, per experiment with a suite-trained source (from
    the tuning run's preparation records, labelled ``source <experiment> (source seed N)``; the
    experiments sharing a backbone and source share the measurement)."""
    path = folder / "environment.json"
    environment = json.loads(path.read_text()) if path.exists() else {}
    groups = {e.name: _source_group(e) for e in tuning.experiments if e.source.trained}
    by_group: dict[tuple[str, str], list[float]] = {}
    for p in environment.get("preparations") or []:
        label, seconds = str(p.get("label", "")), p.get("seconds")
        name = label.removeprefix("source ").split(" (", 1)[0]
        if label.startswith("source ") and name in groups and seconds is not None:
            by_group.setdefault(groups[name], []).append(float(seconds))
    reduce = np.min if how == "min" else np.mean
    return {name: float(reduce(by_group[group])) if group in by_group else 0.0 for name, group in groups.items()}


def cost_model(tuning: Suite, runs: pd.DataFrame, folder: Path, how: str = "mean") -> tuple[
        dict[str, float], Callable[[Mapping[str, int]], float]]:
    """(worker-seconds per seed of each experiment, ``total(seeds)``): the estimated worker-seconds
    of the confirmatory stage for seed counts per experiment: every experiment's cells at their mean (``how="min"``: fastest)
    wall time at the selected lrs, plus one source model per seed of each group of experiments
    sharing a source (counted once, for the largest of them)."""
    chosen = runs[runs.selected & (runs.kind != "derived")]
    cells = {}
    for e in tuning.experiments:
        part = chosen[chosen.experiment == e.name]
        per_cell = part.groupby(["target", "strategy"]).wall_seconds
        cells[e.name] = float((per_cell.min() if how == "min" else per_cell.mean()).sum()) if len(part) else 0.0
    source = _source_seconds(tuning, folder, how)
    groups: dict[tuple[str, str], list[str]] = {}
    for e in tuning.experiments:
        if e.source.trained:
            groups.setdefault(_source_group(e), []).append(e.name)

    def total(seeds: Mapping[str, int]) -> float:
        shared = sum(max(seeds[n] for n in names) * source[names[0]] for names in groups.values())
        return sum(seeds[n] * cells[n] for n in seeds) + shared

    return {n: cells[n] + source.get(n, 0.0) for n in cells}, total


def allocate(needs: Mapping[str, tuple[str, int | None]], names: list[str],
             total: Callable[[Mapping[str, int]], float], budget: float,
             min_seeds: int = MIN_SEEDS) -> tuple[dict[str, int], list[str]]:
    """Seeds per experiment and the hypotheses whose need is met: every experiment (``names``) at
    ``min_seeds``, then the needs (hypothesis -> (experiment, seeds)) met cheapest first (the increase of
    ``total(seeds)``, the estimated worker-seconds) while ``total`` stays within ``budget``.

    Example:
        >>> cost = lambda seeds: 1.0 * seeds["a"] + 2.0 * seeds["b"]
        >>> allocate({"H1": ("a", 8), "H2": ("b", 30), "H3": ("a", None)}, ["a", "b"], cost, 30.0)
        ({'a': 8, 'b': 6}, ['H1'])
    """
    seeds = {name: min_seeds for name in names}
    open_ = {h: need for h, need in needs.items() if need[1] is not None}
    met = []

    def raised(h: str) -> dict[str, int]:
        experiment, n = open_[h]
        return {**seeds, experiment: max(seeds[experiment], n)}

    while open_:
        h = min(open_, key=lambda name: (total(raised(name)) - total(seeds), name))
        candidate = raised(h)
        del open_[h]
        if total(candidate) <= budget:
            seeds = candidate
            met.append(h)
    return seeds, sorted(met)


def version_of(registration: Mapping[str, Any]) -> str:
    """12 hex digits of the sha256 of the registration's lrs and seed counts (and its futile
    hypotheses, where the sizing rule registers them)."""
    design = {"lrs": registration["lrs"], "seeds": registration["seeds"]}
    if "futile" in registration:
        design["futile"] = registration["futile"]
    text = json.dumps(design, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def register(tuning: Suite, folder: Path, rule: SizingRule | None = None,
             budget: float | None = None) -> dict[str, Any]:
    """The pre-registration that the finished tuning run in ``folder`` implies (see the module
    docstring): ``lrs`` (one row per experiment, target and strategy: the selected lr, its pooled
    validation accuracy, whether it sits at a grid edge and whether that edge is capped),
    ``seeds`` per experiment, ``sizing`` per hypothesis, the estimated cost, where it came from;
    sized by ``rule`` (default: the confirmatory suite's :data:`SIZING_RULES` entry) within ``budget``
    estimated worker-seconds (default: its :data:`WORKER_SECONDS` entry).

    Raises:
        ValueError: the folder holds no finished run of ``tuning``.
        UnaffordableDesign: a ``refuse`` rule's fewest seeds cost more than the budget.
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
    rule = rule or SIZING_RULES.get(confirmatory_name(tuning), SizingRule())
    sized = sizing(tuning, runs, rule)
    cost, total = cost_model(tuning, runs, folder, rule.cost)
    if budget is None:
        budget = WORKER_SECONDS.get(confirmatory_name(tuning), WORKER_SECONDS["quick"])
    futile = sorted(r["hypothesis"] for r in sized if rule.futility and r["seeds_needed"] is None
                    and not r["hypothesis"].startswith("gate "))
    names = [e.name for e in tuning.experiments]
    floor = total({name: rule.min_seeds for name in names})
    if rule.refuse and floor > budget:
        raise UnaffordableDesign(
            f"{rule.min_seeds} seeds per experiment cost an estimated {floor:.0f} s on the tuning run's measured cells "
            f"(fastest seed of each), over the {budget:.0f} s budget of {confirmatory_name(tuning)}; refusing to "
            "register fewer seeds (they would decide nothing): make the cells cheaper or raise the budget")
    seeds, met = allocate({r["hypothesis"]: (r["experiment"], r["seeds_needed"]) for r in sized
                           if r["hypothesis"] not in futile}, names, total, budget, rule.min_seeds)
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
                f"with probability >= {TARGET_AGREEMENT} (min {rule.min_seeds}, max {MAX_SEEDS}), the cheapest needs "
                f"first within {budget:.0f} estimated worker-seconds" + _rule_text(rule),
        "lrs": lrs, "seeds": seeds,
        "cost_per_seed_worker_seconds": {k: round(v, 2) for k, v in cost.items()},
        "estimated_worker_seconds": round(total(seeds), 1),
        "sizing": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in sized],
    }
    if rule.futility:
        registration["futile"] = futile
    registration["version"] = version_of(registration)
    return registration


def _rule_text(rule: SizingRule) -> str:
    parts = []
    if rule.sd_confidence is not None:
        parts.append(f"sized on the {rule.sd_confidence:.0%} upper confidence limit of the tuning sd (Browne 1995)")
    if rule.gates:
        parts.append("the transfer gates the hypotheses read sized too")
    if rule.futility:
        parts.append(f"a hypothesis no seed count up to {MAX_SEEDS} decides is registered exploratory (futile)")
    if rule.cost == "min":
        parts.append("each cell's cost: its fastest tuning seed")
    return "".join(f"; {p}" for p in parts)


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
