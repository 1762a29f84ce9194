"""What a cell starts from: its data splits, its source backbone (pretrained by the suite, cached
on disk) and, for EfficientNet-Lite0, the cached outputs of the frozen lower blocks.

Two kinds of preparation (:class:`benchmarks.caches.Preparation`) are defined here, built once per
suite run before any cell: :class:`SourceModel` (``source-<dataset>-<key>.pt``: a source backbone
per source-pretraining seed, its recipe and source test accuracy in the ``.json`` beside it) and
:class:`LowerFeatures` (``features-<experiment>-<pretrained|random>-<key>.pt``: Lite0's frozen lower
blocks). The linear probes fitted on them are :mod:`benchmarks.probes`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .backbones import backbone, create_lite, lite0_lower
from .caches import Preparation, experiment_key, load
from .data import (
    IMAGEFOLDER,
    as_images,
    corrupt,
    draw,
    folder_splits,
    normalize,
    pool_indices,
    raw_dataset,
    resize,
    to_channels,
)
from .metrics import accuracy
from .store import file_name_part
from .suites import Experiment, Target
from .training import Device, batches, predict, train_step, warmup_cosine

#: Precise BN re-estimates statistics on every PRECISE_BN_EVERY-th source training image.
PRECISE_BN_EVERY = 6
#: The seed of the fixed corruption noise of test sets (train and validation use the cell seed).
TEST_NOISE_SEED = 10_000


@dataclass(frozen=True)
class Split:
    """Images of one split: raw pixels in [0, 1] (NCHW at 28 px, 1 channel, after the target's
    input-level shift) and labels; ``ids`` name the images for feature caches."""

    pixels: Tensor
    labels: Tensor
    ids: np.ndarray
    corruption: str | None


@dataclass(frozen=True)
class CellData:
    """A cell's splits: train, val, test, ``ood`` (the test images under each of the target's OOD
    corruptions, by name; empty without), and the source test and training sets (for retention and
    precise BN; None for ImageNet sources)."""

    train: Split
    val: Split
    test: Split
    ood: dict[str, Split]
    source_test: Split | None
    source_train: Split | None


def _split(dataset: str, ids: np.ndarray, labels: Tensor, corruption: str | None, seed: int,
           read: tuple[int, int] = (28, 1)) -> Split:
    """``read``: (size, channels) an ImageFolder dataset is read at (MNIST and Animal-MNIST are 28 px
    grayscale whatever it says)."""
    size, channels = read if dataset.startswith(IMAGEFOLDER) else (28, 1)
    pixels = as_images(raw_dataset(dataset, size, channels)[0], ids, size, channels)
    if corruption is not None:
        pixels = corrupt(pixels, corruption, seed)
    return Split(pixels, labels, ids, corruption)


def _labels(target_or_classes: Target | tuple[int, ...], raw_labels: Tensor, ids: np.ndarray) -> Tensor:
    classes = target_or_classes.classes if isinstance(target_or_classes, Target) else target_or_classes
    mapping = {cls: i for i, cls in enumerate(classes)}
    labels = torch.tensor([mapping[int(raw_labels[i])] for i in ids], dtype=torch.int64)
    if isinstance(target_or_classes, Target) and target_or_classes.label_map is not None:
        labels = torch.tensor(target_or_classes.label_map, dtype=torch.int64)[labels]
    return labels


def _folder_ids(folders: dict[str, np.ndarray], raw_labels: Tensor, target: Target,
                seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train and validation shots drawn by ``seed`` from the ``train`` folder (validation from the
    ``val`` folder when there is one), and every image of ``test`` of the target's classes; the
    target's pools are not used."""
    def pools(split: str) -> dict[int, np.ndarray]:
        ids = folders[split]
        return {cls: ids[raw_labels[ids].numpy() == cls] for cls in target.classes}

    def shuffled(split: str) -> dict[int, np.ndarray]:
        return {cls: np.random.default_rng([0, cls]).permutation(pool) for cls, pool in pools(split).items()}

    if "val" in folders:
        train_ids = draw(shuffled("train"), (target.shots,), seed)[0]
        val_ids = draw(shuffled("val"), (target.val_shots,), seed)[0]
    else:
        train_ids, val_ids = draw(shuffled("train"), (target.shots, target.val_shots), seed)
    return train_ids, val_ids, np.concatenate(list(pools("test").values()))


