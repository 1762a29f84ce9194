"""Runs a suite: preparations first (source pretraining, Lite0 feature caches), then every cell, in
``workers`` processes of ``threads`` torch threads each; finished cells are skipped on re-runs.

One fine-tuning cell (``kind`` finetune or scratch):

1. Build the backbone (suite-pretrained, ImageNet Lite0 top, or random init for scratch), seeded by
   the cell seed; keep the source head (Lee et al.'s protocol) or put a zero-initialised head on.
   Pretrained backbones have every BatchNorm frozen (``lrgroups.norms.freeze_norm_stats``).
2. Build the strategy (``lrgroups.recipes``) over AdamW at the cell's lr, warm-up then cosine to 0,
   ``Budget.steps`` steps; evaluate on validation every ``eval_every`` steps.
3. Measure test (and OOD) accuracy; CKA between the start's and the end's penultimate features on
   the OOD (else test) images; with a labelled source: source test accuracy with the source head,
   weights only (BatchNorm statistics as they are) and after ``lrgroups.norms.precise_bn`` on the
   source training images, each against the source model measured the same way (retention =
   after / before); WiSE-FT interpolations for ``wise`` strategies.

Probe and pixel cells fit scikit-learn's logistic regression (closed form to convergence).

Numbers depend on the cell's config, the torch thread count and library versions only (every cell
seeds itself; deterministic algorithms are requested), not on the process layout. ``runs.jsonl`` is
rewritten atomically after every cell; a cell that raises is recorded as failed and retried next time.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import lrgroups
from lrgroups import recipes
from lrgroups.depth import find_head
from lrgroups.norms import freeze_norm_stats, precise_bn

from . import metrics
from .sources import (
    CellData,
    Preparation,
    cell_data,
    ensure,
    model_inputs,
    preparations,
    source_backbone,
    warmup_cosine,
)
from .store import atomic_write, environment_record, read_runs, to_json, versions, write_runs
from .suites import WISE_ALPHAS, Cell, Suite
from .training import Device, batches, predict, resolve_device, steps_per_epoch, train_step

#: A run still improves when its last validation accuracy beats its best at or before 75% of the
#: budget by more than this (4 images of a 200-image validation set).
IMPROVING_TOLERANCE = 0.02


def key_environment(device: Device) -> dict[str, Any]:
    """What besides the config changes a cell's numbers: device type, torch threads, library versions."""
    return {"device": device.type, "cpu_threads": device.threads, **versions()}


def still_improving(steps: list[int], values: list[float], total: int) -> bool:
    """Whether the last validation value exceeds the best one at or before 75% of ``total`` steps
    by more than IMPROVING_TOLERANCE."""
    early = [v for s, v in zip(steps, values) if s <= 0.75 * total]
    return bool(early) and values[-1] - max(early) > IMPROVING_TOLERANCE


# --- Closed-form cells -----------------------------------------------------------------------------


def _logistic(x_train: np.ndarray, y_train: np.ndarray, C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(C=C, max_iter=2000).fit(scaler.transform(x_train), y_train)
    return lambda x: model.predict(scaler.transform(x))


def pixel_cell(cell: Cell, data: CellData) -> dict[str, Any]:
    """The pixel baseline: standardised raw pixels, L2 logistic regression with C = the cell's lr."""
    flat = {name: getattr(data, name).pixels.flatten(1).numpy() for name in ("train", "val", "test")}
    predict_fn = _logistic(flat["train"], data.train.labels.numpy(), cell.lr)
    record = {name: float((predict_fn(flat[name]) == getattr(data, name).labels.numpy()).mean())
              for name in ("val", "test")}
    out = {"val_accuracy": record["val"], "test_accuracy": record["test"]}
    if data.ood is not None:
        out["ood_accuracy"] = float((predict_fn(data.ood.pixels.flatten(1).numpy()) == data.ood.labels.numpy()).mean())
    return out


def penultimate(model: nn.Module, x: Tensor) -> Tensor:
    """What the head receives (``lrgroups.recipes.head_features``, eval mode), float32 on the CPU."""
    device = next(model.parameters()).device
    return torch.cat([recipes.head_features(model, x[i : i + 250].to(device), batch_size=250).float().cpu()
                      for i in range(0, len(x), 250)])


def probe_head(model: nn.Module, x_train: Tensor, y_train: Tensor, C: float) -> None:
    """Fit the head in closed form on the frozen backbone's features (``lrgroups.recipes.fit_linear_probe``)."""
    weight, bias = recipes.fit_linear_probe(penultimate(model, x_train), y_train, C=C)
    recipes.set_linear_head(find_head(model), weight, bias)


# --- Fine-tuning cells -----------------------------------------------------------------------------


@dataclass
class Inputs:
    """Model inputs of a cell's splits."""

    train: Tensor
    val: Tensor
    test: Tensor
    ood: Tensor | None


def _inputs(cell: Cell, data: CellData, pretrained: bool, cache_dir: Path, environment: Mapping[str, Any]) -> Inputs:
    get = partial(model_inputs, cell.experiment, cell.target, cell.seed, pretrained=pretrained, cache_dir=cache_dir,
                  environment=environment)
    return Inputs(*(get(split_name=name, split=getattr(data, name)) for name in ("train", "val", "test")),
                  None if data.ood is None else get(split_name="ood", split=data.ood))


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, device: Device) -> float:
    return metrics.accuracy(predict(model, x, device), y)


