"""Following one forward pass of a model: when each module and parameter is first used, and which
modules and tensors reach the model's output directly (its heads).

:mod:`lrgroups.depth` orders layers by this trace (``"forward order"``). The pass runs in eval mode
with gradients on, through the autograd graph and a ``TorchFunctionMode`` (which sees functional
uses of a parameter outside its module); the model's training flags and ``requires_grad`` are put
back, and its temporary forward hooks are removed, also when the forward raises. Traces are cached
per model (weakly) and input shape.

Example:
    >>> import torch, torch.nn as nn
    >>> from lrgroups.tracing import trace_model
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> trace, why = trace_model(model, torch.randn(1, 4))
    >>> sorted(trace.first_call[id(m)] for m in (model[0], model[2])), id(model[2]) in trace.head_modules
    ([1, 4], True)
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn

__all__ = ["Trace", "trace_model"]

_CONV_SIZES = (32, 64, 224)
_MAX_CANDIDATES = 12  # input shapes tried before falling back to registration order


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


@dataclass(frozen=True)
class Trace:
    """What one forward pass showed, by object id (valid while the model's structure is unchanged).

    Attributes:
        first_call: module id -> its first call; parameter id -> its first use (one clock).
        head_modules: ids of the modules whose output reaches the model output directly.
        head_params: ids of the parameters used directly at the output (a functional tied layer).
        feeds: head module id -> the ids of the modules whose output flows into it.
    """

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


def _run_trace(model: nn.Module, args: tuple, kwargs: dict) -> Trace:
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
    return Trace(first_call, frozenset(head_modules), frozenset(head_params), feeds)


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


def trace_model(model: nn.Module, example_input: Any) -> tuple[Trace | None, str]:
    """The cached trace of ``model`` on ``example_input`` (or on an input built from the model: its
    ``example_input_array``, ``dummy_inputs``, timm's ``pretrained_cfg``, or shapes its first layers
    read), and why there is none when it is ``None``.

    Args:
        model: the bare model (no DDP or compile wrapper).
        example_input: a tensor, a tuple of positional arguments or a dict of keyword arguments;
            ``None``: build one.

    Returns:
        ``(trace, "")``, or ``(None, why)`` when no built input ran (or the model has lazy parameters).

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
