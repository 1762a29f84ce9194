"""Runs a suite: preparations first (source pretraining per source seed, Lite0 feature caches,
then the linear probes), then every cell, in ``workers`` processes of ``threads`` torch threads
each; finished cells are skipped on re-runs. Then the guards (:mod:`benchmarks.selection`): rounds
of grid extensions until every selected lr is interior or capped, and the budget check (the
hypotheses' selected cells at twice the steps).

One fine-tuning cell (``kind`` finetune or scratch):

1. Build the backbone (suite-pretrained from the cell's source seed, ImageNet Lite0 top, or random
   init for scratch), seeded by the cell seed; keep the source head (Lee et al.'s protocol) or put
   a zero-initialised head on (LP-FT: the seed's validation-selected linear probe). Pretrained
   backbones have every BatchNorm frozen (``lrgroups.norms.freeze_norm_stats``) unless ``bn="train"``.
2. Build the strategy (``lrgroups.recipes``) over AdamW at the cell's lr, warm-up then cosine to 0,
   ``Budget.steps`` steps; evaluate on validation every ``eval_every`` steps (and, with
   ``track_forgetting``, test accuracy and precise-BN source retention).
3. Measure test accuracy and OOD accuracy per corruption; linear CKA between the start's and the
   end's penultimate features on the OOD (else test) images and on the ID training images; the
   normalised validation AUC and the validation accuracy at a quarter of the budget; with a
   labelled source: source test accuracy with the source head, weights only and after
   ``lrgroups.norms.precise_bn`` on the source training images (none without BatchNorm: the two
   coincide for LayerNorm backbones), each against the source model
   measured the same way (retention = after / before; backward transfer = after - before);
   WiSE-FT interpolations for ``wise`` strategies, from the run's start (for LP-FT the pretrained
   body with the linear probe as head: the zero-shot analogue) to its end point.

Probe cells read the cached closed-form probes (:mod:`benchmarks.probes`); pixel cells fit
scikit-learn's logistic regression.

Numbers depend on the cell's config, the torch thread count and library versions only (every cell
seeds itself; deterministic algorithms are requested), not on the process layout. ``runs.jsonl`` is
rewritten atomically after every cell; a cell that raises is recorded as failed and retried next time.
"""

from __future__ import annotations

import copy
import math
import multiprocessing
import os
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from lrgroups.norms import batch_norms, freeze_norm_stats, precise_bn

from . import metrics
from .probes import DEGENERATE_CE, best_probe, penultimate, probe_for, probe_model, set_probe_head
from .sources import (
    CellData,
    Preparation,
    backbone_inputs,
    cell_data,
    ensure,
    model_inputs,
    preparations,
    source_backbone,
    warmup_cosine,
)
from .store import atomic_write, environment_record, read_runs, to_json, versions, write_runs
from .suites import WISE_ALPHAS, Cell, Experiment, Suite
from .training import Device, batches, predict, resolve_device, steps_per_epoch, train_step

#: Retention along training uses every CURVE_EVERY-th source image (test and precise-BN sets).
CURVE_EVERY = 2


def key_environment(device: Device) -> dict[str, Any]:
    """What besides the config changes a cell's numbers: device type, torch threads, library versions."""
    return {"device": device.type, "cpu_threads": device.threads, **versions()}


def curve_area(steps: Sequence[int], values: Sequence[float], total: int) -> float:
    """The normalised area under a validation curve: the trapezoid integral over steps 0..``total``
    divided by ``total`` (the mean accuracy over the budget; 1 for a curve at 1 throughout)."""
    return float(np.trapezoid(values, steps) / total)


def value_at(steps: Sequence[int], values: Sequence[float], step: float) -> float:
    """The curve linearly interpolated at ``step``."""
    return float(np.interp(step, steps, values))


# --- Closed-form cells -----------------------------------------------------------------------------


