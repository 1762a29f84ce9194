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
  The futile leave the Holm family, and the rest are sized at the first step of the family of the
  confirmatory hypotheses that are not futile (conservative: one that reads *out of scope* leaves the
  tested family only when the confirmatory stage is analysed). A hypothesis one of whose preconditions fails on the tuning stage will read *out of
  scope*: it is sized on that precondition (the seeds at which an independent run finds it failing
  again, :func:`benchmarks.stats.precondition_probability`; ``sized_on`` in the file).
- ``per_cell``: size every cell on its own (``cell_seeds`` in the file) instead of every experiment:
  a need raises only the cells its verdict reads (:func:`cells_read`), the others stay at the minimum,
  and the budget left then completes each hypothesis' cells to its most-seeded one
  (:func:`complete_pairs`); every seed still pretrains its own source model.
- ``curves_read_only``: the confirmatory stage measures the forgetting curve only where a
  confirmatory, non-futile hypothesis reads it (``track_forgetting`` in the file).

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

from .analysis import add_derived_metrics, gates, seed_differences, selected_table, strategy_differences
from .selection import mark_capped, runs_frame, select_lr
from .stats import ALPHA, agreement_probability, gate_probability, precondition_probability
from .store import atomic_write, read_runs
from .suites import CURVE_METRICS, PREREGISTRATION_DIR, Experiment, Hypothesis, Suite

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
#: Estimated worker-seconds (:func:`cost_model`, :func:`cell_cost_model`) of the confirmatory stage's
#: cells and source models, per confirmatory suite, on the tuning run's measured cells. The quick
#: suite's rule reads each cell's fastest tuning seed, and its confirmatory cells skip the forgetting
#: curve the tuning cells measured (a Q2 cell about 40% faster than its estimate). Measured: a trial of
#: the per-cell registration estimated at 1049 ran its cells, source models and guards in about 526 s
#: of wall time on 2 cores (the 688 s it recorded include 162 s of grid completions the guard then
#: still added, since fixed); at 1100 the committed reference (estimated 1099: the Q1 pairs completed
#: to 19 seeds, gradual unfreezing left at 15 against full's 21 when the budget ran out) took 519 s, inside `make bench`'s 10 minutes. 3000 gave the standard reference 1831 s (2,874
#: estimated, every cell at its mean).
WORKER_SECONDS = {"quick": 1100.0, "standard": 3000.0, "gpu": GPU_CONFIRMATORY_SECONDS}


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
    #: Size every cell on its own (``cell_seeds`` in the file): a hypothesis' need raises only the
    #: cells it reads (both sides on its targets, its preconditions'), a gate's every strategy on its
    #: target; every other cell stays at ``min_seeds``. Each seed still pretrains its own source model.
    per_cell: bool = False
    #: Measure the forgetting curve in the confirmatory stage only where a confirmatory, non-futile
    #: hypothesis reads it (``track_forgetting`` in the file; :data:`benchmarks.suites.CURVE_METRICS`).
    curves_read_only: bool = False

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
SIZING_RULES = {"quick": SizingRule(sd_confidence=0.8, gates=True, futility=True, cost="min", per_cell=True,
                                    curves_read_only=True),
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


def _failing_precondition(runs: pd.DataFrame, h: Hypothesis) -> pd.Series | None:
    """The paired differences (per seed) of the first of ``h``'s preconditions that fails among
    ``runs`` (its mean below 0), else None."""
    for p in h.preconditions:
        d = strategy_differences(runs, h.experiment, h.target, p.metric, p.better, p.worse)
        if len(d) and float(d.mean()) < 0:
            return d
    return None


def _hypothesis_sizing(chosen: pd.DataFrame, h: Hypothesis, rule: SizingRule, level: float) -> dict[str, Any]:
    """One hypothesis' sizing row at the Holm ``level``: its tuning effect and sd, and the seeds a
    confirmatory run needs; where a precondition fails on the tuning stage the verdict will read
    *out of scope*, so the need is the seeds at which an independent run finds it failing again
    with probability TARGET_AGREEMENT (``sized_on``: ``precondition``; with the futility rule, and
    unless no seed count up to MAX_SEEDS finds it failing again)."""
    d = seed_differences(chosen, h)
    effect = float(d.mean()) if len(d) else math.nan
    sd = float(d.std(ddof=1)) if len(d) >= 2 else math.nan
    sizing_sd = rule.sd_for_sizing(sd, len(d))
    row = {"hypothesis": h.name, "experiment": h.experiment, "tuning_seeds": len(d), "effect": effect,
           "sd": sd, "level": level}
    if rule.sd_confidence is not None:
        row["sizing_sd"] = sizing_sd
    failing = _failing_precondition(chosen, h) if rule.futility else None
    if failing is not None and len(failing) >= 2:
        margin, p_sd = float(failing.mean()), rule.sd_for_sizing(float(failing.std(ddof=1)), len(failing))
        need = _fewest_seeds(lambda n: precondition_probability(False, margin, p_sd, n), margin, p_sd)
        if need is not None:  # else its scope is a coin flip: sized on the effect, as if it held
            return {**row, "sized_on": "precondition", "seeds_needed": need}
    return {**row, "seeds_needed": _seeds_for(effect, sizing_sd, h.min_effect, h.kind, level)}


def sizing(tuning: Suite, runs: pd.DataFrame, rule: SizingRule | None = None) -> list[dict[str, Any]]:
    """Per confirmatory hypothesis: the tuning stage's effect and sd over its seeds (each side at
    its selected lr) and the seeds the confirmatory stage needs; with ``rule.gates``, also one row
    per transfer gate those hypotheses read (``gate <experiment>/<target>``: the margin and its
    sd); with ``rule.sd_confidence``, ``sizing_sd`` is the sd's upper confidence limit (see the
    module docstring)."""
    rule = rule or SizingRule()
    chosen = runs[runs.selected]
    confirmatory = [h for h in tuning.hypotheses if not h.exploratory]
    rows = [_hypothesis_sizing(chosen, h, rule, ALPHA / max(1, len(confirmatory))) for h in confirmatory]
    if rule.futility:  # the futile leave the Holm family: the rest are sized at the first step of what remains
        family = [h for h, r in zip(confirmatory, rows, strict=True) if r["seeds_needed"] is not None]
        rows = [_hypothesis_sizing(chosen, h, rule, ALPHA / max(1, len(family))) if h in family else r
                for h, r in zip(confirmatory, rows, strict=True)]
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


def _source_groups(tuning: Suite) -> dict[tuple[str, str], list[str]]:
    """The experiments with a suite-trained source, grouped by the source model a seed shares
    (:func:`_source_group`)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for e in tuning.experiments:
        if e.source.trained:
            groups.setdefault(_source_group(e), []).append(e.name)
    return groups


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
    groups = _source_groups(tuning)

    def total(seeds: Mapping[str, int]) -> float:
        shared = sum(max(seeds[n] for n in names) * source[names[0]] for names in groups.values())
        return sum(seeds[n] * cells[n] for n in seeds) + shared

    return {n: cells[n] + source.get(n, 0.0) for n in cells}, total


def cell_name(experiment: str, target: str, strategy: str) -> str:
    """The sizing unit of one cell of a per-cell registration: ``experiment/target/strategy``."""
    return f"{experiment}/{target}/{strategy}"


def _cells(tuning: Suite) -> list[tuple[str, str, str]]:
    """Every (experiment, target, strategy) the tuning suite runs (its ``skip`` pairs left out)."""
    return [(e.name, t.name, s.name) for e in tuning.experiments for t in e.targets for s in e.strategies
            if (t.name, s.name) not in e.skip]


def cells_read(tuning: Suite, row: Mapping[str, Any]) -> tuple[str, ...]:
    """The cells (:func:`cell_name`) a sizing row's verdict reads: a hypothesis' two sides (and its
    preconditions'; a WiSE-FT variant's parent cell) on its targets; a gate (``gate <experiment>/<target>``)
    every strategy on its target.

    Example:
        >>> from benchmarks.catalog import QUICK_TUNING
        >>> cells_read(QUICK_TUNING, {"hypothesis": "H2a", "experiment": "q2_ulmfit"})
        ('q2_ulmfit/new_classes/discriminative', 'q2_ulmfit/new_classes/full')
        >>> cells_read(QUICK_TUNING, {"hypothesis": "H3c"})  # wise variants and their precondition's sides
        ('q3_lp_ft/animal10/top_lp_ft',)
    """
    name = str(row["hypothesis"])
    if name.startswith("gate "):
        experiment, target = name.removeprefix("gate ").split("/", 1)
        return tuple(cell_name(*c) for c in _cells(tuning) if c[:2] == (experiment, target))
    h = next(h for h in tuning.hypotheses if h.name == name)
    targets = {h.target, h.versus} - {""}
    # a derived side (``top_lp_ft+wise_0.5``) is read from its parent's cell
    named = {n.split("+")[0] for n in (h.better, h.worse, *(m for p in h.preconditions for m in (p.better, p.worse)))}
    return tuple(sorted(cell_name(*c) for c in _cells(tuning)
                        if c[0] == h.experiment and c[1] in targets and c[2] in named))


def cell_cost_model(tuning: Suite, runs: pd.DataFrame, folder: Path, how: str = "mean") -> tuple[
        dict[str, float], Callable[[Mapping[str, int]], float]]:
    """(worker-seconds of one seed of each cell, ``total(seeds)``): :func:`cost_model` per cell, for
    seed counts per cell (:func:`cell_name`): every cell's wall time (a WiSE-FT variant is part of
    its fine-tuned cell's) times its seeds, plus one source model per seed of each group of
    experiments sharing a source, as many as the group's most-seeded cell has."""
    chosen = runs[runs.selected & (runs.kind != "derived")]
    per_cell = chosen.groupby(["experiment", "target", "strategy"]).wall_seconds
    seconds = (per_cell.min() if how == "min" else per_cell.mean()).to_dict()
    costs = {cell_name(*c): float(seconds.get(c, 0.0)) for c in _cells(tuning)}
    source = _source_seconds(tuning, folder, how)
    groups = _source_groups(tuning)

    def total(seeds: Mapping[str, int]) -> float:
        most = {name: max((n for c, n in seeds.items() if c.split("/", 1)[0] == name), default=0)
                for names in groups.values() for name in names}
        shared = sum(max(most[n] for n in names) * source[names[0]] for names in groups.values())
        return sum(n * costs[c] for c, n in seeds.items()) + shared

    return costs, total


def allocate(needs: Mapping[str, tuple[str | tuple[str, ...], int | None]], names: list[str],
             total: Callable[[Mapping[str, int]], float], budget: float,
             min_seeds: int = MIN_SEEDS) -> tuple[dict[str, int], list[str]]:
    """Seeds per unit of sizing (an experiment, or a cell ``experiment/target/strategy``) and the
    hypotheses whose need is met: every unit (``names``) at ``min_seeds``, then the needs (hypothesis
    -> (the unit, or the units, it reads; seeds)) met cheapest first (the increase of
    ``total(seeds)``, the estimated worker-seconds) while ``total`` stays within ``budget``.

    Example:
        >>> cost = lambda seeds: 1.0 * seeds["a"] + 2.0 * seeds["b"]
        >>> allocate({"H1": ("a", 8), "H2": ("b", 30), "H3": ("a", None)}, ["a", "b"], cost, 30.0)
        ({'a': 8, 'b': 6}, ['H1'])
        >>> allocate({"H1": (("a", "b"), 7)}, ["a", "b"], cost, 30.0)
        ({'a': 7, 'b': 7}, ['H1'])
    """
    seeds = {name: min_seeds for name in names}
    open_ = {h: need for h, need in needs.items() if need[1] is not None}
    met = []

    def raised(h: str) -> dict[str, int]:
        units, n = open_[h]
        return {**seeds, **{u: max(seeds[u], n) for u in ((units,) if isinstance(units, str) else units)}}

    while open_:
        h = min(open_, key=lambda name: (total(raised(name)) - total(seeds), name))
        candidate = raised(h)
        del open_[h]
        if total(candidate) <= budget:
            seeds = candidate
            met.append(h)
    return seeds, sorted(met)


def complete_pairs(reads: Mapping[str, tuple[str, ...]], seeds: Mapping[str, int],
                   total: Callable[[Mapping[str, int]], float], budget: float) -> dict[str, int]:
    """Per-cell seeds after :func:`allocate`, the budget left spent on paired units already paid for:
    a verdict's units are the seeds all its cells share, so a hypothesis (``reads``: hypothesis ->
    the cells it reads) one of whose cells runs on more seeds than another gets the others raised to
    it (their seeds' source models exist already), cheapest first, while ``total`` stays within ``budget``.

    Example:
        >>> cost = lambda seeds: 1.0 * seeds["a"] + 1.0 * seeds["b"] + 5.0 * seeds["c"]
        >>> complete_pairs({"H1": ("a", "b"), "H2": ("a", "c")}, {"a": 9, "b": 6, "c": 6}, cost, 60.0)
        {'a': 9, 'b': 9, 'c': 6}
    """
    seeds = dict(seeds)

    def completed(cells: tuple[str, ...]) -> dict[str, int]:
        return {**seeds, **{c: max(seeds[c] for c in cells) for c in cells}}

    while True:
        increments = sorted((total(completed(cells)) - total(seeds), h) for h, cells in reads.items()
                            if completed(cells) != seeds and total(completed(cells)) <= budget)
        if not increments:
            return seeds
        seeds = completed(reads[increments[0][1]])


def version_of(registration: Mapping[str, Any]) -> str:
    """12 hex digits of the sha256 of the registration's lrs and seed counts (and, where the sizing rule
    registers them, its futile hypotheses, its per-cell seeds and which experiments measure the
    forgetting curve)."""
    design = {"lrs": registration["lrs"], "seeds": registration["seeds"]}
    for optional in ("futile", "cell_seeds", "track_forgetting"):
        if optional in registration:
            design[optional] = registration[optional]
    text = json.dumps(design, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _per_cell_seeds(tuning: Suite, runs: pd.DataFrame, folder: Path, rule: SizingRule,
                    needs: Mapping[str, tuple[str, int | None]], budget: float) -> tuple[list[dict[str, Any]], list[str], float]:
    """(``cell_seeds`` rows, the needs met, the estimated worker-seconds) of a per-cell registration:
    each need (hypothesis or gate -> (experiment, seeds)) raises the cells it reads (:func:`allocate`),
    then :func:`complete_pairs` spends the budget left on the hypotheses' pairs."""
    _, total = cell_cost_model(tuning, runs, folder, rule.cost)
    reads = {h: (cells_read(tuning, {"hypothesis": h}), n) for h, (_, n) in needs.items()}
    by_cell, met = allocate(reads, [cell_name(*c) for c in _cells(tuning)], total, budget, rule.min_seeds)
    by_cell = complete_pairs({h: cells for h, (cells, _) in reads.items() if not h.startswith("gate ")},
                             by_cell, total, budget)
    rows = [dict(zip(("experiment", "target", "strategy"), c.split("/", 2), strict=True), seeds=n)
            for c, n in by_cell.items()]
    return rows, met, total(by_cell)


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
    needs = {r["hypothesis"]: (r["experiment"], r["seeds_needed"]) for r in sized if r["hypothesis"] not in futile}
    cell_seeds: list[dict[str, Any]] = []
    if rule.per_cell:
        cell_seeds, met, estimated = _per_cell_seeds(tuning, runs, folder, rule, needs, budget)
        seeds = {name: max(r["seeds"] for r in cell_seeds if r["experiment"] == name) for name in names}
    else:
        seeds, met = allocate(needs, names, total, budget, rule.min_seeds)
        estimated = total(seeds)
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
        "lrs": lrs, "seeds": seeds, **({"cell_seeds": cell_seeds} if rule.per_cell else {}),
        "cost_per_seed_worker_seconds": {k: round(v, 2) for k, v in cost.items()},
        "estimated_worker_seconds": round(estimated, 1),
        "sizing": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in sized],
    }
    if rule.futility:
        registration["futile"] = futile
    if rule.curves_read_only:
        registration["track_forgetting"] = _curves_read(tuning, futile)
    registration["version"] = version_of(registration)
    return registration


def _curves_read(tuning: Suite, futile: list[str]) -> dict[str, bool]:
    """Per experiment: whether its confirmatory stage measures the forgetting curve (it tracks one, and a
    confirmatory hypothesis that is not futile reads a curve metric)."""
    return {e.name: e.track_forgetting and any(h.experiment == e.name and h.metric in CURVE_METRICS and not h.exploratory
                                               and h.name not in futile for h in tuning.hypotheses)
            for e in tuning.experiments}


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
    if rule.curves_read_only:
        parts.append("the forgetting curve measured only where a confirmatory hypothesis reads it")
    if rule.per_cell:
        parts.append(f"every cell sized on its own: a need raises the cells its verdict reads, the rest stay at "
                     f"{rule.min_seeds}, then the budget left completes each hypothesis' cells to its most-seeded one; "
                     "every seed its own source model")
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
