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
  unmatched parameters at the top), fine-grained by default, stage-wise with ``coarse=True``.
* ``"forward order"``: every other module is cut into layers (see :func:`generic_depths`), and the
  layers are ordered by when their modules first run in one forward pass on an example input (the
  user's ``example_input``, or one built from the model). The heads — the layers whose output
  reaches the model's output without passing through another layer, and that feed no other head —
  all sit on the top depth (DETR's class head and its whole box MLP alike).
* ``"registration order"``: when no example input can be made or run, layers follow the order in
  which their modules are registered, the classifier found by :func:`find_head` on top, and a
  :class:`DepthWarning` says so.

Depths are contiguous (0..max, a layer counts once however often its module is registered); a
tensor registered under several names has one depth and one head flag. Wrappers are looked through:
DDP, DataParallel, ``torch.compile`` and peft's ``PeftModel`` (names are the bare model's), and
modules that own no parameter and hold all of them in one child (``.module``, ``.model``, peft's
``base_model.model``: names keep that prefix; timm's ``group_matcher`` patterns apply to the names
without it, and the layers are those of the child).
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Literal, NamedTuple

import torch
import torch.nn as nn

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
]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)
_CONV_SIZES = (32, 64, 224)
_MAX_CANDIDATES = 12  # input shapes tried before falling back to registration order

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


def _core(model: nn.Module) -> tuple[str, nn.Module]:
    """``(prefix, inner)``: the model under prefixed wrappers, whose names are ``prefix + name``.
    A wrapper owns no parameter itself and holds all of them in one child (``.module``, ``.model``,
    peft's ``base_model.model``, a user's ``self.net``, ...)."""
    prefix = ""
    while next(model.parameters(recurse=False), None) is None:
        holders = [(name, child) for name, child in model.named_children() if _has_params(child)]
        if len(holders) != 1:
            break
        prefix += holders[0][0] + "."
        model = holders[0][1]
    return prefix, model


def is_norm(module: nn.Module) -> bool:
    """True for normalisation layers (batch/instance/layer/group/RMS norm and their subclasses,
    which covers timm's norm layers)."""
    return isinstance(module, _NORMS)


def is_container(module: nn.Module) -> bool:
    """True for the plain containers (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``), which
    group layers without being a layer or a block themselves."""
    return isinstance(module, _CONTAINERS)


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
        if not _has_params(child):
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
    """The classifier by name, without running the model: timm's ``get_classifier()``, else
    Hugging Face's ``get_output_embeddings()``, else an attribute named ``fc``, ``classifier``,
    ``head`` or ``last_linear`` holding parameters, else the last ``nn.Linear`` registered.
    (:func:`param_layers` finds every head from the data flow when the model can be run.)"""
    prefix, model = _core(unwrap_model(model))
    for getter in ("get_classifier", "get_output_embeddings"):
        if callable(getattr(model, getter, None)):
            head = getattr(model, getter)()
            if isinstance(head, nn.Module) and _has_params(head):
                return head
    for attr in ("fc", "classifier", "head", "last_linear"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module) and _has_params(head):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


# ---------------------------------------------------------------------------- data flow
@dataclass(frozen=True)
class _Trace:
    """What one forward pass showed, by object id (valid while the model's structure is unchanged)."""

    first_call: dict[int, int]  # module -> its first call; parameter -> its first use (one clock)
    head_modules: frozenset[int]  # modules whose output reaches the model output directly
    head_params: frozenset[int]  # parameters used directly at the output (a functional tied layer)
    feeds: dict[int, frozenset[int]]  # head module -> the modules whose output flows into it


_TRACES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _grad_fns(value: Any) -> list:
    if isinstance(value, torch.Tensor):
        return [value.grad_fn] if value.grad_fn is not None else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [fn for item in value for fn in _grad_fns(item)]
    return []


def _next(node) -> list:
    return [fn for fn, _ in node.next_functions if fn is not None]


def _direct_weights(node, produced: dict) -> set[int]:
    """The parameters ``node`` consumes through views only, when one of them has 2 or more
    dimensions (``F.linear(h, embedding.weight, bias)``: a functional layer); else none."""
    found = []
    for fn in _next(node):
        while fn not in produced and type(fn).__name__ != "AccumulateGrad" and len(_next(fn)) == 1:
            fn = _next(fn)[0]
        if type(fn).__name__ == "AccumulateGrad":
            found.append(fn.variable)
    return {id(p) for p in found} if any(p.ndim >= 2 for p in found) else set()


def _reach(starts: list) -> set:
    seen, stack = set(), list(starts)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(_next(node))
    return seen