def _logistic(x_train: np.ndarray, y_train: np.ndarray, C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(C=C, max_iter=2000).fit(scaler.transform(x_train), y_train)
    return lambda x: model.predict(scaler.transform(x))


def _ood_record(accuracies: Mapping[str, float]) -> dict[str, float]:
    """``ood_accuracy_<name>`` per corruption and their mean ``ood_accuracy`` (empty without OOD)."""
    if not accuracies:
        return {}
    return {"ood_accuracy": float(np.mean(list(accuracies.values()))),
            **{f"ood_accuracy_{name}": value for name, value in accuracies.items()}}


def pixel_cell(cell: Cell, data: CellData) -> dict[str, Any]:
    """The pixel baseline: standardised raw pixels, L2 logistic regression with C = the cell's lr."""
    flat = {name: getattr(data, name).pixels.flatten(1).numpy() for name in ("train", "val", "test")}
    predict_fn = _logistic(flat["train"], data.train.labels.numpy(), cell.lr)

    def score(split: Any) -> float:
        return float((predict_fn(split.pixels.flatten(1).numpy()) == split.labels.numpy()).mean())

    return {"val_accuracy": score(data.val), "test_accuracy": score(data.test),
            **_ood_record({name: score(split) for name, split in data.ood.items()})}


# --- Fine-tuning cells -----------------------------------------------------------------------------


@dataclass
class Inputs:
    """Model inputs of a cell's splits (``ood`` by corruption name)."""

    train: Tensor
    val: Tensor
    test: Tensor
    ood: dict[str, Tensor]

    @property
    def shifted(self) -> Tensor:
        """Every OOD image (corruptions concatenated), else the test images: where CKA is measured."""
        return torch.cat(list(self.ood.values())) if self.ood else self.test


def _inputs(cell: Cell, data: CellData, pretrained: bool, cache_dir: Path, environment: Mapping[str, Any]) -> Inputs:
    get = partial(model_inputs, cell.experiment, cell.target, cell.seed, pretrained=pretrained, cache_dir=cache_dir,
                  environment=environment)
    return Inputs(*(get(split_name=name, split=getattr(data, name)) for name in ("train", "val", "test")),
                  {name: get(split_name=f"ood/{name}", split=split) for name, split in data.ood.items()})


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, device: Device) -> float:
    return metrics.accuracy(predict(model, x, device), y)


def _scores(model: nn.Module, x: Inputs, data: CellData, device: Device) -> dict[str, float]:
    """Test accuracy and the OOD accuracies of the model as it is."""
    return {"test_accuracy": _accuracy(model, x.test, data.test.labels, device),
            **_ood_record({name: _accuracy(model, x.ood[name], split.labels, device)
                           for name, split in data.ood.items()})}


def _source_batches(experiment: Experiment, data: CellData) -> list[Tensor]:
    x_train = backbone_inputs(experiment, data.source_train.pixels)
    return [x_train[i : i + 200] for i in range(0, len(x_train), 200)]


def _source_scores(experiment: Experiment, model: nn.Module, source_head: nn.Module, data: CellData, device: Device,
                   weights_only: bool = True, every: int = 1) -> tuple[float, float]:
    """Source test accuracy of ``model`` with the source head (on a copy): weights only (BatchNorm
    statistics as they are; nan unless ``weights_only``), then after precise BN on the source
    training images; ``every``: use every ``every``-th image of both sets."""
    model = _with_head(model, source_head)
    x_test, y_test = backbone_inputs(experiment, data.source_test.pixels[::every]), data.source_test.labels[::every]
    as_is = _accuracy(model, x_test, y_test, device) if weights_only else math.nan
    if batch_norms(model):  # LayerNorm backbones (ConvNeXt, ViT) have no statistics to re-estimate
        precise_bn(model, (batch[::every].to(device.torch) for batch in _source_batches(experiment, data)))
    return as_is, _accuracy(model, x_test, y_test, device)


def _l2sp_alpha(cell: Cell) -> float:
    """``pull / sum_t lr_t`` over the cell's warm-up + cosine schedule (see ``Strategy``)."""
    budget = cell.experiment.budget
    total = sum(warmup_cosine(step, budget.warmup_steps, budget.steps) for step in range(budget.steps))
    return float(dict(cell.strategy.kwargs)["pull"]) / (cell.lr * total)