@lru_cache(maxsize=64)
def cell_data(experiment: Experiment, target: Target, seed: int) -> CellData:
    """The splits of one (experiment, target, seed): training and validation shots drawn by
    ``seed`` from the target pool, the fixed test pool, OOD and source sets."""
    read = folder_read(experiment)
    raw_labels = raw_dataset(target.dataset, *read)[1]
    folders = folder_splits(target.dataset)
    if folders is None:
        if target.train_pool is None or target.test_pool is None:
            raise ValueError(f"target {target.name!r}: {target.dataset} has no train/test folders, so it needs "
                             "train_pool and test_pool")
        train_ids, val_ids = draw(pool_indices(raw_labels, target.classes, *target.train_pool),
                                  (target.shots, target.val_shots), seed)
        test_ids = np.concatenate(list(pool_indices(raw_labels, target.classes, *target.test_pool).values()))
    else:  # an ImageFolder with split subfolders: shots from train (val from val, if any), all of test
        train_ids, val_ids, test_ids = _folder_ids(folders, raw_labels, target, seed)
    splits = [_split(target.dataset, ids, _labels(target, raw_labels, ids), target.shift, noise, read)
              for ids, noise in ((train_ids, seed), (val_ids, seed + 5_000), (test_ids, TEST_NOISE_SEED))]
    ood = {name: _split(target.dataset, test_ids, splits[2].labels, name, TEST_NOISE_SEED + index, read)
           for index, name in enumerate(target.ood)}
    source_test = source_train = None
    if experiment.source.trained:
        source_test, source_train = source_splits(experiment)
        keep = np.arange(len(source_train.ids)) % PRECISE_BN_EVERY == 0  # a subset suffices for BN statistics
        source_train = Split(source_train.pixels[torch.from_numpy(keep)], source_train.labels[torch.from_numpy(keep)],
                             source_train.ids[keep], None)
    return CellData(*splits, ood, source_test, source_train)


def folder_read(experiment: Experiment) -> tuple[int, int]:
    """(size, channels) at which the experiment reads an ImageFolder dataset: its ``image_size``, in
    the backbone's channels (RGB for ImageNet, Lite and ``timm:`` backbones, grayscale for the
    suite-pretrained 1-channel ones)."""
    spec = backbone(experiment.backbone)
    return experiment.image_size, 3 if spec.fed_features else spec.channels


def source_splits(experiment: Experiment) -> tuple[Split, Split]:
    """(test, training) splits of the experiment's source task (clean images)."""
    source = experiment.source
    read = folder_read(experiment)
    raw_labels = raw_dataset(source.dataset, *read)[1]
    out = []
    for pool in (source.test_pool, source.train_pool):
        ids = np.concatenate(list(pool_indices(raw_labels, source.classes, *pool).values()))
        out.append(_split(source.dataset, ids, _labels(source.classes, raw_labels, ids), None, 0, read))
    return out[0], out[1]


def backbone_inputs(experiment: Experiment, pixels: Tensor) -> Tensor:
    """1-channel 28 px pixels in [0, 1] (NCHW) -> what the experiment's backbone eats on images:
    resized to ``experiment.image_size``; 1 channel, mean = std = 0.5 for suite-pretrained
    backbones; 3 channels normalised with the model's mean and std for EfficientNet-Lite (0.5) and
    ``timm:<name>`` models. The one place pixels become model inputs (cells, source pretraining,
    retention). ``lite0_top`` eats cached features instead (:func:`model_inputs`).

    Raises:
        KeyError: a backbone fed cached features, or an unknown one.
    """
    spec = backbone(experiment.backbone)
    if spec.fed_features:
        raise KeyError(f"backbone {experiment.backbone!r} is not fed images")
    return normalize(to_channels(resize(pixels, experiment.image_size), spec.channels), *spec.normalization())


# --- Preparations: source models and Lite0 lower features ----------------------------------------


def pretrain(experiment: Experiment, device: Device, source_seed: int = 0) -> tuple[dict[str, Tensor], float]:
    """Train the experiment's backbone on its source task (AdamW, warm-up then cosine to 0), seeded
    by ``source_seed``: from random init (``kind="pretrain"``: a suite architecture, or any
    ``timm:<name>`` as ``timm.create_model(name, pretrained=False, num_classes=<source classes>)``
    with its 3 input channels, fed :func:`backbone_inputs`) or from the shipped ImageNet weights
    with a new head (``kind="adapt"``, Lee et al.'s clean-source stage); returns (state dict,
    source test accuracy)."""
    source = replace(experiment.source, seed=source_seed)
    test, train = source_splits(experiment)
    torch.manual_seed(source.seed)
    model = device.prepare(backbone(experiment.backbone).create(source.kind == "adapt", len(source.classes)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=source.lr, weight_decay=source.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup=source.warmup_steps, total=source.steps))
    x_train = backbone_inputs(experiment, train.pixels)
    order = batches(len(x_train), source.batch_size, seed=source.seed)
    model.train()
    for _ in range(source.steps):
        index = next(order)
        train_step(model, optimizer, x_train[index], train.labels[index], device)
        schedule.step()
    source_accuracy = accuracy(predict(model, backbone_inputs(experiment, test.pixels), device), test.labels)
    return {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}, source_accuracy


@torch.no_grad()
def lower_features(pretrained: bool, pixels: Tensor, image_size: int, batch: int = 200) -> Tensor:
    """Lite0 lower-block outputs of 1-channel pixels in [0, 1]: resized to ``image_size``, 3 channels,
    normalised with mean = std = 0.5, through stem and ``blocks[:LITE0_SPLIT]`` (eval mode)."""
    lower = lite0_lower(create_lite(pretrained))
    out = []
    for start in range(0, len(pixels), batch):
        images = to_channels(resize(pixels[start : start + batch], image_size), 3)
        out.append(lower(normalize(images, (0.5,) * 3, (0.5,) * 3)))
    return torch.cat(out)