def _source_scores(model: nn.Module, data: CellData, device: Device) -> tuple[float, float]:
    """Source test accuracy: weights only (BatchNorm statistics as they are), then after precise BN
    on the source training images (the model's statistics are re-estimated in place)."""
    from .sources import normalized

    x_test, x_train = normalized(data.source_test.pixels), normalized(data.source_train.pixels)
    weights_only = _accuracy(model, x_test, data.source_test.labels, device)
    precise_bn(model, (x_train[i : i + 200] for i in range(0, len(x_train), 200)))
    return weights_only, _accuracy(model, x_test, data.source_test.labels, device)


def build_recipe(cell: Cell) -> recipes.Recipe:
    return recipes.RECIPES[cell.strategy.recipe](**dict(cell.strategy.kwargs))


def finetune_cell(cell: Cell, data: CellData, device: Device, cache_dir: Path,
                  environment: Mapping[str, Any]) -> dict[str, Any]:
    """Fine-tune one cell (pretrained backbone, or random init for scratch) and measure it."""
    experiment, budget, strategy = cell.experiment, cell.experiment.budget, cell.strategy
    pretrained = strategy.kind == "finetune"
    torch.manual_seed(cell.seed)
    model, source_meta = source_backbone(experiment, pretrained, cache_dir, environment)
    source_head = copy.deepcopy(find_head(model))
    if not experiment.keep_source_head:
        model.reset_classifier(cell.target.num_classes)
        nn.init.zeros_(find_head(model).weight)
        nn.init.zeros_(find_head(model).bias)
    model = device.prepare(model)
    x = _inputs(cell, data, pretrained, cache_dir, environment)
    y_train = data.train.labels
    frozen_norms = freeze_norm_stats(model) if pretrained and experiment.bn == "frozen" else None

    before = None
    if data.source_test is not None and pretrained:  # the source model, as is and after precise BN
        before = _source_scores(_with_head(model, source_head), data, device)
    recipe = build_recipe(cell)
    extra = {"probe": lambda m: (penultimate(m, x.train), y_train)} if recipe.probe_C is not None else {}
    tuning = recipe.build(model, torch.optim.AdamW, lr=cell.lr, weight_decay=budget.weight_decay,
                          total_steps=budget.steps, steps_per_epoch=steps_per_epoch(len(y_train), budget.batch_size),
                          **extra)
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start_features = penultimate(model, x.ood if x.ood is not None else x.test)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        tuning.optimizer, partial(warmup_cosine, warmup=budget.warmup_steps, total=budget.steps))
    order = batches(len(y_train), budget.batch_size, seed=cell.seed)
    curve: dict[str, list] = {"step": [0], "val_accuracy": [_accuracy(model, x.val, data.val.labels, device)]}
    train_seconds = 0.0
    for step in range(1, budget.steps + 1):
        started = time.perf_counter()
        model.train()
        index = next(order)
        train_step(model, tuning.optimizer, x.train[index], y_train[index], device)
        schedule.step()
        tuning.after_step()
        train_seconds += time.perf_counter() - started
        if step % budget.eval_every == 0 or step == budget.steps:
            curve["step"].append(step)
            curve["val_accuracy"].append(_accuracy(model, x.val, data.val.labels, device))
            tuning.after_validation(curve["val_accuracy"][-1])
    record: dict[str, Any] = {
        "val_accuracy": curve["val_accuracy"][-1],
        "test_accuracy": _accuracy(model, x.test, data.test.labels, device),
        "curve": curve,
        "train_seconds": train_seconds,
        "still_improving": still_improving(curve["step"], curve["val_accuracy"], budget.steps),
        "trainable_at_end": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "source_model": source_meta if isinstance(source_meta, dict) else {},
    }
    if x.ood is not None:
        record["ood_accuracy"] = _accuracy(model, x.ood, data.ood.labels, device)
    end_features = penultimate(model, x.ood if x.ood is not None else x.test)
    record["ood_cka" if x.ood is not None else "test_cka"] = metrics.linear_cka(start_features, end_features)
    if strategy.wise:
        record["variants"] = _wise(cell, model, start_state, x, data, device)
    if frozen_norms is not None:
        frozen_norms.remove()
    if before is not None:
        after = _source_scores(_with_head(model, source_head), data, device)
        record.update(source_accuracy_before=before[0], source_accuracy_after=after[0],
                      source_accuracy_before_precise_bn=before[1], source_accuracy_after_precise_bn=after[1],
                      retention_weights_only=metrics.retention(after[0], before[0]),
                      retention_precise_bn=metrics.retention(after[1], before[1]))
    return record


