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

Where depth comes from (:func:`param_layers` says which, per parameter, in ``DepthInfo.source``):

* ``"timm group_matcher"``: timm models that define ``group_matcher`` get exactly the layer ids
  timm's own ``param_groups_layer_decay`` uses (``group_parameters(model, model.group_matcher(coarse))``,
  unmatched parameters at the top), fine-grained by default, stage-wise with ``coarse=True``; also
  headless ones (``num_classes=0``), whose parameters may all sit in one child (DenseNet's
  ``features``): the outermost module that defines ``group_matcher`` is the one asked.
* ``"forward order"``: every other module is cut into layers (see :func:`generic_depths`), and the
  layers are ordered by when their modules first run in a forward pass on an example input (the
  user's ``example_input``, or one built from the model), in eval and in train mode (so a branch
  that runs only in training, Inception v3's auxiliary classifier, counts; see
  :mod:`lrgroups.tracing`). The heads — the layers whose output reaches the model's output (in any
  output structure) without passing through another layer, and that feed no other head — all sit
  on the top depth (DETR's class head and its whole box MLP alike); a head made only of
  normalisation layers (a headless backbone's final norm) is not a head.
* ``"registration order"``: when no example input can be made or run, layers follow the order in
  which their modules are registered, the classifier found by :func:`find_head` on top, and a
  :class:`DepthWarning` says so.

A final norm — the top depth below the heads when it holds only normalisation layers (a ViT's
``norm`` after its last block) — shares the depth of the layer before it, as timm's ``group_matcher``
places a ViT's ``norm`` (``MATCH_PREV_GROUP``), so a Hugging Face ViT gets the depths of timm's ViT
of the same shape (embeddings 0, block ``i`` at ``i + 1``, norm with the last block, head on top).
MAE's ``get_layer_id_for_vit`` and BEiT put the final norm with the head instead (one decay factor
more lr on the norm's two tensors, every other tensor alike). BERT has no final norm and keeps
ELECTRA's depths: embeddings 0, layer ``i`` at ``i + 1``, pooler ``n + 1``, task head ``n + 2``
(google-research/electra#51).

Depths are contiguous (0..max, a layer counts once however often its module is registered); a
tensor registered under several names has one depth and one head flag. :func:`renumber` counts
depths within a subset (``LayerwiseOptimizer(..., select=...)``). Wrappers are looked through:
DDP, DataParallel, ``torch.compile`` and peft's ``PeftModel`` (names are the bare model's), and
modules that own no parameter and hold all of them in one child (``.module``, ``.model``, peft's
``base_model.model``: names keep that prefix; timm's ``group_matcher`` patterns apply to the names
without it, and the layers are those of the child).

:func:`describe` turns depths into one :class:`ParamInfo` per parameter tensor (what rules read);
the forward pass that orders layers is :mod:`lrgroups.tracing`'s.
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Literal, NamedTuple, Sequence

import torch
import torch.nn as nn

from ._util import has_params
from .tracing import Trace, trace_model

__all__ = [
    "DepthInfo",
    "DepthWarning",
    "TiedWeightsWarning",
    "param_depths",
    "param_layers",
    "generic_depths",
    "timm_depths",
    "unwrap_model",
    "find_head",
    "is_norm",
    "is_container",
    "ParamInfo",
    "describe",
    "renumber",
]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)

Tied = Literal["head", "embedding"]


class DepthWarning(UserWarning):
    """Depth could not follow the data flow (no example input could be made or run)."""


class TiedWeightsWarning(UserWarning):
    """A tensor is both an input embedding and the output layer; the warning names both roles."""


class DepthInfo(NamedTuple):
    """Depth, head flag and the source of the depth of one parameter."""

    depth: int
    is_head: bool
    source: str


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model under ``DistributedDataParallel``/``DataParallel`` (``.module``),
    ``torch.compile`` (``._orig_mod``) and peft's ``PeftModel`` (``get_base_model()``, the model
    with its adapter layers), so parameter names and depths match the bare model.

    >>> import torch.nn as nn
    >>> bare = nn.Linear(2, 2)
    >>> unwrap_model(nn.DataParallel(bare)) is bare
    True
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif type(model).__module__.split(".")[0] == "peft" and callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
        else:
            return model


