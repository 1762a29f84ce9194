"""Sizing a suite with a ``time_budget_s`` (a config's) from a timed training step (one step per
experiment's backbone, bf16 autocast and channels_last on CUDA), before any cell runs; and the
time estimate ``run --dry-run`` prints (:func:`estimate`). The built-in GPU run is planned by
:mod:`benchmarks.gpu` instead (every evaluation and guard counted).

Example:
    >>> seeds_that_fit({"a": 0.01}, {"a": 300}, {"a": (0, 1, 2, 3)}, budget_s=7.0)
    {'a': (0, 1)}
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .backbones import backbone
from .sources import source_backbone
from .suites import Cell, Experiment, Suite
from .training import Device, train_step

#: A cell costs its training steps times this (evaluations, probes, WiSE-FT interpolations).
OVERHEAD = 1.5
#: Never fewer seeds than this (a paired interval needs 2).
MIN_SEEDS = 2


def input_shape(experiment: Experiment) -> tuple[int, int, int]:
    """(channels, height, width) of the experiment's backbone input.

    Raises:
        ValueError: a backbone fed cached features (nothing to time on images).
    """
    return backbone(experiment.backbone).input_shape(experiment.image_size)


def time_one_step(experiment: Experiment, device: Device, repeats: int = 3, batch: int | None = None) -> float:
    """Median seconds of one AdamW training step of the experiment's (random-init) backbone on
    ``device`` at its batch size, after two warm-up steps. With ``batch`` (smaller than the batch
    size) the step is timed at ``batch`` images and scaled linearly to the batch size: a cheap
    estimate (the ``--dry-run`` one), not the sizing's measurement."""
    model, _ = source_backbone(experiment, False, None, {})  # type: ignore[arg-type]
    model.reset_classifier(experiment.targets[0].num_classes)
    model = device.prepare(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = experiment.budget.batch_size if batch is None else min(batch, experiment.budget.batch_size)
    images = torch.randn(size, *input_shape(experiment))
    labels = torch.zeros(size, dtype=torch.int64)
    times = []
    for index in range(2 + repeats):
        device.synchronize()
        started = time.perf_counter()
        train_step(model, optimizer, images, labels, device)
        device.synchronize()
        if index >= 2:
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2] * experiment.budget.batch_size / size


def seeds_that_fit(step_seconds: Mapping[str, float], steps_per_seed: Mapping[str, int],
                   seeds: Mapping[str, tuple[int, ...]], budget_s: float) -> dict[str, tuple[int, ...]]:
    """The same number k of seeds for every experiment (its first k), the largest whose cost
    ``sum(step_seconds * steps_per_seed * OVERHEAD) * k`` fits ``budget_s``; at least MIN_SEEDS,
    at most each experiment's own number."""
    per_seed = sum(step_seconds[name] * steps_per_seed[name] * OVERHEAD for name in seeds)
    k = int(budget_s // per_seed) if per_seed > 0 else max(len(s) for s in seeds.values())
    return {name: tuple(s[: max(MIN_SEEDS, min(k, len(s)))]) for name, s in seeds.items()}


def size_suite(suite: Suite, device: Device) -> tuple[Suite, dict[str, Any]]:
    """The suite with each experiment's seeds cut to fit ``suite.time_budget_s``, and what was measured."""
    step_seconds = {e.name: time_one_step(e, device) for e in suite.experiments}
    steps_per_seed = {e.name: e.budget.steps * len(e.targets) * sum(len(e.grid(s)) for s in e.strategies
                                                                    if s.kind in ("finetune", "scratch"))
                      for e in suite.experiments}
    chosen = seeds_that_fit(step_seconds, steps_per_seed, {e.name: e.seeds for e in suite.experiments},
                            suite.time_budget_s)
    sized = dataclasses.replace(suite, experiments=tuple(dataclasses.replace(e, seeds=chosen[e.name])
                                                         for e in suite.experiments))
    return sized, {"step_seconds": step_seconds, "seeds": {k: len(v) for k, v in chosen.items()},
                   "budget_s": suite.time_budget_s}


@dataclass(frozen=True)
class Estimate:
    """The time cells will take, and what it rests on: ``seconds`` of cell and source-pretraining
    time in all; ``basis``: one line per kind of evidence; ``not_counted``: what has no estimate."""

    seconds: float
    basis: tuple[str, ...]
    not_counted: tuple[str, ...]


def estimate(cells: Sequence[Cell], records: Sequence[Mapping[str, Any]], sources: Sequence[Experiment],
             step_seconds: Callable[[Experiment], float]) -> Estimate:
    """What running ``cells`` costs, from measured costs: a cell whose experiment and strategy have
    finished cells in ``records`` (at the experiment's budget) takes their median ``wall_seconds``;
    another fine-tuning or scratch cell its budget's steps times ``step_seconds(experiment)`` (one
    timed training step, :func:`time_one_step`) times OVERHEAD; a source pretraining (one per entry
    of ``sources``) its steps times the timed step, scaled to the source's batch size. Probe and
    pixel cells without a finished one, Lite0 feature caches and probes are not counted, nor the
    cells the guards add during the run."""
    measured: dict[tuple[str, str], list[float]] = {}
    for record in records:
        budget = (record.get("config") or {}).get("budget")
        if record.get("status") == "ok" and record.get("wall_seconds") is not None:
            measured.setdefault((record["experiment"], record["strategy"], str(budget)), []).append(
                float(record["wall_seconds"]))
    steps: dict[str, float | None] = {}

    def step(experiment: Experiment) -> float | None:
        if experiment.name not in steps:
            try:
                steps[experiment.name] = step_seconds(experiment)
            except ValueError:  # a backbone fed cached features: no images to time
                steps[experiment.name] = None
        return steps[experiment.name]

    total, from_records, from_steps, untimed, other = 0.0, 0, 0, 0, 0
    for cell in cells:
        budget = str(dataclasses.asdict(cell.experiment.budget))
        seen = measured.get((cell.experiment.name, cell.strategy.name, budget))
        if seen:
            total += sorted(seen)[len(seen) // 2]
            from_records += 1
        elif cell.strategy.kind not in ("finetune", "scratch"):
            other += 1
        elif (seconds := step(cell.experiment)) is None:
            untimed += 1
        else:
            total += seconds * cell.experiment.budget.steps * OVERHEAD
            from_steps += 1
    pretrainings = 0
    for experiment in sources:
        if (seconds := step(experiment)) is not None:
            total += seconds * experiment.source.steps * experiment.source.batch_size / experiment.budget.batch_size
            pretrainings += 1
    basis = [f"{from_records} cells at the median wall time of finished cells of their experiment and strategy",
             f"{from_steps} cells at one timed training step x their steps x {OVERHEAD} (evaluations, probes)",
             f"{pretrainings} source pretrainings at the timed step x their steps"]
    not_counted = [f"{other} probe and pixel cells (no finished one to measure)" if other else "",
                   f"{untimed} cells of backbones fed cached features (no step timed)" if untimed else "",
                   "feature caches and probes", "the cells the guards add during the run"]
    return Estimate(total, tuple(b for b in basis if not b.startswith("0 ")), tuple(n for n in not_counted if n))