def _run_trace(model: nn.Module, args: tuple, kwargs: dict) -> _Trace:
    clock = itertools.count()
    first_call: dict[int, int] = {}  # module or parameter -> first call / first use
    produced: dict[Any, set[int]] = {}  # grad_fn -> modules whose output it is
    params = list(model.parameters())
    param_ids = {id(p) for p in params}

    def before(module, _args):
        if id(module) not in first_call:
            first_call[id(module)] = next(clock)

    def after(module, _args, output):
        for fn in _grad_fns(output):
            produced.setdefault(fn, set()).add(id(module))

    class FirstUse(torch.overrides.TorchFunctionMode):
        """Records when each parameter is first used (also by functional code, outside its module)."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            for value in (*args, *(kwargs or {}).values()):
                if isinstance(value, torch.Tensor) and id(value) in param_ids and id(value) not in first_call:
                    first_call[id(value)] = next(clock)
            return func(*args, **(kwargs or {}))

    modules = [m for m in model.modules() if _has_params(m)]
    requires_grad = [p.requires_grad for p in params]
    training = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_pre_hook(before) for m in modules]
    # The model's own output (also that of the wrapped model inside a wrapper: a module holding every
    # parameter) is where the search for heads starts, not a layer's output.
    handles += [m.register_forward_hook(after) for m in modules if len(list(m.parameters())) < len(params)]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        # eager, also for a model compiled in place (``model.compile()``): Dynamo would trace the hooks
        # and this mode (pytorch#117758, #105653) instead of the model
        with torch.compiler.set_stance("force_eager"), torch.enable_grad(), FirstUse():
            output = model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(params, requires_grad):
            p.requires_grad_(flag)
        for m, flag in training:
            m.training = flag
    head_modules: set[int] = set()
    head_params: set[int] = set()
    hits: dict[int, list] = {}
    seen, stack = set(), _grad_fns(output)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in produced:
            for module_id in produced[node]:
                head_modules.add(module_id)
                hits.setdefault(module_id, []).append(node)
            continue
        if type(node).__name__ == "AccumulateGrad":
            head_params.add(id(node.variable))
            continue
        direct = _direct_weights(node, produced)
        if direct:
            head_params |= direct
            continue
        stack.extend(_next(node))
    feeds = {}
    for module_id, nodes in hits.items():
        reach = _reach(nodes) - set(nodes)
        feeds[module_id] = frozenset(m for node in reach if node in produced for m in produced[node])
    return _Trace(first_call, frozenset(head_modules), frozenset(head_params), feeds)


def _as_call(example_input: Any) -> tuple[tuple, dict]:
    if isinstance(example_input, dict):
        return (), dict(example_input)
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input), {}
    return (example_input,), {}


def _candidate_inputs(model: nn.Module) -> Iterator[tuple[tuple, dict]]:
    """Inputs the model may accept, from what it declares (Lightning's ``example_input_array``,
    Hugging Face's ``dummy_inputs``, timm's ``pretrained_cfg["input_size"]``) or from the shape its
    first layers read (an ``nn.Embedding``: token ids; a conv: an image of 32, 64 or 224 pixels; a
    linear: a feature vector)."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype if param.is_floating_point() else torch.float32
    declared = getattr(model, "example_input_array", None)
    if declared is not None:
        yield _as_call(declared)
    try:
        dummy = getattr(model, "dummy_inputs", None)
    except Exception:  # a property that cannot build its inputs
        dummy = None
    if isinstance(dummy, dict):
        yield (), {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dummy.items()}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if isinstance(cfg, dict) and cfg.get("input_size"):
        yield (torch.zeros(1, *cfg["input_size"], device=device, dtype=dtype),), {}
    layers = sorted(
        (m for m in model.modules() if isinstance(m, (nn.Embedding, nn.modules.conv._ConvNd, nn.Linear))),
        key=lambda m: not (isinstance(m, nn.Embedding) or getattr(m, "in_channels", None) in (1, 3)),
    )  # images and token ids first, then in registration order
    tried: set = set()
    for module in layers:
        if isinstance(module, nn.Embedding):
            shapes = [("ids", (1, 8), module.num_embeddings)]
        elif isinstance(module, nn.modules.conv._ConvNd):
            spatial = len(module.kernel_size)
            shapes = [("x", (1, module.in_channels) + (size,) * spatial, None) for size in _CONV_SIZES]
        else:
            shapes = [("x", (1, module.in_features), None), ("x", (1, 4, module.in_features), None)]
        for kind, shape, high in shapes:
            if (kind, shape) in tried or len(tried) >= _MAX_CANDIDATES:
                continue
            tried.add((kind, shape))
            if kind == "ids":
                yield (torch.ones(shape, dtype=torch.long, device=device) * min(1, high - 1),), {}
            else:
                yield (torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device, dtype),), {}


def _signature(model: nn.Module) -> tuple:
    return tuple((name, id(m)) for name, m in model.named_modules(remove_duplicate=False)) + tuple(
        id(p) for p in model.parameters()
    )


def _input_key(example_input: Any) -> Any:
    if example_input is None:
        return "auto"
    if isinstance(example_input, torch.Tensor):
        return ("tensor", tuple(example_input.shape), example_input.dtype, str(example_input.device))
    if isinstance(example_input, dict):
        return ("dict", tuple((k, _input_key(v)) for k, v in example_input.items()))
    if isinstance(example_input, (tuple, list)):
        return ("seq", tuple(_input_key(v) for v in example_input))
    return ("object", id(example_input))