def _source_x(data: CellData) -> Tensor:
    from .sources import normalized

    return normalized(data.source_test.pixels)


def _with_head(model: nn.Module, source_head: nn.Module) -> nn.Module:
    """A copy of ``model`` with the source head (the label space of the source test set)."""
    copy_ = copy.deepcopy(model)
    head_name = next(name for name, module in copy_.named_modules() if module is find_head(copy_))
    parent = copy_.get_submodule(head_name.rpartition(".")[0]) if "." in head_name else copy_
    setattr(parent, head_name.rpartition(".")[2], copy.deepcopy(source_head))
    return copy_


def _wise(cell: Cell, model: nn.Module, start: Mapping[str, Tensor], x: Inputs, data: CellData,
          device: Device) -> dict[str, dict[str, float]]:
    """WiSE-FT (Wortsman et al., 2022): accuracies of ``(1 - alpha) * start + alpha * end`` for each alpha."""
    end = {k: v.detach().clone() for k, v in model.state_dict().items()}
    variants = {}
    for alpha in WISE_ALPHAS:
        model.load_state_dict(lrgroups.wise_ft(start, end, alpha))
        row = {"test_accuracy": _accuracy(model, x.test, data.test.labels, device)}
        if x.ood is not None:
            row["ood_accuracy"] = _accuracy(model, x.ood, data.ood.labels, device)
        variants[f"{cell.strategy.name}+wise_{alpha}"] = row
    model.load_state_dict(end)
    return variants


def probe_cell(cell: Cell, data: CellData, device: Device, cache_dir: Path,
               environment: Mapping[str, Any]) -> dict[str, Any]:
    """The linear probe: closed-form head on the frozen pretrained backbone's features, C = the cell's lr."""
    model, _ = source_backbone(cell.experiment, True, cache_dir, environment)
    model.reset_classifier(cell.target.num_classes)
    model = device.prepare(model)
    x = _inputs(cell, data, True, cache_dir, environment)
    probe_head(model, x.train, data.train.labels, C=cell.lr)
    record = {"val_accuracy": _accuracy(model, x.val, data.val.labels, device),
              "test_accuracy": _accuracy(model, x.test, data.test.labels, device), "still_improving": False}
    if x.ood is not None:
        record["ood_accuracy"] = _accuracy(model, x.ood, data.ood.labels, device)
        record["ood_cka"] = 1.0
    if data.source_test is not None:
        record.update(retention_weights_only=1.0, retention_precise_bn=1.0)
    return record


