"""Closed-form linear probes of the suite, computed once per (target, seed, C) and shared.

A probe is L2-regularised multinomial logistic regression (``lrgroups.probe.fit_linear_probe``,
scikit-learn) on the frozen pretrained backbone's penultimate features, **standardised** with the
training features' mean and standard deviation (as Kumar et al.'s code and the usual linear
evaluation do), then folded back into the head: ``W' = W / sd``, ``b' = b - W' @ mean``, so the
head takes raw features. Three kinds of cells use the same probes: ``linear_probe`` (its grid is
``PROBE_CS``), LP-FT (its first stage: the probe whose C has the best validation accuracy for the
seed) and WiSE-FT's start model (the pretrained body with that probe as head).

The preparation :class:`Probes` (a :class:`benchmarks.caches.Preparation`, built after the source
models and feature caches of :mod:`benchmarks.sources` it reads) fits every probe of an experiment
before its cells run; :func:`probe_for` reads it from the cache or, for a C outside
``PROBE_CS`` (a grid extension), fits it with the same function, so a cached probe equals an
uncached one bitwise.

Example:
    >>> import torch
    >>> x, y = torch.randn(40, 6, dtype=torch.float64) * 3 + 1, torch.arange(40) % 4
    >>> probe = fit_probe(x, y, C=0.1, num_classes=4)
    >>> probe.weight.shape, 0 < probe.train_ce < 1.4
    (torch.Size([4, 6]), True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrgroups import recipes
from lrgroups.depth import find_head

from .caches import Preparation, experiment_key, load
from .sources import cell_data, model_inputs, source_backbone
from .store import file_name_part
from .suites import PROBE_CS, Experiment, Strategy, Target
from .training import Device

#: The probe's training cross-entropy below which LP-FT is flagged as starting from an
#: interpolating probe (its fine-tuning stage then has almost no gradient).
DEGENERATE_CE = 0.05


@dataclass(frozen=True)
class Probe:
    """A fitted probe folded for raw features: ``weight`` (K, D), ``bias`` (K,), float32; its
    validation accuracy and training cross-entropy (nats)."""

    weight: Tensor
    bias: Tensor
    val_accuracy: float
    train_ce: float


def uses_probe(strategy: Strategy) -> bool:
    """Whether a strategy's cells use a probe (linear probe, LP-FT or WiSE-FT)."""
    return strategy.kind == "probe" or strategy.recipe == "lp_ft" or strategy.wise


def needs_probes(experiment: Experiment) -> bool:
    """Whether any strategy of the experiment uses a probe (:func:`uses_probe`)."""
    return any(uses_probe(s) for s in experiment.strategies)


def probe_config(experiment: Experiment) -> dict[str, Any]:
    """What the experiment's probes depend on (the cache key)."""
    return {"targets": [asdict(t) for t in experiment.targets], "seeds": list(experiment.seeds),
            "sources": [asdict(experiment.source_for(seed)) for seed in experiment.seeds],
            "image_size": experiment.image_size, "cs": list(PROBE_CS)}


def penultimate(model: nn.Module, x: Tensor) -> Tensor:
    """What the head receives (``lrgroups.probe.head_features``, eval mode), float32 on the CPU."""
    device = next(model.parameters()).device
    return torch.cat([recipes.head_features(model, x[i : i + 250].to(device), batch_size=250).float().cpu()
                      for i in range(0, len(x), 250)])


def fit_probe(features: Tensor, labels: Tensor, C: float, num_classes: int) -> Probe:
    """Fit a probe on standardised ``features`` (N, D) and fold the standardisation into it; the
    validation accuracy is left nan (see :func:`evaluate`).

    Raises:
        ValueError: what ``lrgroups.probe.fit_linear_probe`` rejects.
    """
    x = features.double()
    mean, sd = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
    weight, bias = recipes.fit_linear_probe((x - mean) / sd, labels, C=C, num_classes=num_classes)
    weight = weight / sd
    bias = bias - weight @ mean
    ce = float(F.cross_entropy(x @ weight.T + bias, labels))
    return Probe(weight.float(), bias.float(), math.nan, ce)


def evaluate(probe: Probe, features: Tensor, labels: Tensor) -> float:
    """Accuracy of the probe's logits on ``features``."""
    return float(((features.double() @ probe.weight.double().T + probe.bias.double()).argmax(1) == labels)
                 .double().mean())


