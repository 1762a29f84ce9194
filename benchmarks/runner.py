"""Runs a suite, or a part of it (:mod:`benchmarks.parts`): every cell, in ``workers`` processes of
``threads`` torch threads each, each batch of cells after the preparations it needs (source
pretraining per source seed, Lite0 feature caches, then the linear probes); finished cells and
built preparations are skipped on re-runs. Then the guards (:mod:`benchmarks.selection`): rounds
of grid extensions until every selected lr is interior or capped, and the budget check (the
hypotheses' selected cells at twice the steps).

What one cell computes is :mod:`benchmarks.cells`; where cells run, :mod:`benchmarks.executors`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import executors
from .backbones import backbone, weights_record
from .caches import Preparation
from .cells import key_environment
from .parts import Part
from .probes import Probes, needs_probes, uses_probe
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


def run_suite(suite: Suite, out: Path, cache_dir: Path, *, workers: int = 1, threads: int = 1,
              device_choice: str = "cpu", max_cells: int | None = None, progress: bool = True, command: str = "",
              report: Callable[[Path, Suite], None] | None = None, executor: str = "local",
              address: str | None = None, guards: bool = True, reuse: tuple[Path, ...] = (),
              part: Part | None = None) -> Outcome:
    """Run the suite's unfinished cells into ``out/runs.jsonl`` with ``workers`` processes of
    ``threads`` torch threads each (one process on CUDA), then, with ``guards``, the grid
    extensions and the budget check, then write the reports. A suite with a ``time_budget_s`` is
    first sized: one timed training step per experiment decides how many of its seeds run
    (:func:`benchmarks.sizing.size_suite`). ``executor="ray"``: one Ray task per cell with
    ``threads`` CPUs, on a local cluster or the one at ``address`` (``workers`` is not used); the
    numbers are the same as with local processes. ``reuse``: other run folders whose finished
    records of this suite's cells (the same config and environment key, any lr or budget factor)
    count as done here, copied with their provenance (:func:`reusable_records`). ``part``: run only
    the cells of some experiments, targets and seeds (:class:`benchmarks.parts.Part`; the guards'
    cells too); the reports still cover the whole suite (*not run* where cells are missing).
    Preparations are made just before the cells that need them, only for those cells (with
    ``max_cells``, for the cells that will run).

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
        from .sizing import size_suite

        suite, sizing = size_suite(suite, device)
    if executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {executor!r}; known: local, ray")
    environment = key_environment(device)
    runs_path = out / "runs.jsonl"
    records = {record["key"]: record for record in read_runs(runs_path)}
    reused = reusable_records(suite, reuse, environment)
    for key, record in reused.items():
        records.setdefault(key, record)
    outcome = Outcome()
    invocation = uuid.uuid4().hex[:12]
    if executor == "ray":
        imap, close = executors.ray_executor(address, threads, cache_dir, environment, device.type)
    else:
        imap, close = executors.local_executor(workers, threads, cache_dir, environment, device.type)
    prepared: list[dict[str, Any]] = []
    prepared_already: set[Preparation] = set()

    def prepare(cells: list[Cell]) -> None:  # built once; later runs only check the checksums
        for wave in preparations(suite.experiments, cells):
            wave = [p for p in wave if p not in prepared_already]
            bar = tqdm(total=len(wave), desc=f"{suite.name} preparations", unit="job",
                       disable=not progress or not wave)
            for result in imap(executors.prepare_job, wave):
                prepared.append(result)
                bar.set_postfix_str(str(result.get("label", "")))
                bar.update(1)
            bar.close()
            prepared_already.update(wave)
    order: list[str] = []
    phases: list[dict[str, Any]] = []

    def run_cells(cells: list[Cell], phase: str) -> None:
        keys = [cell.key(environment) for cell in cells]
        order.extend(k for k in keys if k not in order)
        pending = [(i, cell) for i, (cell, key) in enumerate(zip(cells, keys))
                   if records.get(key, {}).get("status") != "ok"]
        if max_cells is not None:
            pending = pending[: max(0, max_cells - outcome.computed - outcome.failed)]
        outcome.skipped += len(cells) - len([k for k in keys if records.get(k, {}).get("status") != "ok"])
        prepare([cell for _, cell in pending])
        phase_started = time.perf_counter()
        bar = tqdm(total=len(cells), initial=len(cells) - len(pending), desc=f"{suite.name} {phase}", unit="cell",
                   disable=not progress, dynamic_ncols=True, smoothing=0)
        for index, result in imap(executors.cell_job, pending):
            cell, key = cells[index], keys[index]
            records[key] = {"key": key, "experiment": cell.experiment.name, "target": cell.target.name,
                            "strategy": cell.strategy.name, "seed": cell.seed, "lr": cell.lr, "phase": phase,
                            "config": cell.config(), "environment": environment, "invocation": invocation,
                            "weights": weights_record(cell.experiment), **result}
            write_runs(runs_path, [records[k] for k in order if k in records]
                       + [r for k, r in records.items() if k not in set(order)])
            if result["status"] == "failed":
                outcome.failed += 1
                bar.write(f"FAILED {cell.label}: {result['error']}")
            else:
                outcome.computed += 1
            bar.update(1)
        bar.close()
        phases.append({"phase": phase, "cells": len(cells), "computed": len(pending),
                       "seconds": time.perf_counter() - phase_started})

    def frame():
        from .selection import runs_frame

        return runs_frame(suite, [r for r in records.values() if r.get("status") == "ok"])

    try:
        run_cells(part.select(suite.cells()), "grid")
        if guards:
            from .selection import BUDGET_CHECK_FACTOR, EXTENSION_CAP, budget_check_cells, grid_extensions

            for round_ in range(1, 2 * EXTENSION_CAP + 1):  # each round moves an edge one candidate out
                extra = [c for c in part.select(grid_extensions(suite, frame()))
                         if records.get(c.key(environment), {}).get("status") != "ok"]
                if not extra or (max_cells is not None and outcome.computed + outcome.failed >= max_cells):
                    break
                run_cells(extra, f"extension {round_}")
            if max_cells is None or outcome.computed + outcome.failed < max_cells:
                checks = part.select(budget_check_cells(suite, frame()))
                if checks:
                    run_cells(checks, f"budget x{BUDGET_CHECK_FACTOR}")
    finally:
        close()
    stale = [k for k, r in records.items() if r.get("status") == "failed" and k not in set(order)]
    for key in stale:  # failed guard cells this run no longer plans (their selection changed): not a result, not pending
        del records[key]
    if stale or reused:  # reused records count as this folder's even when nothing new was computed
        write_runs(runs_path, [records[k] for k in order if k in records]
                   + [r for k, r in records.items() if k not in set(order)])
    outcome.remaining = sum(records.get(key, {}).get("status") != "ok" for key in order)
    outcome.seconds = time.perf_counter() - started
    extra_record = {"suite": suite.name, "invocation": invocation, "wall_seconds": outcome.seconds,
                    "executor": executor, "workers": workers, "threads_per_cell": threads, "cells": len(order),
                    "computed": outcome.computed, "skipped": outcome.skipped, "failed": outcome.failed,
                    "not_done": outcome.remaining, "phases": phases,
                    "preparations": [{k: p.get(k) for k in ("label", "file", "seconds", "built_now", "source_accuracy",
                                                            "min_accuracy", "source_seed")} for p in prepared],
                    **({} if part.everything else {"part": part.describe()}),
                    "load_average_start": load_at_start, "load_average": os.getloadavg(), "sizing": sizing,
                    "reused": {"folders": [str(f) for f in reuse], "records": len(reused)} if reuse else None}
    environment_path = out / "environment.json"
    import json

    previous = json.loads(environment_path.read_text()) if environment_path.exists() else None
    atomic_write(environment_path, to_json(environment_record(device, command, extra_record, previous), indent=2))
    if report is not None:
        report(out, suite)
    return outcome


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
    from .selection import cell_template

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
