"""Runs a suite: every cell fine-tunes a source backbone on its target task with one strategy and
records convergence and forgetting; finished cells are skipped on re-runs.

One cell:

1. Start from the source model (suite-pretrained and cached, or ImageNet EfficientNet-Lite0); measure
   its source performance and per-stage features on the source probe (the source test set, or the
   natural-image probes), keep its source head aside.
2. Seed torch with the cell's seed, put a fresh head for the target classes on, build the strategy
   (``lrgroups.recipes``) over AdamW, train ``steps`` steps; every ``eval_every`` steps evaluate on
   the target validation split (half of the target test images) and feed the recipe's early stopping.
3. Report the target test accuracy (the other half), then re-attach the source head and measure the
   source performance and features again: retention, backward transfer, per-stage relative weight
   distance and linear CKA. Then put the source model's BatchNorm running statistics back and
   measure source performance once more (``retention_source_bn_stats``): what is left when only the
   weights, not the normalisation statistics, carry the fine-tuning.

Resumable and safe: each cell's record is keyed by a hash of its config plus device type, CPU threads
and torch/timm/lrgroups versions; ``runs.jsonl`` is rewritten atomically after every cell, so an
interruption loses at most the cell in progress. A cell that raises is recorded with its traceback
(status ``failed``) and retried on the next run; the suite goes on.
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lrgroups import param_depths
from lrgroups.depth import find_head

from . import metrics
from .sources import SourceModel, load_tasks, model_normalize, source_model
from .store import atomic_write, environment_record, read_runs, to_json, versions, write_runs
from .suites import Cell, Suite
from .training import (
    Device,
    batches,
    peak_memory_mb,
    predict,
    predict_with_features,
    reset_peak_memory,
    steps_per_epoch,
    train_step,
)

#: Share of the run's best validation accuracy that "steps to 95%" waits for.
CONVERGED_FRACTION = 0.95


def key_environment(device: Device) -> dict[str, Any]:
    """What besides the config changes a cell's numbers: device type, CPU threads, library versions."""
    return {"device": device.type, "cpu_threads": device.threads, **versions()}