def build_recipe(cell: Cell, probe_C: float | None = None) -> recipes.Recipe:
    """The cell's recipe; ``pull`` becomes L2-SP's alpha, LP-FT gets the probe's chosen ``C``."""
    kwargs = dict(cell.strategy.kwargs)
    if "pull" in kwargs:
        kwargs["alpha"] = _l2sp_alpha(cell)
        del kwargs["pull"]
    if cell.strategy.recipe == "lp_ft" and probe_C is not None:
        kwargs["C"] = probe_C
    return recipes.RECIPES[cell.strategy.recipe](**kwargs)


def _head_name(model: nn.Module) -> str:
    head = find_head(model)
    return next(name for name, module in model.named_modules() if module is head)


def finetune_cell(cell: Cell, data: CellData, device: Device, cache_dir: Path,
                  environment: Mapping[str, Any]) -> dict[str, Any]:
    """Fine-tune one cell (pretrained backbone, or random init for scratch) and measure it."""
    experiment, budget, strategy = cell.experiment, cell.experiment.budget, cell.strategy
    pretrained = strategy.kind == "finetune"
    torch.manual_seed(cell.seed)
    model, source_meta = source_backbone(experiment, pretrained, cache_dir, environment, cell.source.seed)
    source_head = copy.deepcopy(find_head(model))
    if not experiment.keep_source_head:
        model.reset_classifier(cell.target.num_classes)
        nn.init.zeros_(find_head(model).weight)
        nn.init.zeros_(find_head(model).bias)
    model = device.prepare(model)
    x = _inputs(cell, data, pretrained, cache_dir, environment)
    y_train = data.train.labels
    frozen_norms = (freeze_norm_stats(model) if pretrained and experiment.bn == "frozen" and batch_norms(model)
                    else None)
    tracks_source = data.source_test is not None and pretrained
    before = _source_scores(experiment, model, source_head, data, device) if tracks_source else None

    record: dict[str, Any] = {}
    if pretrained and strategy.recipe == "lp_ft":
        C, probe = best_probe(experiment, cell.target, cell.seed, cache_dir, environment, device)
        set_probe_head(model, probe)
        record.update(probe_C=C, probe_train_ce=probe.train_ce, probe_degenerate=probe.train_ce < DEGENERATE_CE)
    recipe = build_recipe(cell, record.get("probe_C"))
    extra = {"probe": "fitted"} if recipe.probe_C is not None else {}
    tuning = recipe.build(model, torch.optim.AdamW, lr=cell.lr, weight_decay=budget.weight_decay,
                          total_steps=budget.steps, steps_per_epoch=steps_per_epoch(len(y_train), budget.batch_size),
                          **extra)
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start_features = {"shifted": penultimate(model, x.shifted), "train": penultimate(model, x.train)}
    schedule = torch.optim.lr_scheduler.LambdaLR(
        tuning.optimizer, partial(warmup_cosine, warmup=budget.warmup_steps, total=budget.steps))
    order = batches(len(y_train), budget.batch_size, seed=cell.seed)
    curve: dict[str, list] = {"step": [], "val_accuracy": []}
    track = experiment.track_forgetting and tracks_source
    if track:  # the curve's retention: half of each source set (the end point uses all of them)
        curve_before = _source_scores(experiment, model, source_head, data, device, weights_only=False,
                                      every=CURVE_EVERY)[1]

    forgetting_every = budget.forgetting_every or budget.eval_every

    def evaluate(step: int) -> None:
        curve["step"].append(step)
        curve["val_accuracy"].append(_accuracy(model, x.val, data.val.labels, device))
        if track and (step % forgetting_every == 0 or step == budget.steps):
            curve.setdefault("forgetting_step", []).append(step)
            curve.setdefault("test_accuracy", []).append(_accuracy(model, x.test, data.test.labels, device))
            after = curve_before if step == 0 else _source_scores(experiment, model, source_head, data, device,
                                                                  weights_only=False, every=CURVE_EVERY)[1]
            curve.setdefault("retention_precise_bn", []).append(metrics.retention(after, curve_before))

    evaluate(0)
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
            evaluate(step)
            tuning.after_validation(curve["val_accuracy"][-1])
    record.update({
        "val_accuracy": curve["val_accuracy"][-1],
        **_scores(model, x, data, device),
        "curve": curve,
        "val_auc": curve_area(curve["step"], curve["val_accuracy"], budget.steps),
        "val_at_quarter": value_at(curve["step"], curve["val_accuracy"], budget.steps / 4),
        "train_seconds": train_seconds,
        "trainable_at_end": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "source_model": source_meta if isinstance(source_meta, dict) else {},
    })
    if strategy.recipe == "l2_sp":
        record["l2sp_alpha"] = _l2sp_alpha(cell) if "pull" in dict(strategy.kwargs) else dict(strategy.kwargs)["alpha"]
    record["ood_cka" if x.ood else "test_cka"] = metrics.linear_cka(start_features["shifted"],
                                                                      penultimate(model, x.shifted))
    record["id_cka"] = metrics.linear_cka(start_features["train"], penultimate(model, x.train))
    if strategy.wise:
        record["variants"] = _wise(cell, model, start_state, x, data, device)
    if frozen_norms is not None:
        frozen_norms.remove()
    if before is not None:
        after = _source_scores(experiment, model, source_head, data, device)
        record.update(source_accuracy_before=before[0], source_accuracy_after=after[0],
                      source_accuracy_before_precise_bn=before[1], source_accuracy_after_precise_bn=after[1],
                      retention_weights_only=metrics.retention(after[0], before[0]),
                      retention_precise_bn=metrics.retention(after[1], before[1]),
                      backward_transfer=after[1] - before[1])
    return record