def run_cell(cell: Cell, device: Device, cache_dir: Path, environment: Mapping[str, Any]) -> dict[str, Any]:
    """Run one cell; returns its measurements (raises on failure)."""
    data = cell_data(cell.experiment, cell.target, cell.seed)
    kind = cell.strategy.kind
    if kind == "pixel":
        return {**pixel_cell(cell, data), "still_improving": False}
    if kind == "probe":
        return probe_cell(cell, data, device, cache_dir, environment)
    return finetune_cell(cell, data, device, cache_dir, environment)


# --- Executing a suite -----------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(threads: int, cache_dir: Path, environment: Mapping[str, Any], device_choice: str = "cpu") -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    device = resolve_device(device_choice, threads=threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    _WORKER.update(device=device, cache_dir=cache_dir, environment=dict(environment))


def _prepare_job(preparation: Preparation) -> dict[str, Any]:
    return ensure(preparation, _WORKER["cache_dir"], _WORKER["environment"], _WORKER["device"])


def _cell_job(job: tuple[int, Cell]) -> tuple[int, dict[str, Any]]:
    index, cell = job
    started = time.perf_counter()
    record: dict[str, Any] = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "worker_pid": os.getpid()}
    try:
        torch.manual_seed(cell.seed)
        record.update(run_cell(cell, _WORKER["device"], _WORKER["cache_dir"], _WORKER["environment"]),
                      status="ok", error=None)
    except Exception as error:  # noqa: BLE001 - a failing cell must not stop the suite
        record.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    record["wall_seconds"] = time.perf_counter() - started
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return index, record


@dataclass
class Outcome:
    """What one ``run_suite`` call did."""

    computed: int = 0
    skipped: int = 0
    failed: int = 0
    remaining: int = 0
    seconds: float = 0.0


def _mapper(workers: int, threads: int, cache_dir: Path, environment: Mapping[str, Any], device_choice: str):
    """(imap_unordered-like function, closer): a process pool of ``workers``, or in-process for 1."""
    if workers <= 1:
        _init_worker(threads, cache_dir, environment, device_choice)
        return (lambda fn, items: map(fn, items)), (lambda: None)
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker,
                                                     initargs=(threads, cache_dir, dict(environment), device_choice))
    return (lambda fn, items: pool.imap_unordered(fn, items)), pool.terminate


def _ray_job(fn: Callable[[Any], Any], item: Any, threads: int, cache_dir: Path, environment: Mapping[str, Any],
             device_choice: str) -> Any:
    """One Ray task: set up this worker process once per configuration (as a pool worker is), run ``fn(item)``."""
    import json

    config = json.dumps([threads, str(cache_dir), environment, device_choice], sort_keys=True, default=str)
    if _WORKER.get("config") != config:
        _init_worker(threads, cache_dir, environment, device_choice)
        _WORKER["config"] = config
    return fn(item)


