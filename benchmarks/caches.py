"""The preparation cache: artefacts cells need, built once per suite run before any cell and kept
under ``<cache>/`` with a checksum. Each ``<stem>-<key>.pt`` has a ``.json`` beside it: its metadata,
its config and the file's sha256; a file whose checksum fails is built again. Everything is seeded;
nothing depends on which process builds it.

This module keys, checks and loads preparations and knows no kind of them: a kind is a
:class:`Preparation` subclass that supplies its config (the key), its file name and its build.
The kinds are the source models and Lite0 lower-block features of :mod:`benchmarks.sources`
(``source-<dataset>-<key>.pt``, ``features-<experiment>-<pretrained|random>-<key>.pt``) and the
linear probes of :mod:`benchmarks.probes` (``probes-<experiment>-<key>.pt``); the waves of them a
suite run builds are :func:`benchmarks.runner.preparations`.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch

from .store import atomic_torch_save, atomic_write, sha256_file, to_json
from .suites import Experiment, config_hash
from .training import Device


class Preparation(ABC):
    """A cached artefact cells need; subclasses are frozen dataclasses (hashable, picklable: they
    travel to worker processes) that name their ``kind`` and supply :meth:`config`,
    :meth:`file_stem`, :meth:`build` and :attr:`label`."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def label(self) -> str:
        """What a progress bar and ``environment.json`` call it."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that determines the artefact (besides the environment): its cache key."""

    @abstractmethod
    def file_stem(self) -> str:
        """The cache file's name before ``-<key>.pt``, valid on every OS
        (:func:`benchmarks.store.file_name_part`)."""

    @abstractmethod
    def build(self, device: Device, cache_dir: Path, environment: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Compute the artefact: (payload to save, metadata); may :func:`load` preparations of an
        earlier wave from ``cache_dir``."""

    def path(self, cache_dir: Path, environment: Mapping[str, Any]) -> Path:
        """The cache file: the stem and the key (the config and the environment hashed)."""
        key = config_hash({**self.config(), "environment": dict(environment)})
        return cache_dir / f"{self.file_stem()}-{key}.pt"


def experiment_key(kind: str, experiment: Experiment) -> dict[str, Any]:
    """What every preparation's config starts with: its kind, the experiment's backbone and, when it
    has one, its checkpoint file (absent otherwise: older keys stay)."""
    config: dict[str, Any] = {"kind": kind, "backbone": experiment.backbone}
    if experiment.weights is not None:
        config["weights"] = str(experiment.weights)
    return config


def ensure(preparation: Preparation, cache_dir: Path, environment: Mapping[str, Any], device: Device) -> dict[str, Any]:
    """Build the preparation's cache file unless a valid one exists; returns its metadata."""
    path = preparation.path(cache_dir, environment)
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("sha256") == sha256_file(path):
            return {**meta, "built_now": False}
    started = time.perf_counter()
    payload, meta = preparation.build(device, cache_dir, environment)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, path)
    meta = {**meta, "label": preparation.label, "config": preparation.config(), "file": path.name,
            "seconds": time.perf_counter() - started, "sha256": sha256_file(path)}
    atomic_write(meta_path, to_json(meta, indent=2, sort_keys=True))
    return {**meta, "built_now": True}


@lru_cache(maxsize=8)
def _load(path: Path) -> tuple[Any, dict[str, Any]]:
    return torch.load(path, map_location="cpu", weights_only=True), json.loads(path.with_suffix(".json").read_text())


def load(preparation: Preparation, cache_dir: Path, environment: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(payload, metadata) of a built preparation."""
    return _load(preparation.path(cache_dir, environment))