def _with_head(model: nn.Module, source_head: nn.Module) -> nn.Module:
    """A copy of ``model`` with the source head (the label space of the source test set)."""
    copy_ = copy.deepcopy(model)
    head_name = _head_name(copy_)
    parent = copy_.get_submodule(head_name.rpartition(".")[0]) if "." in head_name else copy_
    setattr(parent, head_name.rpartition(".")[2], copy.deepcopy(source_head))
    return copy_


def _wise(cell: Cell, model: nn.Module, start: Mapping[str, Tensor], x: Inputs, data: CellData,
          device: Device) -> dict[str, dict[str, float]]:
    """WiSE-FT (Wortsman et al., 2022): test and OOD accuracies of ``(1 - alpha) * start + alpha * end``
    for each alpha of WISE_ALPHAS."""
    end = {k: v.detach().clone() for k, v in model.state_dict().items()}
    variants = {}
    for alpha in WISE_ALPHAS:
        model.load_state_dict(lrgroups.wise_ft(start, end, alpha))
        variants[f"{cell.strategy.name}+wise_{alpha}"] = _scores(model, x, data, device)
    model.load_state_dict(end)
    return variants


def probe_cell(cell: Cell, data: CellData, device: Device, cache_dir: Path,
               environment: Mapping[str, Any]) -> dict[str, Any]:
    """The linear probe: the cached closed-form head (:mod:`benchmarks.probes`) with C = the cell's lr
    on the frozen pretrained backbone."""
    model = probe_model(cell.experiment, cell.seed, cell.target.num_classes, cache_dir, environment, device)
    x = _inputs(cell, data, True, cache_dir, environment)
    probe = probe_for(cell.experiment, cell.target, cell.seed, cell.lr, cache_dir, environment, device)
    set_probe_head(model, probe)
    record = {"val_accuracy": _accuracy(model, x.val, data.val.labels, device), **_scores(model, x, data, device),
              "probe_C": cell.lr, "probe_train_ce": probe.train_ce}
    record["ood_cka" if x.ood else "test_cka"] = 1.0
    record["id_cka"] = 1.0
    if data.source_test is not None:
        record.update(retention_weights_only=1.0, retention_precise_bn=1.0, backward_transfer=0.0)
    return record


def run_cell(cell: Cell, device: Device, cache_dir: Path, environment: Mapping[str, Any]) -> dict[str, Any]:
    """Run one cell; returns its measurements (raises on failure)."""
    data = cell_data(cell.experiment, cell.target, cell.seed)
    kind = cell.strategy.kind
    if kind == "pixel":
        return pixel_cell(cell, data)
    if kind == "probe":
        return probe_cell(cell, data, device, cache_dir, environment)
    return finetune_cell(cell, data, device, cache_dir, environment)


