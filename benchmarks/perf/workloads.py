"""What the performance benchmarks run: device, models, optimizers, rules and their sizes.

Example:
    >>> model = model_for("mlp", torch.device("cpu"))
    >>> all(p.grad is not None for p in model.parameters())
    True
    >>> opt = wrapped(model, "sgd_momentum")  # 3 depths x (decay, no decay)
    >>> len(opt.param_groups), len(bare_like(opt, torch.optim.SGD, {}).param_groups)
    (6, 6)
"""

from __future__ import annotations

import functools
from typing import Any

import timm
import torch
import torch.nn as nn

import lrgroups
from lrgroups import LayerwiseOptimizer

__all__ = [
    "DEVICE",
    "LR",
    "WEIGHT_DECAY",
    "OPTIMIZERS",
    "STEP_MODELS",
    "LAYOUT_MODELS",
    "model_for",
    "layer_decay_rules",
    "bare_like",
    "single_group",
    "per_tensor_groups",
    "wrapped",
    "multi_wrapped",
    "bare_like_inner",
    "is_cuda",
]

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
LR = 1e-3
WEIGHT_DECAY = 0.05

# name -> (optimizer class, keyword arguments); the same kwargs go to the wrapper and the bare one.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "adamw_foreach": (torch.optim.AdamW, {"foreach": True}),
    "adamw_fused": (torch.optim.AdamW, {"fused": True}),
    "sgd_momentum": (torch.optim.SGD, {"momentum": 0.9}),
}


def is_cuda() -> bool:
    return DEVICE.type == "cuda"


# model -> (inner steps per sample, rounds); on CUDA every model also runs at ViT-B size.
STEP_MODELS: dict[str, tuple[int, int]] = (
    {"mlp": (50, 100), "resnet18": (10, 50), "vit_small_patch16_224": (10, 50), "vit_base_patch16_224": (10, 50)}
    if DEVICE.type == "cuda"
    else {"mlp": (20, 120), "resnet18": (1, 30), "vit_small_patch16_224": (1, 30)}
)
LAYOUT_MODELS: dict[str, tuple[int, int]] = (
    {"vit_small_patch16_224": (10, 50), "vit_base_patch16_224": (10, 50)}
    if DEVICE.type == "cuda"
    else {"vit_small_patch16_224": (1, 30)}
)


class TinyMLP(nn.Sequential):
    """Six small tensors: the optimizer step is all Python and launch overhead."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10))


@functools.lru_cache(maxsize=None)
def _create(name: str, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp":
        return TinyMLP().to(device)
    with device:
        return timm.create_model(name, pretrained=False)


def model_for(name: str, device: torch.device = DEVICE) -> nn.Module:
    """The (cached) model ``name`` on ``device`` with every parameter trainable and a random
    gradient, set once: no forward or backward runs in a timed region."""
    model = _create(name, device)
    generator = torch.Generator(device="cpu").manual_seed(1)
    for param in model.parameters():
        param.requires_grad_(True)
        if param.grad is None:
            param.grad = torch.randn(param.shape, generator=generator).to(device)
    return model


def layer_decay_rules(*extra: lrgroups.Rule) -> list[lrgroups.Rule]:
    """The usual fine-tuning rules: layer decay 0.75 and no weight decay on biases and norms."""
    return [lrgroups.layer_decay(0.75), lrgroups.no_weight_decay(), *extra]


def wrapped(model: nn.Module, optimizer: str, *extra: lrgroups.Rule) -> LayerwiseOptimizer:
    cls, kwargs = OPTIMIZERS[optimizer]
    return LayerwiseOptimizer(model, cls, lr=LR, weight_decay=WEIGHT_DECAY, rules=layer_decay_rules(*extra), **kwargs)


def multi_wrapped(model: nn.Module) -> LayerwiseOptimizer:
    """The Muon recipe in one wrapper: 2-D hidden weights to Muon, everything else (biases, norms,
    embeddings, the head) to foreach AdamW, with layer decay and no weight decay on biases/norms."""
    return LayerwiseOptimizer(
        model,
        {"adamw": (torch.optim.AdamW, {"foreach": True}), "muon": torch.optim.Muon},
        lr=LR,
        weight_decay=WEIGHT_DECAY,
        rules=layer_decay_rules(lrgroups.Rule(ndim=2, inner="muon"), lrgroups.head(inner="adamw")),
    )


def bare_like_inner(inner: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A bare optimizer of ``inner``'s class with ``inner``'s param groups (same tensors and every
    hyperparameter)."""
    groups = [{k: v for k, v in g.items() if k != "param_names"} | {"params": list(g["params"])} for g in inner.param_groups]
    return type(inner)(groups)


def bare_like(opt: torch.optim.Optimizer, cls: type[torch.optim.Optimizer], kwargs: dict) -> torch.optim.Optimizer:
    """A bare ``cls`` with exactly ``opt``'s param groups (same tensors, lr, weight decay)."""
    groups = [
        {"params": list(g["params"]), "lr": g["lr"], "weight_decay": g["weight_decay"]} for g in opt.param_groups
    ]
    return cls(groups, lr=LR, **kwargs)


def per_tensor_groups(opt: torch.optim.Optimizer, cls: type[torch.optim.Optimizer], kwargs: dict) -> torch.optim.Optimizer:
    """The mmengine layout: one group per parameter tensor, with the settings ``opt`` gave it."""
    groups = [
        {"params": [p], "lr": g["lr"], "weight_decay": g["weight_decay"]} for g in opt.param_groups for p in g["params"]
    ]
    return cls(groups, lr=LR, **kwargs)


def single_group(opt: torch.optim.Optimizer, cls: type[torch.optim.Optimizer], kwargs: dict) -> torch.optim.Optimizer:
    """All of ``opt``'s parameters in one group (base lr and weight decay): the fastest layout."""
    params = [p for g in opt.param_groups for p in g["params"]]
    return cls([{"params": params}], lr=LR, weight_decay=WEIGHT_DECAY, **kwargs)