def probe_model(experiment: Experiment, seed: int, num_classes: int, cache_dir: Path,
                environment: Mapping[str, Any], device: Device) -> nn.Module:
    """The pretrained backbone of a cell of ``seed`` with a fresh ``num_classes`` head, on ``device``."""
    model, _ = source_backbone(experiment, True, cache_dir, environment, experiment.source_for(seed).seed)
    model.reset_classifier(num_classes)
    return device.prepare(model)


def _fit_all(experiment: Experiment, target: Target, seed: int, cs: tuple[float, ...], cache_dir: Path,
             environment: Mapping[str, Any], device: Device) -> dict[float, Probe]:
    data = cell_data(experiment, target, seed)
    model = probe_model(experiment, seed, target.num_classes, cache_dir, environment, device)
    features = {name: penultimate(model, model_inputs(experiment, target, seed, name, getattr(data, name), True,
                                                      cache_dir, environment)) for name in ("train", "val")}
    out = {}
    for C in cs:
        probe = fit_probe(features["train"], data.train.labels, C, target.num_classes)
        out[C] = Probe(probe.weight, probe.bias, evaluate(probe, features["val"], data.val.labels), probe.train_ce)
    return out


def compute_probes(experiment: Experiment, device: Device, cache_dir: Path,
                   environment: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Every probe of the experiment (targets x seeds x ``PROBE_CS``): (payload, metadata)."""
    payload: dict[str, Tensor] = {}
    scores: dict[str, dict[str, float]] = {}
    for target in experiment.targets:
        for seed in experiment.seeds:
            for C, probe in _fit_all(experiment, target, seed, PROBE_CS, cache_dir, environment, device).items():
                key = f"{target.name}/{seed}/{C:g}"
                payload[f"{key}/weight"], payload[f"{key}/bias"] = probe.weight, probe.bias
                scores[key] = {"val_accuracy": probe.val_accuracy, "train_ce": probe.train_ce}
    return payload, {"probes": scores}


@dataclass(frozen=True)
class Probes(Preparation):
    """Every probe of the experiment (:func:`compute_probes`), fitted on the cached source models or
    features of every seed: a preparation of the second wave."""

    experiment: Experiment
    kind: ClassVar[str] = "probes"

    @property
    def label(self) -> str:
        return f"probes {self.experiment.name}"

    def config(self) -> dict[str, Any]:
        return {**experiment_key(self.kind, self.experiment), **probe_config(self.experiment)}

    def file_stem(self) -> str:
        return f"probes-{file_name_part(self.experiment.name)}"

    def build(self, device: Device, cache_dir: Path, environment: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        return compute_probes(self.experiment, device, cache_dir, environment)


def probe_for(experiment: Experiment, target: Target, seed: int, C: float, cache_dir: Path,
              environment: Mapping[str, Any], device: Device) -> Probe:
    """The probe of (target, seed, C): from the experiment's cached probes when C is in
    ``PROBE_CS``, else fitted now by the same code."""
    if C in PROBE_CS:
        payload, meta = load(Probes(experiment), cache_dir, environment)
        key = f"{target.name}/{seed}/{C:g}"
        score = meta["probes"][key]
        return Probe(payload[f"{key}/weight"], payload[f"{key}/bias"], score["val_accuracy"], score["train_ce"])
    return _fit_all(experiment, target, seed, (C,), cache_dir, environment, device)[C]


def best_probe(experiment: Experiment, target: Target, seed: int, cache_dir: Path,
               environment: Mapping[str, Any], device: Device) -> tuple[float, Probe]:
    """(C, probe) with the best validation accuracy of ``PROBE_CS`` for the seed (ties: the smaller C)."""
    probes = {C: probe_for(experiment, target, seed, C, cache_dir, environment, device) for C in PROBE_CS}
    C = max(PROBE_CS, key=lambda c: (probes[c].val_accuracy, -c))
    return C, probes[C]


def set_probe_head(model: nn.Module, probe: Probe) -> None:
    """Write the probe into the model's head (``lrgroups.probe.set_linear_head``)."""
    recipes.set_linear_head(find_head(model), probe.weight, probe.bias)