# --- Executing a suite -----------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(threads: int, cache_dir: Path, environment: Mapping[str, Any], device_choice: str = "cpu") -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)  # scikit-learn's BLAS too: no oversubscribed cores, numbers fixed by the thread count
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
              address: str | None = None, guards: bool = True) -> Outcome:
    """Run the suite's unfinished cells into ``out/runs.jsonl`` with ``workers`` processes of
    ``threads`` torch threads each (one process on CUDA), then, with ``guards``, the grid
    extensions and the budget check, then write the reports. A suite with a ``time_budget_s`` is
    first sized: one timed training step per experiment decides how many of its seeds run
    (:func:`benchmarks.sizing.size_suite`). ``executor="ray"``: one Ray task per cell with
    ``threads`` CPUs, on a local cluster or the one at ``address`` (``workers`` is not used); the
    numbers are the same as with local processes.

    Raises:
        RuntimeError: ``device_choice="cuda"`` without a CUDA device.
        ValueError: an unknown executor.
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
    if executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {executor!r}; known: local, ray")
    environment = key_environment(device)
    runs_path = out / "runs.jsonl"
    records = {record["key"]: record for record in read_runs(runs_path)}
    outcome = Outcome()
    invocation = uuid.uuid4().hex[:12]
    if executor == "ray":
        imap, close = _ray_mapper(address, threads, cache_dir, environment, device.type)
    else:
        imap, close = _mapper(workers, threads, cache_dir, environment, device.type)
    prepared: list[dict[str, Any]] = []
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
        phase_started = time.perf_counter()
        bar = tqdm(total=len(cells), initial=len(cells) - len(pending), desc=f"{suite.name} {phase}", unit="cell",
                   disable=not progress, dynamic_ncols=True, smoothing=0)
        for index, result in imap(_cell_job, pending):
            cell, key = cells[index], keys[index]
            records[key] = {"key": key, "experiment": cell.experiment.name, "target": cell.target.name,
                            "strategy": cell.strategy.name, "seed": cell.seed, "lr": cell.lr, "phase": phase,
                            "config": cell.config(), "environment": environment, "invocation": invocation,
                            **result}
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
        base = suite.cells()
        for wave in preparations(suite.experiments):  # built once; later runs only check the checksums
            bar = tqdm(total=len(wave), desc=f"{suite.name} preparations", unit="job", disable=not progress)
            for result in imap(_prepare_job, wave):
                prepared.append(result)
                bar.set_postfix_str(str(result.get("label", "")))
                bar.update(1)
            bar.close()
        run_cells(base, "grid")
        if guards:
            from .selection import BUDGET_CHECK_FACTOR, EXTENSION_CAP, budget_check_cells, grid_extensions

            for round_ in range(1, 2 * EXTENSION_CAP + 1):  # each round moves an edge one candidate out
                extra = [c for c in grid_extensions(suite, frame()) if records.get(c.key(environment), {})
                         .get("status") != "ok"]
                if not extra or (max_cells is not None and outcome.computed + outcome.failed >= max_cells):
                    break
                run_cells(extra, f"extension {round_}")
            if max_cells is None or outcome.computed + outcome.failed < max_cells:
                checks = budget_check_cells(suite, frame())
                if checks:
                    run_cells(checks, f"budget x{BUDGET_CHECK_FACTOR}")
    finally:
        close()
    stale = [k for k, r in records.items() if r.get("status") == "failed" and k not in set(order)]
    if stale:  # failed guard cells this run no longer plans (their selection changed): not a result, not pending
        for key in stale:
            del records[key]
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
                    "load_average_start": load_at_start, "load_average": os.getloadavg(), "sizing": sizing}
    environment_path = out / "environment.json"
    import json

    previous = json.loads(environment_path.read_text()) if environment_path.exists() else None
    atomic_write(environment_path, to_json(environment_record(device, command, extra_record, previous), indent=2))
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