def _ray_mapper(address: str | None, threads: int, cache_dir: Path, environment: Mapping[str, Any],
                device_choice: str):
    """(imap_unordered-like function, closer) over Ray: one task per item with ``threads`` CPUs (and
    a GPU on CUDA), results as they finish. ``address=None`` starts a local cluster (shut down by the
    closer); else joins the cluster at ``address`` (whose workers must import ``benchmarks``)."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(address=address, include_dashboard=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_WAIT_POLICY": "PASSIVE"}})
    remote = ray.remote(num_cpus=threads, num_gpus=1 if device_choice == "cuda" else 0)(_ray_job)

    def imap(fn: Callable[[Any], Any], items: Any) -> Iterator[Any]:
        pending = [remote.remote(fn, item, threads, cache_dir, dict(environment), device_choice) for item in items]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    return imap, (ray.shutdown if started_here else (lambda: None))


def run_suite(suite: Suite, out: Path, cache_dir: Path, *, workers: int = 1, threads: int = 1,
              device_choice: str = "cpu", max_cells: int | None = None, progress: bool = True, command: str = "",
              report: Callable[[Path, Suite], None] | None = None, executor: str = "local",
              address: str | None = None) -> Outcome:
    """Run the suite's unfinished cells into ``out/runs.jsonl`` with ``workers`` processes of
    ``threads`` torch threads each (one process on CUDA), then write the reports. A suite with a
    ``time_budget_s`` is first sized: one timed training step per experiment decides how many of
    its seeds run (:func:`benchmarks.sizing.size_suite`). ``executor="ray"``: one Ray task per cell
    with ``threads`` CPUs, on a local cluster or the one at ``address`` (``workers`` is not used);
    the numbers are the same as with local processes.

    Raises:
        RuntimeError: ``device_choice="cuda"`` without a CUDA device.
    """
    started, load_at_start = time.perf_counter(), os.getloadavg()
    device = resolve_device(device_choice, threads=threads)
    out.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        workers = 1
    sizing = None
    if suite.time_budget_s is not None:
        from .sizing import size_suite

        suite, sizing = size_suite(suite, device)
    environment = key_environment(device)
    cells = suite.cells()
    keys = [cell.key(environment) for cell in cells]
    runs_path = out / "runs.jsonl"
    records = {record["key"]: record for record in read_runs(runs_path)}
    done = {key for key, record in records.items() if record.get("status") == "ok"}
    pending = [(i, cell) for i, (cell, key) in enumerate(zip(cells, keys)) if key not in done]
    if max_cells is not None:
        pending = pending[:max_cells]
    outcome = Outcome(skipped=len(cells) - len([k for k in keys if k not in done]))
    invocation = uuid.uuid4().hex[:12]
    if executor == "ray":
        imap, close = _ray_mapper(address, threads, cache_dir, environment, device.type)
    elif executor == "local":
        imap, close = _mapper(workers, threads, cache_dir, environment, device.type)
    else:
        raise ValueError(f"unknown executor {executor!r}; known: local, ray")
    prepared: list[dict[str, Any]] = []
    try:
        needed = preparations(tuple(dict.fromkeys(cell.experiment for _, cell in pending)))
        prepared = list(imap(_prepare_job, needed))
        bar = tqdm(total=len(cells), initial=outcome.skipped, desc=suite.name, unit="cell", disable=not progress,
                   dynamic_ncols=True, smoothing=0)
        for index, result in imap(_cell_job, pending):
            cell, key = cells[index], keys[index]
            records[key] = {"key": key, "experiment": cell.experiment.name, "target": cell.target.name,
                            "strategy": cell.strategy.name, "seed": cell.seed, "lr": cell.lr,
                            "config": cell.config(), "environment": environment, "invocation": invocation,
                            **result}
            write_runs(runs_path, [records[k] for k in keys if k in records]
                       + [r for k, r in records.items() if k not in set(keys)])
            outcome.computed += 1
            outcome.failed += result["status"] == "failed"
            if result["status"] == "failed":
                bar.write(f"FAILED {cell.label}: {result['error']}")
            bar.update(1)
        bar.close()
    finally:
        close()
    outcome.remaining = sum(records.get(key, {}).get("status") != "ok" for key in keys)
    outcome.seconds = time.perf_counter() - started
    extra = {"suite": suite.name, "invocation": invocation, "wall_seconds": outcome.seconds, "executor": executor,
             "workers": workers,
             "threads_per_cell": threads, "cells": len(cells), "computed": outcome.computed,
             "skipped": outcome.skipped, "failed": outcome.failed, "not_done": outcome.remaining,
             "preparations": [{k: p.get(k) for k in ("label", "file", "seconds", "built_now", "source_accuracy",
                                                     "min_accuracy")} for p in prepared],
             "load_average_start": load_at_start, "load_average": os.getloadavg(), "sizing": sizing}
    environment_path = out / "environment.json"
    import json

    previous = json.loads(environment_path.read_text()) if environment_path.exists() else None
    atomic_write(environment_path, to_json(environment_record(device, command, extra, previous), indent=2))
    if report is not None:
        report(out, suite)
    return outcome


def iter_pending(suite: Suite, out: Path, threads: int) -> Iterator[tuple[Cell, str, str]]:
    """(cell, key, status) of every cell: ``done``, ``failed`` or ``pending``."""
    environment = key_environment(resolve_device("cpu", threads=threads))
    status = {record["key"]: record.get("status") for record in read_runs(out / "runs.jsonl")}
    for cell in suite.cells():
        key = cell.key(environment)
        yield cell, key, {"ok": "done", "failed": "failed"}.get(status.get(key), "pending")
