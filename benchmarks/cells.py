"""What one cell of a suite computes: a fine-tuning cell, a probe cell or a pixel baseline, each a
function of the cell (its config), the device and the caches, returning the cell's measurements.

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
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import lrgroups
from lrgroups import recipes
from lrgroups.depth import find_head
from lrgroups.norms import batch_norms, freeze_norm_stats, precise_bn

from . import metrics
from .backbones import backbone
from .probes import DEGENERATE_CE, best_probe, penultimate, probe_for, probe_model, set_probe_head
from .sources import (
    CellData,
    backbone_inputs,
    cell_data,
    model_inputs,
    source_backbone,
)
from .store import versions
from .suites import WISE_ALPHAS, Cell, Experiment
from .training import Device, batches, predict, steps_per_epoch, train_step, warmup_cosine

#: Retention along training uses every CURVE_EVERY-th source image (test and precise-BN sets).
CURVE_EVERY = 2


def key_environment(device: Device) -> dict[str, Any]:
    """What besides the config changes a cell's numbers: device type, torch threads, library versions
    (and, for a GPU rehearsal on the CPU, that autocast and channels_last were on)."""
    rehearsal = {"rehearsal": "bf16 autocast, channels_last"} if device.type == "cpu" and device.autocast else {}
    return {"device": device.type, "cpu_threads": device.threads, **rehearsal, **versions()}


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


#: On CUDA, the model inputs of this many (experiment, target, seed) are kept on the device: a seed's
#: cells (every strategy on a target) resize and normalise their images once, not once per cell.
DEVICE_INPUTS_KEPT = 4
_DEVICE_INPUTS: OrderedDict[tuple, Inputs] = OrderedDict()


def _inputs(cell: Cell, data: CellData, pretrained: bool, cache_dir: Path, environment: Mapping[str, Any],
            device: Device | None = None) -> Inputs:
    """The cell's model inputs; on CUDA made once per (experiment, target, seed, pretrained) and kept
    on the device (:data:`DEVICE_INPUTS_KEPT` of them, least recently used dropped): the same
    numbers, without the per-cell resize and the host-to-device copy of every batch."""
    on_device = device is not None and device.type == "cuda"
    fed_features = backbone(cell.experiment.backbone).fed_features  # (pretrained: which cached features)
    key = (cell.experiment.name, cell.experiment.backbone, cell.experiment.image_size, cell.target, cell.seed,
           pretrained if fed_features else None)
    if on_device and key in _DEVICE_INPUTS:
        _DEVICE_INPUTS.move_to_end(key)
        return _DEVICE_INPUTS[key]
    get = partial(model_inputs, cell.experiment, cell.target, cell.seed, pretrained=pretrained, cache_dir=cache_dir,
                  environment=environment)
    inputs = Inputs(*(get(split_name=name, split=getattr(data, name)) for name in ("train", "val", "test")),
                    {name: get(split_name=f"ood/{name}", split=split) for name, split in data.ood.items()})
    if on_device:
        assert device is not None
        inputs = Inputs(*(t.to(device.torch) for t in (inputs.train, inputs.val, inputs.test)),
                        {name: t.to(device.torch) for name, t in inputs.ood.items()})
        _DEVICE_INPUTS[key] = inputs
        while len(_DEVICE_INPUTS) > DEVICE_INPUTS_KEPT:
            _DEVICE_INPUTS.popitem(last=False)
    return inputs


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
    """Fine-tune one cell (pretrained backbone, or random init for scratch) and measure it: build the
    model and its recipe, train it along its validation curve, measure the end point."""
    experiment, strategy = cell.experiment, cell.strategy
    pretrained = strategy.kind == "finetune"
    model, source_head, source_meta = _start_model(cell, pretrained, cache_dir, environment, device)
    x = _inputs(cell, data, pretrained, cache_dir, environment, device)
    frozen_norms = (freeze_norm_stats(model) if pretrained and experiment.bn == "frozen" and batch_norms(model)
                    else None)
    tracks_source = data.source_test is not None and pretrained and experiment.measure_retention
    before = _source_scores(experiment, model, source_head, data, device) if tracks_source else None
    tuning, record = _tuning(cell, model, pretrained, len(data.train.labels), cache_dir, environment, device)
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start_features = {"shifted": penultimate(model, x.shifted), "train": penultimate(model, x.train)}
    source = source_head if experiment.track_forgetting and tracks_source else None
    curve, train_seconds = _train(cell, model, tuning, x, data, device, source)
    record.update({
        "val_accuracy": curve["val_accuracy"][-1],
        **_scores(model, x, data, device),
        "curve": curve,
        "val_auc": curve_area(curve["step"], curve["val_accuracy"], experiment.budget.steps),
        "val_at_quarter": value_at(curve["step"], curve["val_accuracy"], experiment.budget.steps / 4),
        "train_seconds": train_seconds,
        "trainable_at_end": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "source_model": source_meta if isinstance(source_meta, dict) else {},
    })
    record.update(_measure_end(cell, model, x, data, device, start_state, start_features))
    if frozen_norms is not None:
        frozen_norms.remove()
    if before is not None:
        record.update(_retention(experiment, model, source_head, data, device, before))
    return record


def _start_model(cell: Cell, pretrained: bool, cache_dir: Path, environment: Mapping[str, Any],
                 device: Device) -> tuple[nn.Module, nn.Module, Any]:
    """(the cell's start model on ``device``, a copy of its source head, the source's metadata): the
    source backbone seeded by the cell, its head replaced by a zero head for the target's classes
    unless the experiment keeps the source head."""
    torch.manual_seed(cell.seed)
    model, source_meta = source_backbone(cell.experiment, pretrained, cache_dir, environment, cell.source.seed)
    source_head = copy.deepcopy(find_head(model))
    if not cell.experiment.keep_source_head:
        model.reset_classifier(cell.target.num_classes)
        nn.init.zeros_(find_head(model).weight)
        nn.init.zeros_(find_head(model).bias)
    return device.prepare(model), source_head, source_meta


def _tuning(cell: Cell, model: nn.Module, pretrained: bool, train_size: int, cache_dir: Path,
            environment: Mapping[str, Any], device: Device) -> tuple[Any, dict[str, Any]]:
    """(the cell's recipe built over ``model``, the record so far): LP-FT's start writes the seed's
    validation-selected probe into the head first (its C and cross-entropy recorded)."""
    budget = cell.experiment.budget
    record: dict[str, Any] = {}
    if pretrained and cell.strategy.recipe == "lp_ft":
        C, probe = best_probe(cell.experiment, cell.target, cell.seed, cache_dir, environment, device)
        set_probe_head(model, probe)
        record.update(probe_C=C, probe_train_ce=probe.train_ce, probe_degenerate=probe.train_ce < DEGENERATE_CE)
    recipe = build_recipe(cell, record.get("probe_C"))
    extra = {"probe": "fitted"} if recipe.probe_C is not None else {}
    tuning = recipe.build(model, torch.optim.AdamW, lr=cell.lr, weight_decay=budget.weight_decay,
                          total_steps=budget.steps, steps_per_epoch=steps_per_epoch(train_size, budget.batch_size),
                          **extra)
    return tuning, record


def _train(cell: Cell, model: nn.Module, tuning: Any, x: Any, data: CellData, device: Device,
           source_head: nn.Module | None) -> tuple[dict[str, list], float]:
    """Train the cell's budget (warm-up then cosine), evaluating validation accuracy every
    ``eval_every`` steps and, with ``source_head`` (a cell that tracks forgetting), test accuracy and
    retention every ``forgetting_every`` steps; returns (the curves, training seconds)."""
    experiment, budget = cell.experiment, cell.experiment.budget
    y_train = data.train.labels
    schedule = torch.optim.lr_scheduler.LambdaLR(
        tuning.optimizer, partial(warmup_cosine, warmup=budget.warmup_steps, total=budget.steps))
    order = batches(len(y_train), budget.batch_size, seed=cell.seed)
    curve: dict[str, list] = {"step": [], "val_accuracy": []}
    track = source_head is not None
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
        device.synchronize()  # on CUDA the step's kernels, not their launches
        train_seconds += time.perf_counter() - started
        if step % budget.eval_every == 0 or step == budget.steps:
            evaluate(step)
            tuning.observe(curve["val_accuracy"][-1])
    return curve, train_seconds


def _measure_end(cell: Cell, model: nn.Module, x: Any, data: CellData, device: Device,
                 start_state: dict[str, Tensor], start_features: dict[str, Tensor]) -> dict[str, Any]:
    """L2-SP's alpha, the feature CKAs against the start and the WiSE-FT variants of the trained model."""
    strategy = cell.strategy
    record: dict[str, Any] = {}
    if strategy.recipe == "l2_sp":
        record["l2sp_alpha"] = _l2sp_alpha(cell) if "pull" in dict(strategy.kwargs) else dict(strategy.kwargs)["alpha"]
    record["ood_cka" if x.ood else "test_cka"] = _cka(start_features["shifted"], penultimate(model, x.shifted))
    record["id_cka"] = _cka(start_features["train"], penultimate(model, x.train))
    if strategy.wise:
        record["variants"] = _wise(cell, model, start_state, x, data, device)
    return record


def _retention(experiment: Experiment, model: nn.Module, source_head: nn.Module, data: CellData, device: Device,
               before: tuple[float, float]) -> dict[str, float]:
    """Source accuracy before and after (weights only, precise BN), retention and backward transfer."""
    after = _source_scores(experiment, model, source_head, data, device)
    return dict(source_accuracy_before=before[0], source_accuracy_after=after[0],
                source_accuracy_before_precise_bn=before[1], source_accuracy_after_precise_bn=after[1],
                retention_weights_only=metrics.retention(after[0], before[0]),
                retention_precise_bn=metrics.retention(after[1], before[1]),
                backward_transfer=after[1] - before[1])


def _cka(before: Tensor, after: Tensor) -> float:
    """Linear CKA of the features before and after training; nan where it is undefined (a run that
    diverged to constant or non-finite features), so the cell still records its other metrics."""
    return metrics.linear_cka(before, after, constant="nan")


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
    run = probe_cell if kind == "probe" else finetune_cell
    if device.type != "cuda":
        return run(cell, data, device, cache_dir, environment)
    torch.cuda.reset_peak_memory_stats()
    record = run(cell, data, device, cache_dir, environment)
    return {**record, "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20}