def _chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(prefix, module)`` from ``model`` down through prefixed wrappers, whose names are
    ``prefix + name``: a wrapper owns no parameter itself and holds all of them in one child
    (``.module``, ``.model``, peft's ``base_model.model``, a user's ``self.net``, a headless timm
    DenseNet's ``features``, ...). The last is the core, whose layers are walked."""
    chain = [("", model)]
    while next(model.parameters(recurse=False), None) is None:
        holders = [(name, child) for name, child in model.named_children() if has_params(child)]
        if len(holders) != 1:
            break
        model = holders[0][1]
        chain.append((chain[-1][0] + holders[0][0] + ".", model))
    return chain


def _core(model: nn.Module) -> tuple[str, nn.Module]:
    """``(prefix, inner)``: the model under prefixed wrappers (the last of :func:`_chain`)."""
    return _chain(model)[-1]


def _timm_model(model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(prefix, module)`` of the outermost module of :func:`_chain` that defines timm's
    ``group_matcher`` (a timm model, also a headless one whose parameters all sit in one child,
    as ``num_classes=0`` leaves DenseNet's ``features``), or ``None``."""
    return next(((prefix, m) for prefix, m in _chain(model) if callable(getattr(m, "group_matcher", None))), None)


def is_norm(module: nn.Module) -> bool:
    """True for normalisation layers (batch/instance/layer/group/RMS norm and their subclasses,
    which covers timm's norm layers)."""
    return isinstance(module, _NORMS)


def is_container(module: nn.Module) -> bool:
    """True for the plain containers (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``), which
    group layers without being a layer or a block themselves."""
    return isinstance(module, _CONTAINERS)


def _is_block_container(module: nn.Module) -> bool:
    """A container holding at least two composite (non-leaf) modules with parameters: a stage."""
    composites = [m for m in module.children() if next(m.children(), None) is not None and has_params(m)]
    return isinstance(module, _CONTAINERS) and len(composites) >= 2


def _holds_blocks(module: nn.Module) -> bool:
    return any(_is_block_container(m) for m in module.modules())


def _expand(module: nn.Module, coarse: bool) -> bool:
    """Whether the generic walk descends into ``module`` instead of making it one unit."""
    if coarse:
        stages_below = any(_is_block_container(m) for m in module.modules() if m is not module)
        return stages_below or (isinstance(module, _CONTAINERS) and not _is_block_container(module))
    return isinstance(module, _CONTAINERS) or _holds_blocks(module)


@dataclass
class _Unit:
    kind: str  # "leaf-weight", "leaf-norm", "block", or "own" (a descended module's own parameters)
    owner: nn.Module  # the module whose first call places the unit
    params: list[tuple[str, nn.Parameter]]


def _units(module: nn.Module, prefix: str, coarse: bool) -> Iterator[_Unit]:
    """Units in registration order, one per registration (a shared module yields one per name).

    ``kind`` is "leaf-weight", "leaf-norm", "block" or "own"; the caller merges norms into the
    preceding weight layer.
    """
    own = [(prefix + name, p) for name, p in module.named_parameters(recurse=False)]
    if own:
        yield _Unit("own", module, own)
    for child_name, child in module.named_children():
        child_prefix = f"{prefix}{child_name}."
        if not has_params(child):
            continue
        params = [(child_prefix + n, p) for n, p in child.named_parameters()]
        if next(child.children(), None) is None:
            yield _Unit("leaf-norm" if is_norm(child) else "leaf-weight", child, params)
        elif _expand(child, coarse):
            yield from _units(child, child_prefix, coarse)
        else:
            yield _Unit("block", child, params)


def _number_units(units: list[_Unit], time: dict[int, float] | None) -> dict[int, int]:
    """Depth of every tensor (by id): units sorted by the first call of their owner or first use of
    one of their tensors (registration order when ``time`` is None; a unit that never ran keeps its
    place after the unit registered before it); a tensor belongs to the first unit holding it; empty units vanish; a norm joins the
    weight layer just before it."""
    keys = []
    last = -1.0
    for index, unit in enumerate(units):
        if time is not None:
            seen = [time[i] for i in (id(unit.owner), *(id(p) for _, p in unit.params)) if i in time]
            last = min(seen) if seen else last
        keys.append((last if time is not None else index, index))
    depth_of: dict[int, int] = {}
    depth = -1
    previous_kind = None
    for _, index in sorted(keys):
        unit = units[index]
        fresh = [p for _, p in unit.params if id(p) not in depth_of]
        if not fresh:
            continue
        if not (unit.kind == "leaf-norm" and previous_kind == "leaf-weight"):
            depth += 1
        previous_kind = unit.kind if unit.kind != "leaf-norm" else previous_kind
        for p in fresh:
            depth_of[id(p)] = depth
    return depth_of


def generic_depths(model: nn.Module, coarse: bool = False) -> dict[str, int]:
    """Depth from registration order, for any ``nn.Module`` (no forward pass, no head moved).

    The model is walked in registration order and cut into *units*; a parameter's depth is the
    index of its unit.

    * Containers (``Sequential``, ``ModuleList``, ``ModuleDict``) and modules that hold stages of
      blocks (a container of two or more composite modules, e.g. ResNet's ``layer1``) are descended
      into; any other composite module (a residual block, a transformer block, DETR's box MLP) is
      one unit.
    * A leaf layer with weights (linear, conv, embedding) starts a unit; a normalisation layer joins
      the weight layer just before it (``conv -> bn`` is one unit), or starts its own.
    * Parameters owned directly by a descended module (ViT's ``cls_token``) form a unit placed where
      the module starts.
    * ``coarse=True`` keeps each stage (container of blocks) as one unit.
    * A module registered under several names counts once, at its first name: depths stay 0..max.

    So torchvision's ``resnet18`` gets stem 0, one depth per residual block (1..8) and ``fc`` at 9,
    the same layout timm's ``group_matcher`` gives its ResNets; an MLP gets one depth per linear.
    """
    prefix, core = _core(model)
    depth_of = _number_units(list(_units(core, prefix, coarse)), None)
    return {name: depth_of[id(p)] for name, p in model.named_parameters()}


def timm_depths(model: nn.Module, coarse: bool = False) -> dict[str, int]:
    """Layer ids exactly as timm's ``param_groups_layer_decay`` computes them: the model's
    ``group_matcher(coarse)`` through ``timm.models.group_parameters``, unmatched parameters at the
    top layer."""
    from timm.models import group_parameters

    layer_map = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
    layer_max = max(layer_map.values())
    return {name: layer_map.get(name, layer_max) for name, _ in model.named_parameters()}


def find_head(model: nn.Module) -> nn.Module | None:
    """The classifier by name, without running the model.

    Along the model and the wrappers under it (see this module's docstring), outermost first: timm's
    ``get_classifier()`` (a module without parameters, ``nn.Identity`` after ``num_classes=0``,
    means no head), else Hugging Face's ``get_output_embeddings()``; then, on the core, an
    attribute named ``fc``, ``classifier``, ``head`` or ``last_linear`` holding parameters, else (only
    for a model without ``get_classifier``) the last ``nn.Linear`` registered. A getter that raises
    (timm's EfficientViT and SHViT when headless) is passed over.
    (:func:`param_layers` finds every head from the data flow when the model can be run.)
    """
    chain = _chain(unwrap_model(model))
    declared = False
    for _, module in chain:
        for getter in ("get_classifier", "get_output_embeddings"):
            if not callable(getattr(module, getter, None)):
                continue
            declared = declared or getter == "get_classifier"
            try:
                head = getattr(module, getter)()
            except Exception:  # timm's get_classifier() on a headless EfficientViT/SHViT: AttributeError
                continue
            if isinstance(head, nn.Module) and (has_params(head) or getter == "get_classifier"):
                return head if has_params(head) else None
    core = chain[-1][1]
    for attr in ("fc", "classifier", "head", "last_linear"):
        head = getattr(core, attr, None)
        if isinstance(head, nn.Module) and has_params(head):
            return head
    if declared:
        return None
    linears = [m for m in core.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


# ---------------------------------------------------------------------------- heads
def _module_heads(model: nn.Module, prefix: str, units: list[_Unit], trace: Trace) -> set[int]:
    """Tensor ids of every head: units whose output reaches the model output directly and that feed
    no other such unit, plus tensors used directly at the output. With two heads or more, a head
    also takes the layers that only it uses inside the smallest module around it that holds no
    stage of blocks (a box head built as ``Sequential(Linear, ReLU, Linear)``)."""
    members = [
        {id(m) for m in unit.owner.modules()}
        if unit.kind == "block"
        else {id(unit.owner)}
        if unit.kind != "own"
        else set()
        for unit in units
    ]  # a descended module's own tensors are heads only when used directly at the output (head_params)
    hits = [member & trace.head_modules for member in members]
    feeds = [set().union(*(trace.feeds.get(m, ()) for m in hit)) for hit in hits]
    heads = [
        index
        for index, hit in enumerate(hits)
        if hit and not any(hit & feeds[other] for other in range(len(units)) if other != index)
    ]
    chosen = set(heads)
    if len(heads) >= 2:
        path = {id(m): name for name, m in model.named_modules()}
        for head in heads:
            parts = path[id(units[head].owner)].split(".")
            for cut in range(len(parts) - 1, 0, -1):
                ancestor = ".".join(parts[:cut])
                if len(ancestor) < len(prefix) or _holds_blocks(model.get_submodule(ancestor)):
                    break
                inside = [i for i, unit in enumerate(units) if path[id(unit.owner)].startswith(ancestor + ".")]
                only_this = all(
                    i == head
                    or (
                        i not in heads
                        and members[i] & feeds[head]
                        and not any(members[i] & feeds[other] for other in heads if other != head)
                    )
                    for i in inside
                )
                if not only_this:
                    break
                chosen.update(inside)
    return {id(p) for index in chosen for _, p in units[index].params} | set(trace.head_params)


def _input_embeddings(model: nn.Module) -> set[int]:
    ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            embedding = getter()
        except Exception:  # a model that does not implement it
            embedding = None
        if isinstance(getattr(embedding, "weight", None), nn.Parameter):
            ids.add(id(embedding.weight))
    return ids


def _registrations(model: nn.Module) -> list[tuple[str, nn.Parameter, nn.Module]]:
    """Every ``(name, tensor, owning module)`` registration of a parameter, in registration order,
    shared tensors once per registration (public ``named_parameters(recurse=False,
    remove_duplicate=False)`` of every module)."""
    found = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = module_name + "." if module_name else ""
        for param_name, param in module.named_parameters(recurse=False, remove_duplicate=False):
            found.append((prefix + param_name, param, module))
    return found


def _warn_tied(model: nn.Module, tied_ids: set[int]) -> None:
    registrations: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, param, module in _registrations(model):
        registrations.setdefault(id(param), []).append((name, module))
    for tensor_id in tied_ids:
        roles = registrations.get(tensor_id, [])
        embedding = next((n for n, m in roles if isinstance(m, nn.Embedding)), roles[0][0] if roles else "?")
        output = [repr(n) for n, _ in roles if n != embedding] or ["(used functionally by the output)"]
        warnings.warn(
            f"{embedding!r} is both the input embedding and the output layer {', '.join(output)} (tied "
            "weights): treated as the head (top depth, matched by head()), as fastai's ULMFiT split does; "
            "pass tied='head' to keep this without the warning, or tied='embedding' to keep it at its "
            "embedding depth, not a head (BERT-style layer decay, embeddings lowest)",
            TiedWeightsWarning,
            stacklevel=4,
        )


def _join_final_norms(depth_of: dict[int, int], heads: set[int], owner: dict[int, nn.Module]) -> None:
    """Put the final norm (the top non-head depth when it holds only normalisation layers, e.g. a
    ViT's ``norm`` after its last block) on the depth of the layer before it, in place; repeated for
    several final norms, never leaving fewer than one non-head depth. timm's ``group_matcher``
    places a ViT's ``norm`` so (``MATCH_PREV_GROUP``): a final norm of its own would cost every layer
    below it one more decay factor (google-research/electra#51)."""
    levels = sorted({d for tensor_id, d in depth_of.items() if tensor_id not in heads})
    while len(levels) >= 2:
        members = [t for t, d in depth_of.items() if d == levels[-1] and t not in heads]
        if not all(is_norm(owner[t]) for t in members):
            return
        for t in members:
            depth_of[t] = levels[-2]
        levels.pop()


def param_layers(
    model: nn.Module, coarse: bool = False, *, example_input: Any = None, tied: Tied | None = None
) -> dict[str, DepthInfo]:
    """Depth, head flag and depth source of every parameter of ``model`` (names as in the bare
    model's ``named_parameters()``; see this module's docstring for the sources).

    Args:
        model: any ``nn.Module``, wrapped or not.
        coarse: stage-wise depths (timm ``group_matcher(coarse=True)``, or one depth per container of
            blocks).
        example_input: what ``model`` is called with to follow the data flow: a tensor, a tuple of
            positional arguments or a dict of keyword arguments (e.g. ``torch.randn(1, 3, 64, 64)``;
            batch 1 is enough; the train-mode pass doubles a batch of 1 when BatchNorm needs it).
            By default an input is built from the model. The model runs in eval mode and in train
            mode with gradients on (the autograd graph shows the heads); its training flags,
            ``requires_grad``, buffers (BatchNorm statistics and counters) and the random number
            generators are put back and no ``.grad`` is written (other effects of the model's own
            ``forward``, a counter it keeps, happen once per mode); the result is cached per model
            and input shape.
        tied: where a tensor that is both an input embedding and the output layer (a tied language
            model) goes: ``"head"`` (top depth, matched by :func:`lrgroups.head`, as fastai's ULMFiT
            split trains it with the decoder) or ``"embedding"`` (its embedding depth, not a head: the
            BERT-style layer decay that puts embeddings lowest). ``None`` (default) means ``"head"``
            and warns (:class:`TiedWeightsWarning`) naming both of the tensor's roles.

    Raises:
        ValueError: ``tied`` is not one of the above, or the model fails on ``example_input``.

    Warns:
        DepthWarning: no input could be built or run (depths follow registration order), or the
            model ran in eval mode only (depths and heads follow that pass).
        TiedWeightsWarning: a tied embedding/output tensor was placed by the default (``tied=None``).

    Example:
        >>> import torch, torch.nn as nn
        >>> class Net(nn.Module):  # head registered first, called last
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.head = nn.Linear(8, 2)
        ...         self.body = nn.Linear(4, 8)
        ...     def forward(self, x):
        ...         return self.head(self.body(x).relu())
        >>> param_layers(Net(), example_input=torch.randn(1, 4))["head.weight"]
        DepthInfo(depth=1, is_head=True, source='forward order; head')
    """
    if tied not in (None, "head", "embedding"):
        raise ValueError(f"tied must be 'head', 'embedding' or None, got {tied!r}")
    model = unwrap_model(model)
    prefix, core = _core(model)
    named = list(model.named_parameters())
    if not named:
        return {}
    timm_model = _timm_model(model)
    if timm_model is not None:
        return _timm_layers(*timm_model, coarse, named)
    units = list(_units(core, prefix, coarse))
    trace, heads, source = _traced_heads(model, prefix, units, example_input)
    owner: dict[int, nn.Module] = {}
    for _, param, module in _registrations(model):
        owner.setdefault(id(param), module)
    for unit in units:  # a final norm at the output of a headless model is not a head
        if all(id(p) in heads and is_norm(owner[id(p)]) for _, p in unit.params):
            heads -= {id(p) for _, p in unit.params}
    tied_ids = heads & _input_embeddings(core)
    if tied_ids and tied is None:
        _warn_tied(model, tied_ids)
    if tied == "embedding":
        heads -= tied_ids
    depth_of = _number_units(units, None if trace is None else trace.first_call)
    top = max((d for tensor_id, d in depth_of.items() if tensor_id not in heads), default=-1) + 1
    depth_of = {tensor_id: top if tensor_id in heads else d for tensor_id, d in depth_of.items()}
    _join_final_norms(depth_of, heads, owner)
    rank = {d: i for i, d in enumerate(sorted(set(depth_of.values())))}
    result = {}
    for name, p in named:
        label = source
        if id(p) in tied_ids:
            label += "; head (tied embedding)" if id(p) in heads else "; tied embedding, embedding side"
        elif id(p) in heads:
            label += "; head"
        result[name] = DepthInfo(rank[depth_of[id(p)]], id(p) in heads, label)
    return result


def _timm_layers(prefix: str, timm_module: nn.Module, coarse: bool,
                 named: list[tuple[str, nn.Parameter]]) -> dict[str, DepthInfo]:
    """:func:`param_layers` of a timm model (``prefix``: where it sits in the model): timm's
    ``group_matcher`` depths, its classifier the head."""
    depths = {prefix + name: depth for name, depth in timm_depths(timm_module, coarse).items()}
    head = find_head(timm_module)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    return {
        name: DepthInfo(depths[name], id(p) in head_ids, "timm group_matcher" + ("; head" if id(p) in head_ids else ""))
        for name, p in named
    }


def _traced_heads(model: nn.Module, prefix: str, units: list[_Unit],
                  example_input: Any) -> tuple[Trace | None, set[int], str]:
    """(the forward trace or ``None``, the ids of the head parameters, the depth source): from the
    data flow, else (with a :class:`DepthWarning`) registration order and the head found by name.
    The warnings' ``stacklevel`` points at :func:`param_layers`' caller."""
    trace, why = trace_model(model, example_input)
    if trace is None:
        warnings.warn(
            f"{type(model).__name__}: depths follow registration order because {why}; pass "
            "example_input=... (a tensor, a tuple of arguments or a dict of keyword arguments) to order "
            "layers by data flow",
            DepthWarning,
            stacklevel=4,
        )
        head = find_head(model)
        return None, {id(p) for p in head.parameters()} if head is not None else set(), "registration order"
    if trace.train_error:
        warnings.warn(
            f"{type(model).__name__}: depths and heads follow the eval-mode pass only, because the model did "
            f"not run in train mode ({trace.train_error}); what it runs only in training (an auxiliary "
            "classifier) is not seen: pass example_input=... that runs in train mode too",
            DepthWarning,
            stacklevel=4,
        )
    return trace, _module_heads(model, prefix, units, trace), "forward order"


def param_depths(
    model: nn.Module, coarse: bool = False, *, example_input: Any = None, tied: Tied | None = None
) -> dict[str, int]:
    """Depth of every parameter of ``model`` (names as in the bare model's ``named_parameters()``):
    :func:`param_layers` without the head flags and sources; same arguments, errors and warnings.

    Uses timm's ``group_matcher`` when the model (under any wrapper) defines one; otherwise the
    order in which layers first run in a forward pass, heads on top; registration order (with a
    :class:`DepthWarning`) when the model cannot be run.
    """
    layers = param_layers(model, coarse, example_input=example_input, tied=tied)
    return {name: info.depth for name, info in layers.items()}


# ---------------------------------------------------------------------------- parameter descriptions
@dataclass(frozen=True)
class ParamInfo:
    """What a rule may look at for one parameter (tied weights appear once, under their first name).

    ``depth``/``max_depth`` come from :mod:`lrgroups.depth`; ``is_head`` marks the parameters of
    every head (one flag per tensor, whatever its names); ``depth_source`` says where the depth came
    from (``"timm group_matcher"``, ``"forward order"``, ``"registration order"``, with ``"; head"``
    for heads moved to the top depth and the tied-embedding treatment, see
    :func:`lrgroups.depth.param_layers`); ``no_weight_decay`` marks names the model lists in its own
    ``no_weight_decay()``.
    """

    name: str
    aliases: tuple[str, ...]
    param: torch.Tensor = field(repr=False, compare=False)
    module: nn.Module = field(repr=False, compare=False)
    depth: int
    max_depth: int
    is_head: bool
    is_norm: bool
    no_weight_decay: bool
    depth_source: str = ""

    @property
    def ndim(self) -> int:
        """The tensor's number of dimensions."""
        return self.param.ndim


def describe(
    model: nn.Module, coarse: bool = False, *, example_input: Any = None, tied: Tied | None = None
) -> list[ParamInfo]:
    """One :class:`ParamInfo` per distinct parameter tensor of ``model``, in registration order.

    Args:
        model: any ``nn.Module`` (wrappers are looked through; a tensor's names under the module
            given are among its aliases).
        coarse: stage-wise depths (see :func:`param_layers`).
        example_input: how depth follows the data flow (see :func:`param_layers`).
        tied: where a tied embedding/output tensor goes (see :func:`param_layers`).

    Returns:
        The descriptions, one per tensor (its first registered name is its name, later ones its aliases).

    Raises:
        ValueError: as :func:`param_layers`.

    Example:
        >>> import torch, torch.nn as nn
        >>> infos = describe(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), example_input=torch.randn(1, 4))
        >>> [(i.name, i.depth, i.is_head, i.depth_source) for i in infos][-1]
        ('1.bias', 1, True, 'forward order; head')
    """
    given, model = model, unwrap_model(model)
    layers = param_layers(model, coarse, example_input=example_input, tied=tied)
    by_id = {id(param): layers[name] for name, param in model.named_parameters()}
    max_depth = max((layer.depth for layer in layers.values()), default=0)
    no_wd = set(model.no_weight_decay()) if callable(getattr(model, "no_weight_decay", None)) else set()

    # One walk over every (module, parameter) registration, shared ones included: the first name of
    # a tensor is its name (as in ``named_parameters()``), later ones are its aliases.
    names: dict[int, list[str]] = {}
    first: list[tuple[str, torch.Tensor, nn.Module]] = []
    for name, param, module in _registrations(model):
        if id(param) not in names:
            names[id(param)] = []
            first.append((name, param, module))
        names[id(param)].append(name)
    if given is not model:  # the names of the module the user passed (peft's base_model.model., DDP's module.)
        for name, param in given.named_parameters(remove_duplicate=False):
            if id(param) in names and name not in names[id(param)]:
                names[id(param)].append(name)

    infos = []
    for name, param, module in first:
        layer = by_id[id(param)]
        infos.append(
            ParamInfo(
                name=name,
                aliases=tuple(names[id(param)][1:]),
                param=param,
                module=module,
                depth=layer.depth,
                max_depth=max_depth,
                is_head=layer.is_head,
                is_norm=is_norm(module),
                no_weight_decay=any(fnmatch.fnmatchcase(name, pattern) for pattern in no_wd),
                depth_source=layer.source,
            )
        )
    return infos


def renumber(infos: Sequence[ParamInfo]) -> list[ParamInfo]:
    """The parameters ``infos`` describe, with depths counted within them: their distinct depths
    renumbered 0, 1, ... in order (so the top one, the heads' where heads are among them, stays
    last) and ``max_depth`` the top of those. A subset of a model (``LayerwiseOptimizer(...,
    select=...)``: a GAN's discriminator) thus gets depths without the gaps the rest of the model
    leaves, so layer decay skips no factor and the default unfreezing stages each match something.

    Example:
        >>> import torch.nn as nn
        >>> infos = describe(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)))
        >>> [(i.name, i.depth, i.max_depth) for i in renumber([i for i in infos if i.depth != 1])][::2]
        [('0.weight', 0, 1), ('2.weight', 1, 1)]
    """
    rank = {depth: index for index, depth in enumerate(sorted({info.depth for info in infos}))}
    return [replace(info, depth=rank[info.depth], max_depth=len(rank) - 1) for info in infos]


def describe_nonempty(
    model: nn.Module, coarse: bool = False, *, example_input: Any = None, tied: Tied | None = None
) -> list[ParamInfo]:
    """:func:`describe`, refusing a model without parameters.

    Raises:
        ValueError: the model has no parameters (and as :func:`describe`).
    """
    infos = describe(model, coarse, example_input=example_input, tied=tied)
    if not infos:
        raise ValueError(f"{type(unwrap_model(model)).__name__} has no parameters to optimize")
    return infos