def split_validation(images: Tensor, labels: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Even positions -> validation, odd -> test (the test sets are laid out class by class, so each
    class is split in half)."""
    return (images[0::2], labels[0::2]), (images[1::2], labels[1::2])


def stage_labels(model: nn.Module) -> dict[str, str | None]:
    """Each parameter's coarse stage (timm ``group_matcher(coarse=True)`` depth) as a readable name:
    ``stem`` for depth 0, else the module path of its first parameter up to its first index
    (``layer2``, ``stages.1``, ``blocks.3``, ``head.norm``); the classifier's parameters map to None."""
    head = {id(param) for param in find_head(model).parameters()}
    depths = param_depths(model, coarse=True)
    names: dict[int, str] = {}
    labels: dict[str, str | None] = {}
    for name, param in model.named_parameters():
        if id(param) in head:
            labels[name] = None
            continue
        depth = depths[name]
        if depth not in names:
            parts = name.split(".")[:-1] or [name]
            cut = next((i for i, part in enumerate(parts) if part.isdigit()), len(parts) - 1)
            names[depth] = "stem" if depth == 0 else parts[0] if parts[0][-1].isdigit() else ".".join(parts[: cut + 1])
        labels[name] = names[depth]
    return labels


def norm_statistics(model: nn.Module) -> dict[str, Tensor]:
    """Copies of the running statistics of the model's BatchNorm layers (empty without any)."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
            if name.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _attach_head(model: nn.Module, num_classes: int, state: Mapping[str, Tensor] | None, device: Device) -> None:
    """Replace the classifier by a fresh one for ``num_classes`` (weights from ``state`` if given)."""
    model.reset_classifier(num_classes)
    if state is not None:
        find_head(model).load_state_dict(state)
    device.prepare(model)


def source_score(source: SourceModel, logits: Tensor, reference_logits: Tensor) -> float:
    """Source accuracy, or (ImageNet) top-1 agreement with the original model's predictions."""
    if source.probe_labels is not None:
        return metrics.accuracy(logits, source.probe_labels)
    return metrics.agreement(logits, reference_logits)


_REFERENCE: dict[tuple, tuple[Tensor, dict[str, Tensor]]] = {}


def _reference_outputs(cell: Cell, source: SourceModel, device: Device) -> tuple[Tensor, dict[str, Tensor]]:
    """The source model's logits and features on its probe, once per source model and probe."""
    grid = cell.grid
    key = (cell.backbone, cell.task.source, cell.task.source_kwargs, source.info.get("key"), grid.probes,
           grid.budget.image_size, grid.data_seed, device.type)
    if key not in _REFERENCE:
        _REFERENCE[key] = predict_with_features(source.model, source.probe_images, device)
    return _REFERENCE[key]


def fine_tune(
    model: nn.Module, cell: Cell, train: tuple[Tensor, Tensor], validation: tuple[Tensor, Tensor], device: Device
) -> dict[str, Any]:
    """Train with the cell's strategy; returns the validation curve and how the run ended."""
    budget = cell.grid.budget
    x_train, y_train = train
    recipe = cell.strategy.build_recipe()
    tuning = recipe.build(
        model, torch.optim.AdamW, lr=budget.lr, weight_decay=budget.weight_decay, total_steps=budget.steps,
        steps_per_epoch=steps_per_epoch(len(x_train), budget.batch_size),
    )
    order = batches(len(x_train), budget.batch_size, seed=cell.seed)
    curve: dict[str, list[float]] = {"step": [], "seconds": [], "val_accuracy": []}
    train_seconds = 0.0
    stopped, step = False, 0

    def evaluate() -> bool:
        accuracy = metrics.accuracy(predict(model, validation[0], device), validation[1])
        curve["step"].append(step)
        curve["seconds"].append(train_seconds)
        curve["val_accuracy"].append(accuracy)
        return tuning.after_validation(accuracy) if step else False

    evaluate()
    for step in range(1, budget.steps + 1):
        started = time.perf_counter()
        model.train()
        index = next(order)
        train_step(model, tuning.optimizer, x_train[index], y_train[index], device)
        tuning.after_step()
        device.synchronize()
        train_seconds += time.perf_counter() - started
        if (step % budget.eval_every == 0 or step == budget.steps) and evaluate():
            stopped = True
            break
    stopper = tuning.early_stopping
    return {
        "curve": curve,
        "steps_done": step,
        "train_seconds": train_seconds,
        "stopped": stopped,
        "stopped_early": stopped and step < budget.steps,
        "stop_step": step if stopped else None,
        "restored_step": stopper.plateau.best_step if stopped and stopper.restore_best else None,
        "unfreezing": None if tuning.unfreezing is None else tuning.unfreezing.history,
        "trainable_at_end": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def run_cell(cell: Cell, device: Device, environment: Mapping[str, Any], cache_dir: Path,
             status: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Fine-tune one cell and measure it; returns its record (raises on failure)."""
    started = time.perf_counter()
    memory_before = peak_memory_mb(device)
    reset_peak_memory(device)
    grid, budget = cell.grid, cell.grid.budget
    _, target = load_tasks(cell.task, budget.image_size, grid.data_seed)
    source = source_model(cell, device, environment, cache_dir, status)
    status(cell.label)
    model = source.model
    reference_logits, reference_features = _reference_outputs(cell, source, device)
    before = source_score(source, reference_logits, reference_logits)
    source_classes = reference_logits.shape[1]
    source_head = {name: t.detach().clone() for name, t in find_head(model).state_dict().items()}
    source_norm_stats = norm_statistics(model)

    torch.manual_seed(cell.seed)
    _attach_head(model, target.num_classes, None, device)
    stages = stage_labels(model)
    initial = {name: param.detach().clone() for name, param in model.named_parameters() if stages[name] is not None}
    x_train = model_normalize(model, target.x_train)
    validation, test = split_validation(model_normalize(model, target.x_test), target.y_test)
    run = fine_tune(model, cell, (x_train, target.y_train), validation, device)
    curve = run["curve"]
    if run["stopped"]:  # early stopping put the best weights back: evaluate those
        final_val = metrics.accuracy(predict(model, validation[0], device), validation[1])
    else:  # the last evaluation was at the last step, of these weights
        final_val = curve["val_accuracy"][-1]
    final_test = metrics.accuracy(predict(model, test[0], device), test[1])

    _attach_head(model, source_classes, source_head, device)
    logits, features = predict_with_features(model, source.probe_images, device)
    after = source_score(source, logits, reference_logits)
    after_source_stats = after
    if source_norm_stats:
        model.load_state_dict(source_norm_stats, strict=False)
        after_source_stats = source_score(source, predict(model, source.probe_images, device), reference_logits)
    auc_steps, auc_values = list(curve["step"]), list(curve["val_accuracy"])
    if auc_steps[-1] < budget.steps:  # stopped early: its restored weights stand for the rest of the budget
        auc_steps.append(budget.steps)
        auc_values.append(final_val)
    source_ok = source.info["min_accuracy"] is None or source.info["source_accuracy"] >= source.info["min_accuracy"]
    return {
        **run,
        "final_val_accuracy": final_val,
        "final_target_accuracy": final_test,
        "best_val_accuracy": max(curve["val_accuracy"]),
        "steps_to_95": metrics.steps_to_fraction(curve["step"], curve["val_accuracy"], CONVERGED_FRACTION),
        "seconds_to_95": metrics.steps_to_fraction(curve["seconds"], curve["val_accuracy"], CONVERGED_FRACTION),
        "auc": metrics.area_under_curve(auc_steps, auc_values),
        "source_metric": source.metric,
        "source_accuracy_before": before,
        "source_accuracy_after": after,
        "retention": metrics.retention(after, before),
        "source_accuracy_after_source_bn_stats": after_source_stats,
        "retention_source_bn_stats": metrics.retention(after_source_stats, before),
        "backward_transfer": metrics.backward_transfer(after, before),
        "source_ok": source_ok,
        "source_model": source.info,
        "weight_distance": metrics.per_stage_weight_distance(
            model, initial, lambda name: stages.get(name) if name in initial else None
        ),
        "cka": {name: metrics.linear_cka(reference_features[name], features[name]) for name in features},
        "num_train": len(x_train),
        "num_val": len(validation[0]),
        "num_test": len(test[0]),
        "wall_seconds": time.perf_counter() - started,
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_growth_mb": peak_memory_mb(device) - memory_before if device.type == "cpu" else None,
        "memory_measure": device.memory_measure,
    }


def _base_record(cell: Cell, key: str, device: Device, environment: Mapping[str, Any], invocation: str) -> dict[str, Any]:
    return {
        "key": key,
        "backbone": cell.backbone,
        "task": cell.task.name,
        "strategy": cell.strategy.name,
        "seed": cell.seed,
        "config": cell.config(),
        "environment": dict(environment),
        "device_name": device.name,
        "invocation": invocation,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def execute_cell(cell: Cell, key: str, device: Device, environment: Mapping[str, Any], cache_dir: Path,
                 invocation: str, status: Callable[[str], None]) -> dict[str, Any]:
    """Run one cell; a failure becomes a record with its error and traceback instead of an exception."""
    record = _base_record(cell, key, device, environment, invocation)
    started = time.perf_counter()
    try:
        record.update(run_cell(cell, device, environment, cache_dir, status), status="ok", error=None)
    except Exception as error:  # noqa: BLE001 - a failing cell must not stop the suite
        record.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(),
                      wall_seconds=time.perf_counter() - started)
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return record


@dataclass
class Outcome:
    """What one ``run_suite`` call did."""

    computed: int = 0
    skipped: int = 0
    failed: int = 0
    remaining: int = 0
    seconds: float = 0.0


def ordered_records(cells: Sequence[Cell], keys: Sequence[str], records: Mapping[str, dict]) -> list[dict]:
    """The suite's records in cell order, then records of other configurations (kept, not reported)."""
    current = [records[key] for key in keys if key in records]
    return current + [record for key, record in records.items() if key not in set(keys)]


def run_suite(suite: Suite, out: Path, cache_dir: Path, device: Device, *, max_cells: int | None = None,
              progress: bool = True, command: str = "", report: Callable[[Path, Suite], None] | None = None) -> Outcome:
    """Run the suite's unfinished cells into ``out`` (runs.jsonl), then write the reports."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    environment = key_environment(device)
    cells = suite.cells()
    keys = [cell.key(environment) for cell in cells]
    runs_path = out / "runs.jsonl"
    records = {record["key"]: record for record in read_runs(runs_path)}
    done = {key for key, record in records.items() if record.get("status") == "ok"}
    outcome = Outcome(skipped=sum(key in done for key in keys))
    invocation = uuid.uuid4().hex[:12]
    bar = tqdm(total=len(cells), initial=outcome.skipped, desc=suite.name, unit="cell", disable=not progress,
               dynamic_ncols=True, smoothing=0)
    try:
        for cell, key in zip(cells, keys):
            if key in done:
                continue
            if max_cells is not None and outcome.computed >= max_cells:
                break
            record = execute_cell(cell, key, device, environment, cache_dir, invocation, bar.set_postfix_str)
            records[key] = record
            write_runs(runs_path, ordered_records(cells, keys, records))
            outcome.computed += 1
            outcome.failed += record["status"] == "failed"
            if record["status"] == "failed":
                bar.write(f"FAILED {cell.label}: {record['error']}")
            bar.update(1)
    finally:
        bar.close()
    outcome.remaining = sum(records.get(key, {}).get("status") != "ok" for key in keys)
    outcome.seconds = time.perf_counter() - started
    extra = {"suite": suite.name, "invocation": invocation, "wall_seconds": outcome.seconds,
             "cells": len(cells), "computed": outcome.computed, "skipped": outcome.skipped,
             "failed": outcome.failed, "not_done": outcome.remaining}
    environment_path = out / "environment.json"
    previous = json.loads(environment_path.read_text()) if environment_path.exists() else None
    atomic_write(environment_path, to_json(environment_record(device, command, extra, previous), indent=2))
    if report is not None:
        report(out, suite)
    return outcome