def _trace(model: nn.Module, example_input: Any) -> tuple[_Trace | None, str]:
    """The cached trace of ``model`` on ``example_input`` (or on an input built from the model),
    and why there is none when it is None.

    Raises:
        ValueError: the model fails on the ``example_input`` the user gave.
    """
    per_model = _TRACES.setdefault(model, {})
    key = (_signature(model), _input_key(example_input))
    if key in per_model:
        return per_model[key]
    if example_input is not None:
        args, kwargs = _as_call(example_input)
        try:
            result = (_run_trace(model, args, kwargs), "")
        except Exception as error:
            raise ValueError(
                f"{type(model).__name__} failed on example_input (needed to order its layers by data "
                f"flow): {type(error).__name__}: {error}"
            ) from error
    elif any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        result = (None, "it has uninitialized (lazy) parameters")
    else:
        result = (None, "no input built from its layers' shapes ran")
        for args, kwargs in _candidate_inputs(model):
            try:
                result = (_run_trace(model, args, kwargs), "")
                break
            except Exception as error:
                result = (None, f"no input built from its layers' shapes ran (last: {type(error).__name__}: {error})")
    per_model.clear()  # one structure, one input kept per model
    per_model[key] = result
    return result


# ---------------------------------------------------------------------------- heads
def _module_heads(model: nn.Module, prefix: str, units: list[_Unit], trace: _Trace) -> set[int]:
    """Tensor ids of every head: units whose output reaches the model output directly and that feed
    no other such unit, plus tensors used directly at the output. With two heads or more, a head
    also takes the layers that only it uses inside the smallest module around it that holds no
    stage of blocks (a box head built as ``Sequential(Linear, ReLU, Linear)``)."""
    members = [
        {id(m) for m in unit.owner.modules()} if unit.kind == "block" else {id(unit.owner)} if unit.kind != "own" else set()
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
                    or (i not in heads and members[i] & feeds[head]
                        and not any(members[i] & feeds[other] for other in heads if other != head))
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


def _registrations(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """Every ``(name, owning module)`` under which each tensor (by id) is registered."""
    found: dict[int, list[tuple[str, nn.Module]]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = module_name + "." if module_name else ""
        for param_name, param in module._parameters.items():
            if param is not None:
                found.setdefault(id(param), []).append((prefix + param_name, module))
    return found


def _warn_tied(model: nn.Module, tied_ids: set[int]) -> None:
    registrations = _registrations(model)
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
            batch 1 is enough). By default an input is built from the model. The pass runs in eval
            mode with gradients on (the autograd graph shows the heads); the model's training flags
            and ``requires_grad`` are put back, no ``.grad`` is written, BatchNorm statistics do not
            move (other effects of the model's own ``forward``, a counter it keeps, happen once);
            the result is cached per model and input shape.
        tied: where a tensor that is both an input embedding and the output layer (a tied language
            model) goes: ``"head"`` (top depth, matched by :func:`lrgroups.head`, as fastai's ULMFiT
            split trains it with the decoder) or ``"embedding"`` (its embedding depth, not a head: the
            BERT-style layer decay that puts embeddings lowest). ``None`` (default) means ``"head"``
            and warns (:class:`TiedWeightsWarning`) naming both of the tensor's roles.

    Raises:
        ValueError: ``tied`` is not one of the above, or the model fails on ``example_input``.

    Warns:
        DepthWarning: no input could be built or run; depths follow registration order.
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
    if callable(getattr(core, "group_matcher", None)):
        depths = {prefix + name: depth for name, depth in timm_depths(core, coarse).items()}
        head = find_head(core)
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        return {
            name: DepthInfo(depths[name], id(p) in head_ids, "timm group_matcher" + ("; head" if id(p) in head_ids else ""))
            for name, p in named
        }
    units = list(_units(core, prefix, coarse))
    trace, why = _trace(model, example_input)
    if trace is None:
        warnings.warn(
            f"{type(model).__name__}: depths follow registration order because {why}; pass "
            "example_input=... (a tensor, a tuple of arguments or a dict of keyword arguments) to order "
            "layers by data flow",
            DepthWarning,
            stacklevel=3,
        )
        head = find_head(model)
        heads = {id(p) for p in head.parameters()} if head is not None else set()
        source = "registration order"
    else:
        heads = _module_heads(model, prefix, units, trace)
        source = "forward order"
    tied_ids = heads & _input_embeddings(core)
    if tied_ids and tied is None:
        _warn_tied(model, tied_ids)
    if tied == "embedding":
        heads -= tied_ids
    depth_of = _number_units(units, None if trace is None else {k: float(v) for k, v in trace.first_call.items()})
    top = max((d for tensor_id, d in depth_of.items() if tensor_id not in heads), default=-1) + 1
    depth_of = {tensor_id: top if tensor_id in heads else d for tensor_id, d in depth_of.items()}
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
