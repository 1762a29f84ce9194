"""Structural depth of every parameter: how far from the input the layer that owns it sits.

Depth drives layer decay (``lr * gamma ** (max_depth - depth)``). It comes from the architecture
only, never from what is frozen, so freezing or unfreezing a block never moves another parameter's
depth or learning rate.

Example:
    >>> import torch.nn as nn
    >>> from lrgroups.depth import param_depths
    >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    >>> param_depths(mlp)
    {'0.weight': 0, '0.bias': 0, '2.weight': 1, '2.bias': 1, '3.weight': 1, '3.bias': 1, '4.weight': 2, '4.bias': 2}

Two sources of depth:

* timm models that define ``group_matcher`` get exactly the layer ids timm's own
  ``param_groups_layer_decay`` uses (``group_parameters(model, model.group_matcher(coarse))``,
  unmatched parameters at the top), fine-grained by default, stage-wise with ``coarse=True``.
* every other module gets a generic assignment that follows the order in which submodules are
  registered (see :func:`generic_depths`): the stem at 0, the classifier at the top.
"""

from __future__ import annotations

from typing import Iterator

import torch.nn as nn

__all__ = ["param_depths", "generic_depths", "timm_depths", "unwrap_model", "find_head", "is_norm"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model under ``DistributedDataParallel``/``DataParallel`` (``.module``) and
    ``torch.compile`` (``._orig_mod``), so parameter names and depths match the bare model."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def is_norm(module: nn.Module) -> bool:
    """True for normalisation layers (batch/instance/layer/group/RMS norm and their subclasses,
    which covers timm's norm layers)."""
    return isinstance(module, _NORMS)


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _is_block_container(module: nn.Module) -> bool:
    """A container holding at least two composite (non-leaf) modules with parameters: a stage."""
    composites = [
        m for m in module.children() if next(m.children(), None) is not None and _has_params(m)
    ]
    return isinstance(module, _CONTAINERS) and len(composites) >= 2


def _holds_blocks(module: nn.Module) -> bool:
    return any(_is_block_container(m) for m in module.modules())


def _expand(module: nn.Module, coarse: bool) -> bool:
    """Whether the generic walk descends into ``module`` instead of making it one unit."""
    if coarse:
        stages_below = any(_is_block_container(m) for m in module.modules() if m is not module)
        return stages_below or (isinstance(module, _CONTAINERS) and not _is_block_container(module))
    return isinstance(module, _CONTAINERS) or _holds_blocks(module)


def _units(module: nn.Module, prefix: str, coarse: bool) -> Iterator[tuple[str, list[str]]]:
    """Yield ``(kind, [parameter names])`` units in registration order.

    ``kind`` is "leaf-weight", "leaf-norm" or "block"; the caller merges norms into the preceding
    weight layer.
    """
    own = [prefix + name for name, _ in module.named_parameters(recurse=False)]
    if own:
        yield "block", own
    for child_name, child in module.named_children():
        child_prefix = f"{prefix}{child_name}."
        if not _has_params(child):
            continue
        names = [child_prefix + n for n, _ in child.named_parameters()]
        if next(child.children(), None) is None:
            yield ("leaf-norm" if is_norm(child) else "leaf-weight"), names
        elif _expand(child, coarse):
            yield from _units(child, child_prefix, coarse)
        else:
            yield "block", names


def generic_depths(model: nn.Module, coarse: bool = False) -> dict[str, int]:
    """Depth from registration order, for any ``nn.Module``.

    The model is walked in registration order and cut into *units*; a parameter's depth is the
    index of its unit.

    * Containers (``Sequential``, ``ModuleList``, ``ModuleDict``) and modules that hold stages of
      blocks (a container of two or more composite modules, e.g. ResNet's ``layer1``) are descended
      into; any other composite module (a residual block, a transformer block) is one unit.
    * A leaf layer with weights (linear, conv, embedding) starts a unit; a normalisation layer joins
      the weight layer just before it (``conv -> bn`` is one unit), or starts its own.
    * Parameters owned directly by a descended module (ViT's ``cls_token``) form a unit placed where
      the module starts.
    * ``coarse=True`` keeps each stage (container of blocks) as one unit.

    So torchvision's ``resnet18`` gets stem 0, one depth per residual block (1..8) and ``fc`` at 9,
    the same layout timm's ``group_matcher`` gives its ResNets; an MLP gets one depth per linear.
    """
    depths: dict[str, int] = {}
    unit = -1
    previous_kind = None
    for kind, names in _units(model, "", coarse):
        if not (kind == "leaf-norm" and previous_kind == "leaf-weight"):
            unit += 1
        previous_kind = kind if kind != "leaf-norm" else previous_kind
        for name in names:
            depths.setdefault(name, unit)
    named = dict(model.named_parameters())
    return {name: depths[name] for name in named}


def timm_depths(model: nn.Module, coarse: bool = False) -> dict[str, int]:
    """Layer ids exactly as timm's ``param_groups_layer_decay`` computes them: the model's
    ``group_matcher(coarse)`` through ``timm.models.group_parameters``, unmatched parameters at the
    top layer."""
    from timm.models import group_parameters

    layer_map = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
    layer_max = max(layer_map.values())
    return {name: layer_map.get(name, layer_max) for name, _ in model.named_parameters()}


def param_depths(model: nn.Module, coarse: bool = False) -> dict[str, int]:
    """Depth of every parameter of ``model`` (names as in the bare model's ``named_parameters()``).

    Uses timm's ``group_matcher`` when the model defines one, :func:`generic_depths` otherwise.
    Wrappers (DDP, DataParallel, ``torch.compile``) are looked through.
    """
    model = unwrap_model(model)
    if callable(getattr(model, "group_matcher", None)):
        return timm_depths(model, coarse)
    return generic_depths(model, coarse)


def find_head(model: nn.Module) -> nn.Module | None:
    """The classifier: timm's ``get_classifier()``, else an attribute named ``fc``, ``classifier``,
    ``head`` or ``last_linear`` holding parameters, else the last ``nn.Linear`` registered."""
    model = unwrap_model(model)
    if callable(getattr(model, "get_classifier", None)):
        head = model.get_classifier()
        if isinstance(head, nn.Module) and _has_params(head):
            return head
    for attr in ("fc", "classifier", "head", "last_linear"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module) and _has_params(head):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None
