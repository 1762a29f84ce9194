"""Runs a suite, or a part of it (:mod:`benchmarks.parts`): every cell, in ``workers`` processes of
``threads`` torch threads each, each batch of cells after the preparations it needs (source
pretraining per source seed, Lite0 feature caches, then the linear probes); finished cells and
built preparations are skipped on re-runs. Then the guards (:mod:`benchmarks.selection`): rounds
of grid extensions until every selected lr is interior or capped, and the budget check (the
hypotheses' selected cells at twice the steps).

What one cell computes is :mod:`benchmarks.cells`; where cells run, :mod:`benchmarks.executors`.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import executors
from .backbones import backbone, weights_record
from .caches import Preparation
from .cells import key_environment
from .parts import Part
from .probes import Probes, needs_probes, uses_probe
from .selection import (
    BUDGET_CHECK_FACTOR,
    EXTENSION_CAP,
    budget_check_cells,
    cell_template,
    grid_extensions,
    runs_frame,
)
from .sizing import size_suite
from .sources import LowerFeatures, SourceModel
from .store import atomic_write, environment_record, read_runs, to_json, write_runs
from .suites import Cell, Experiment, Suite
from .training import resolve_device


@dataclass
class Outcome:
    """What one ``run_suite`` call did."""

    computed: int = 0
    skipped: int = 0
    failed: int = 0
    remaining: int = 0
    seconds: float = 0.0
    #: Whether the deadline stopped the run before its cells and guards were all done (run it again).
    cut: bool = False


def run_suite(suite: Suite, out: Path, cache_dir: Path, *, workers: int = 1, threads: int = 1,
              device_choice: str = "cpu", max_cells: int | None = None, progress: bool = True, command: str = "",
              report: Callable[[Path, Suite], None] | None = None, executor: str = "local",
              address: str | None = None, guards: bool = True, reuse: tuple[Path, ...] = (),
              part: Part | None = None, deadline: float | None = None) -> Outcome:
    """Run the suite's unfinished cells into ``out/runs.jsonl`` with ``workers`` processes of
    ``threads`` torch threads each (one process on CUDA), then, with ``guards``, the grid
    extensions and the budget check, then write the reports. A suite with a ``time_budget_s`` is
    first sized: one timed training step per experiment decides how many of its seeds run
    (:func:`benchmarks.sizing.size_suite`; written to ``out/sizing.json`` and reused when the run
    resumes). ``executor="ray"``: one Ray task per cell with
    ``threads`` CPUs, on a local cluster or the one at ``address`` (``workers`` is not used); the
    numbers are the same as with local processes. ``reuse``: other run folders whose finished
    records of this suite's cells (the same config and environment key, any lr or budget factor)
    count as done here, copied with their provenance (:func:`reusable_records`). ``part``: run only
    the cells of some experiments, targets and seeds (:class:`benchmarks.parts.Part`; the guards'
    cells too); the reports still cover the whole suite (*not run* where cells are missing).
    Preparations are made just before the cells that need them, only for those cells (with
    ``max_cells``, for the cells that will run). ``deadline`` (a ``time.monotonic()`` value): no cell
    starts after it (in-process; a pool's started cells finish); the rest count as not done.

    Raises:
        RuntimeError: ``device_choice="cuda"`` without a CUDA device.
        ValueError: an unknown executor, or a part naming what the suite does not have.
    """
    started, load_at_start = time.perf_counter(), os.getloadavg()
    part = part or Part()
    part.check(suite)
    device = resolve_device(device_choice, threads=threads)
    out.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        workers = 1
    sizing = None
    if suite.time_budget_s is not None:
        suite, sizing = _sized(suite, device, out / "sizing.json")
    if executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {executor!r}; known: local, ray")
    environment = key_environment(device)
    records = {record["key"]: record for record in read_runs(out / "runs.jsonl")}
    reused = reusable_records(suite, reuse, environment)
    for key, record in reused.items():
        records.setdefault(key, record)
    if executor == "ray":
        imap, close = executors.ray_executor(address, threads, cache_dir, environment, device.type)
    else:
        imap, close = executors.local_executor(workers, threads, cache_dir, environment, device.type)
    run = _SuiteRun(suite, out / "runs.jsonl", environment, imap, records, max_cells, progress, deadline)
    try:
        run.run_cells(part.select(suite.cells()), "grid")
        if guards:
            run.guards(part)
    finally:
        close()
    if run.drop_stale() or reused:  # reused records count as this folder's even when nothing new was computed
        run.write()
    outcome = run.outcome
    outcome.remaining = sum(not run.ok(key) for key in run.order)
    outcome.seconds = time.perf_counter() - started
    extra_record = {"suite": suite.name, "invocation": run.invocation, "wall_seconds": outcome.seconds,
                    "executor": executor, "workers": workers, "threads_per_cell": threads, "cells": len(run.order),
                    "computed": outcome.computed, "skipped": outcome.skipped, "failed": outcome.failed,
                    "not_done": outcome.remaining, "phases": run.phases,
                    "preparations": [{k: p.get(k) for k in ("label", "file", "seconds", "built_now", "source_accuracy",
                                                            "min_accuracy", "source_seed")} for p in run.prepared],
                    **({} if part.everything else {"part": part.describe()}),
                    "load_average_start": load_at_start, "load_average": os.getloadavg(), "sizing": sizing,
                    "reused": {"folders": [str(f) for f in reuse], "records": len(reused)} if reuse else None}
    environment_path = out / "environment.json"
    previous = json.loads(environment_path.read_text()) if environment_path.exists() else None
    atomic_write(environment_path, to_json(environment_record(device, command, extra_record, previous), indent=2))
    if report is not None:
        report(out, suite)
    return outcome


def _sized(suite: Suite, device: Any, path: Path) -> tuple[Suite, dict[str, Any]]:
    """The suite sized to its time budget (:func:`benchmarks.sizing.size_suite`) the first time, its
    seeds written to ``path``; on a resumed run, the seeds read back from it (the same cells, not a new
    sizing from another timed step)."""
    import dataclasses

    if path.exists():
        sizing = json.loads(path.read_text())
        experiments = tuple(dataclasses.replace(e, seeds=tuple(sizing["seed_values"][e.name]))
                            for e in suite.experiments)
        return dataclasses.replace(suite, experiments=experiments), {**sizing, "resumed": True}
    sized, sizing = size_suite(suite, device)
    sizing["seed_values"] = {e.name: list(e.seeds) for e in sized.experiments}
    atomic_write(path, to_json(sizing, indent=2))
    return sized, sizing


@dataclass
class _SuiteRun:
    """One ``run_suite`` call's cells: the records by key (``runs.jsonl``), the keys in the order the
    cells were planned, the preparations built and the phases run."""

    suite: Suite
    runs_path: Path
    environment: dict[str, Any]
    imap: Callable
    records: dict[str, dict[str, Any]]
    max_cells: int | None
    progress: bool
    deadline: float | None = None
    invocation: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    outcome: Outcome = field(default_factory=Outcome)
    order: list[str] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)
    prepared: list[dict[str, Any]] = field(default_factory=list)
    prepared_already: set[Preparation] = field(default_factory=set)

    def ok(self, key: str) -> bool:
        return self.records.get(key, {}).get("status") == "ok"

    def past_deadline(self) -> bool:
        """Whether the deadline has passed (then the run is marked ``cut``)."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.outcome.cut = True
        return self.outcome.cut

    def room(self) -> bool:
        """Whether ``max_cells`` and the deadline leave room for another cell."""
        if self.past_deadline():
            return False
        return self.max_cells is None or self.outcome.computed + self.outcome.failed < self.max_cells

    def write(self) -> None:
        """Write ``runs.jsonl``: the planned cells in order, then the records of cells not planned now."""
        planned = set(self.order)
        write_runs(self.runs_path, [self.records[k] for k in self.order if k in self.records]
                   + [r for k, r in self.records.items() if k not in planned])

    def prepare(self, cells: list[Cell]) -> None:
        """Build (once; later runs only check the checksums) the preparations ``cells`` need, wave by wave."""
        for wave in preparations(self.suite.experiments, cells):
            wave = [p for p in wave if p not in self.prepared_already]
            bar = tqdm(total=len(wave), desc=f"{self.suite.name} preparations", unit="job",
                       disable=not self.progress or not wave)
            for result in self.imap(executors.prepare_job, wave):
                self.prepared.append(result)
                bar.set_postfix_str(str(result.get("label", "")))
                bar.update(1)
            bar.close()
            self.prepared_already.update(wave)

    def run_cells(self, cells: list[Cell], phase: str) -> None:
        """Run the cells not done yet (as many as ``max_cells`` leaves), after their preparations;
        each record is written as it arrives."""
        keys = [cell.key(self.environment) for cell in cells]
        self.order.extend(k for k in keys if k not in self.order)
        pending = [(i, cell) for i, (cell, key) in enumerate(zip(cells, keys, strict=True)) if not self.ok(key)]
        if pending and self.past_deadline():
            pending = []  # past the deadline: no preparation, no cell (planned: they count as not done)
        if self.max_cells is not None:
            pending = pending[: max(0, self.max_cells - self.outcome.computed - self.outcome.failed)]
        self.outcome.skipped += len(cells) - len([k for k in keys if not self.ok(k)])
        self.prepare([cell for _, cell in pending])
        phase_started = time.perf_counter()
        bar = tqdm(total=len(cells), initial=len(cells) - len(pending), desc=f"{self.suite.name} {phase}",
                   unit="cell", disable=not self.progress, dynamic_ncols=True, smoothing=0)
        for index, result in self.imap(executors.cell_job, pending):
            cell, key = cells[index], keys[index]
            self.records[key] = {"key": key, "experiment": cell.experiment.name, "target": cell.target.name,
                                 "strategy": cell.strategy.name, "seed": cell.seed, "lr": cell.lr, "phase": phase,
                                 "config": cell.config(), "environment": self.environment,
                                 "invocation": self.invocation, "weights": weights_record(cell.experiment), **result}
            self.write()
            if result["status"] == "failed":
                self.outcome.failed += 1
                bar.write(f"FAILED {cell.label}: {result['error']}")
            else:
                self.outcome.computed += 1
            bar.update(1)
            if self.past_deadline():
                break  # the lazy in-process map starts no more cells
        bar.close()
        self.phases.append({"phase": phase, "cells": len(cells), "computed": len(pending),
                            "seconds": time.perf_counter() - phase_started})

    def frame(self) -> Any:
        return runs_frame(self.suite, [r for r in self.records.values() if r.get("status") == "ok"])

    def guards(self, part: Part) -> None:
        """Rounds of grid extensions (each moves an edge one candidate out), then the budget check."""
        for round_ in range(1, 2 * EXTENSION_CAP + 1):
            extra = [c for c in part.select(grid_extensions(self.suite, self.frame()))
                     if not self.ok(c.key(self.environment))]
            if not extra or not self.room():
                break
            self.run_cells(extra, f"extension {round_}")
        if self.room():
            checks = part.select(budget_check_cells(self.suite, self.frame()))
            if checks:
                self.run_cells(checks, f"budget x{BUDGET_CHECK_FACTOR}")

    def drop_stale(self) -> bool:
        """Forget the failed guard cells this run no longer plans (their selection changed: not a
        result, not pending); whether there were any."""
        stale = [k for k, r in self.records.items() if r.get("status") == "failed" and k not in set(self.order)]
        for key in stale:
            del self.records[key]
        return bool(stale)


def preparations(experiments: tuple[Experiment, ...],
                 cells: Sequence[Cell] | None = None) -> list[list[Preparation]]:
    """The preparations an experiment list needs, each once (experiments may share a source), in
    waves: source models and feature caches first, then the probes that are fitted on them. With
    ``cells``, only what those cells need: nothing for an experiment without a cell among them, the
    source models of their seeds only, and an experiment's probes only when one of them uses a probe
    (the probes are fitted for every seed of the experiment at once, so then every seed's source)."""
    first: list[Preparation] = []
    probes: list[Preparation] = []
    sources = set()
    for experiment in experiments:
        mine = None if cells is None else [c for c in cells if c.experiment == experiment]
        if mine is not None and not mine:
            continue
        wants_probes = needs_probes(experiment) if mine is None else any(uses_probe(c.strategy) for c in mine)
        seeds = experiment.seeds if mine is None or wants_probes else tuple(dict.fromkeys(c.seed for c in mine))
        if experiment.source.trained:
            for source in dict.fromkeys(experiment.source_for(seed) for seed in seeds):
                if (experiment.backbone, source) not in sources:
                    sources.add((experiment.backbone, source))
                    first.append(SourceModel(experiment, source.seed))
        if backbone(experiment.backbone).fed_features:
            first += [LowerFeatures(experiment, True), LowerFeatures(experiment, False)]
        if wants_probes:
            probes.append(Probes(experiment))
    return [wave for wave in (first, probes) if wave]


def reusable_records(suite: Suite, folders: tuple[Path, ...], environment: dict[str, Any]) -> dict[str, dict]:
    """The finished records in ``folders`` that are cells of ``suite`` (their config matches one of
    the suite's cells but for lr and budget, and they were computed under ``environment``), by key."""
    templates = {cell_template(cell.config()) for cell in suite.cells()}
    found: dict[str, dict] = {}
    for folder in folders:
        for record in read_runs(Path(folder) / "runs.jsonl"):
            if (record.get("status") == "ok" and record.get("environment") == environment
                    and cell_template(record.get("config") or {}) in templates):
                found.setdefault(record["key"], record)
    return found


def iter_pending(suite: Suite, out: Path, threads: int) -> Iterator[tuple[Cell, str, str]]:
    """(cell, key, status) of every cell: ``done``, ``failed`` or ``pending``."""
    environment = key_environment(resolve_device("cpu", threads=threads))
    status = {record["key"]: record.get("status") for record in read_runs(out / "runs.jsonl")}
    for cell in suite.cells():
        key = cell.key(environment)
        yield cell, key, {"ok": "done", "failed": "failed"}.get(status.get(key), "pending")