def _feature_splits(experiment: Experiment) -> dict[str, Split]:
    """Every split of every seed whose Lite0 features the experiment's cells need."""
    splits: dict[str, Split] = {}
    for target in experiment.targets:
        for seed in experiment.seeds:
            data = cell_data(experiment, target, seed)
            for name in ("train", "val", "test"):
                splits[f"{target.name}/{seed}/{name}"] = getattr(data, name)
            for name, split in data.ood.items():
                splits[f"{target.name}/{seed}/ood/{name}"] = split
    return splits


@dataclass(frozen=True)
class SourceModel(Preparation):
    """The experiment's backbone pretrained on its source task from ``source_seed``
    (:func:`pretrain`); one file for every experiment that shares the backbone and the source."""

    experiment: Experiment
    source_seed: int = 0
    kind: ClassVar[str] = "source"

    @property
    def label(self) -> str:
        return f"source {self.experiment.name} (source seed {self.source_seed})"

    def config(self) -> dict[str, Any]:
        config = experiment_key(self.kind, self.experiment)
        config["source"] = asdict(replace(self.experiment.source, seed=self.source_seed))
        if self.experiment.image_size != 28:  # (28 px: the key of the sources cached before image sizes varied)
            config["image_size"] = self.experiment.image_size
        return config

    def file_stem(self) -> str:
        return f"source-{file_name_part(self.experiment.source.dataset)}"

    def build(self, device: Device, cache_dir: Path, environment: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        state, source_accuracy = pretrain(self.experiment, device, self.source_seed)
        return state, {"source_accuracy": source_accuracy, "min_accuracy": self.experiment.source.min_accuracy,
                       "source_seed": self.source_seed}


@dataclass(frozen=True)
class LowerFeatures(Preparation):
    """Lite0's lower-block outputs (:func:`lower_features`, ``pretrained`` or the seed-0 random
    init) of every split of every seed the experiment's cells read."""

    experiment: Experiment
    pretrained: bool = True
    kind: ClassVar[str] = "features"

    @property
    def label(self) -> str:
        return f"features {self.experiment.name}" + ("" if self.pretrained else " (random init)")

    def config(self) -> dict[str, Any]:
        experiment = self.experiment
        return {**experiment_key(self.kind, experiment), "pretrained": self.pretrained,
                "image_size": experiment.image_size, "targets": [asdict(t) for t in experiment.targets],
                "seeds": list(experiment.seeds)}

    def file_stem(self) -> str:
        return f"features-{file_name_part(self.experiment.name)}-{'pretrained' if self.pretrained else 'random'}"

    def build(self, device: Device, cache_dir: Path, environment: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        unique: dict[tuple, Tensor] = {}
        payload: dict[str, Tensor] = {}
        for name, split in _feature_splits(self.experiment).items():  # identical images (test/ood across seeds) once
            key = (split.corruption, split.ids.tobytes())
            if key not in unique:
                unique[key] = lower_features(self.pretrained, split.pixels, self.experiment.image_size)
            payload[name] = unique[key]
        return payload, {"splits": len(payload)}


def source_backbone(experiment: Experiment, pretrained: bool, cache_dir: Path,
                    environment: Mapping[str, Any], source_seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh copy of the cell's backbone with its source head: a suite-trained source of
    ``source_seed`` (``pretrained=False``: random init, seeded by the caller), the top of ImageNet
    Lite0 (random init: the seed-0 random Lite0 whose lower features were cached), a whole shipped
    EfficientNet-Lite, or a ``timm:<name>`` model (its cached weights or the experiment's checkpoint
    file, ``weights``).

    Raises:
        KeyError: an unknown backbone.
    """
    spec = backbone(experiment.backbone)
    if experiment.source.trained and pretrained:  # the suite's source (or adapted Lite) with its source head
        model = spec.create(False, len(experiment.source.classes))
        state, meta = load(SourceModel(experiment, source_seed), cache_dir, environment)
        model.load_state_dict(state)
        return model, meta
    if spec.architecture is not None:
        classes = len(experiment.source.classes) if experiment.source.trained else experiment.targets[0].num_classes
        return spec.create(False, classes), {"kind": "random_init"}
    classes = len(experiment.source.classes) if experiment.source.trained and spec.lite else None
    if pretrained and experiment.weights is not None:
        return spec.create(True, classes, experiment.weights), {"kind": "weights_file"}
    return spec.create(pretrained, classes), {"kind": spec.pretrained_kind if pretrained else "random_init"}


def model_inputs(experiment: Experiment, target: Target, seed: int, split_name: str, split: Split,
                 pretrained: bool, cache_dir: Path, environment: Mapping[str, Any]) -> Tensor:
    """What the backbone eats for a split: cached Lite0 lower features (``lite0_top``), else
    :func:`backbone_inputs` of its pixels."""
    if backbone(experiment.backbone).fed_features:
        payload, _ = load(LowerFeatures(experiment, pretrained), cache_dir, environment)
        return payload[f"{target.name}/{seed}/{split_name}"]
    return backbone_inputs(experiment, split.pixels)
