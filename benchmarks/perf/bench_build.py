"""Build time: constructing a layer-decayed ``LayerwiseOptimizer`` (describe, depths, plan, groups,
inner AdamW), model creation excluded, interleaved with timm's own
``create_optimizer_v2(model, "adamw", layer_decay=0.75)`` (the same job: layer ids from
``group_matcher``, no weight decay on biases and norms) as the side-by-side reference.

Models are created on the ``meta`` device (no memory, no init): the build never reads tensor data,
and ``test_build_meta_vs_real`` checks that building on a real model costs the same.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import pytest
import timm
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2

from lrgroups import LayerwiseOptimizer

from .harness import Interleaved, Variant, measure, profile_per_call, scaled
from .workloads import DEVICE, LR, WEIGHT_DECAY, layer_decay_rules, model_for

GOAL_MS = 20.0
LARGE = ["vit_large_patch16_224", "convnext_large"]
_SIZE_WORDS = ("atto", "femto", "pico", "nano", "xxxs", "xxs", "xs", "tiny", "mini", "small", "s", "t", "b0", "m0")


def _size_rank(name: str) -> tuple:
    tokens = re.split(r"[_.]", name)
    for rank, word in enumerate(_SIZE_WORDS):
        if any(re.fullmatch(rf"{word}\d*", token) for token in tokens):
            return (rank, len(name), name)
    return (len(_SIZE_WORDS), len(name), name)


def families() -> list[tuple[str, str]]:
    """One small model per timm model module (an architecture family): ``(module, model name)``."""
    return [
        (module, min(names, key=_size_rank))
        for module in timm.list_modules()
        if (names := timm.list_models(module=module))
    ]


def _create_meta(name: str) -> tuple[nn.Module, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return timm.create_model(name, pretrained=False), "meta"
        except Exception:
            return timm.create_model(name, pretrained=False), "cpu"


class _Builds:
    """Builds a LayerwiseOptimizer per call; the next call's untimed setup removes the previous
    one's norm hooks so repeated builds on one model do not pile hooks up."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.last: LayerwiseOptimizer | None = None

    def cleanup(self) -> None:
        if self.last is not None:
            for handle in getattr(self.last, "_norm_hooks", []):
                handle.remove()
            self.last = None

    def build(self) -> LayerwiseOptimizer:
        self.last = LayerwiseOptimizer(
            self.model, torch.optim.AdamW, lr=LR, weight_decay=WEIGHT_DECAY, rules=layer_decay_rules()
        )
        return self.last


def _timm_build(model: nn.Module) -> Callable[[], torch.optim.Optimizer]:
    return lambda: create_optimizer_v2(model, "adamw", lr=LR, weight_decay=WEIGHT_DECAY, layer_decay=0.75)


def _variants(model: nn.Module) -> tuple[dict[str, Variant], _Builds, str | None]:
    builds = _Builds(model)
    variants = {"lrgroups": Variant(builds.build, setup=builds.cleanup)}
    timm_error = None
    try:
        _timm_build(model)()
        variants["timm"] = Variant(_timm_build(model))
    except Exception as error:  # the reference is optional; lrgroups is what is measured
        timm_error = f"{type(error).__name__}: {error}"[:200]
    return variants, builds, timm_error


FAMILIES = families()


@pytest.mark.parametrize(("module", "model_name"), FAMILIES, ids=[f"{m}-{n}" for m, n in FAMILIES])
def test_build_family(benchmark, module: str, model_name: str) -> None:
    benchmark.group = "build: timm families"
    info = benchmark.extra_info
    info.update(section="build_family", module=module, model=model_name)
    try:
        model, created_on = _create_meta(model_name)
    except Exception as error:
        info.update(status="create_failed", error=f"{type(error).__name__}: {error}"[:300])
        benchmark.pedantic(lambda: None, rounds=1)
        return
    info.update(created_on=created_on, tensors=sum(1 for _ in model.parameters()))
    if not callable(getattr(model, "group_matcher", None)):
        info.update(status="no_group_matcher")
        benchmark.pedantic(lambda: None, rounds=1)
        return
    try:
        variants, builds, timm_error = _variants(model)
        builds.build()
        builds.cleanup()
    except Exception as error:
        info.update(status="build_failed", error=f"{type(error).__name__}: {error}"[:300])
        benchmark.pedantic(lambda: None, rounds=1)
        pytest.fail(f"LayerwiseOptimizer build failed on {model_name}: {error}")
    info.update(status="ok", timm_error=timm_error)
    timer = Interleaved(variants, device=torch.device("cpu"), warmup=1)
    measure(benchmark, timer, scaled(6, 3), baseline="timm" if "timm" in variants else None, budget_s=2.0, min_rounds=3)
    builds.cleanup()


@pytest.mark.parametrize("model_name", LARGE)
def test_build_large(benchmark, model_name: str) -> None:
    benchmark.group = "build: large"
    model, created_on = _create_meta(model_name)
    variants, builds, timm_error = _variants(model)
    timer = Interleaved(variants, device=torch.device("cpu"), warmup=2)
    summary = measure(benchmark, timer, scaled(30), baseline="timm" if "timm" in variants else None, budget_s=10.0)
    builds.cleanup()
    benchmark.extra_info.update(
        section="build_large",
        model=model_name,
        created_on=created_on,
        tensors=sum(1 for _ in model.parameters()),
        goal_ms=GOAL_MS,
        timm_error=timm_error,
    )
    if summary["seconds"]["lrgroups"][0] * 1e3 > GOAL_MS:
        benchmark.extra_info["profile"] = profile_per_call(builds.build, repeats=5, top=15)
        builds.cleanup()


def test_build_meta_vs_real(benchmark) -> None:
    """Building on meta tensors costs what building on the real model costs (ViT-B)."""
    benchmark.group = "build: large"
    name = "vit_base_patch16_224"
    meta, _ = _create_meta(name)
    real = model_for(name)
    on_meta, on_real = _Builds(meta), _Builds(real)
    timer = Interleaved(
        {"meta": Variant(on_meta.build, setup=on_meta.cleanup), "real": Variant(on_real.build, setup=on_real.cleanup)},
        device=torch.device("cpu"),
        warmup=2,
    )
    measure(benchmark, timer, scaled(20), baseline="meta", budget_s=10.0)
    on_meta.cleanup()
    on_real.cleanup()
    benchmark.extra_info.update(section="build_meta_vs_real", model=name, device=str(DEVICE))
