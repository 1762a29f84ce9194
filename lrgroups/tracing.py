"""Following a model's forward passes: when each module and parameter is first used, and which
modules and tensors reach the model's output directly (its heads).

:mod:`lrgroups.depth` orders layers by this trace (``"forward order"``). The model runs twice, in
eval mode and in train mode (what it runs only in training, such as Inception v3's auxiliary
classifier, counts too: pytorch/vision#302), with gradients on, through the autograd graph and a
``TorchFunctionMode`` (which sees functional uses of a parameter outside its module). Heads are
found in any output structure: tensors, tuples and named tuples (``InceptionOutputs``), lists,
dicts, Hugging Face ``ModelOutput`` s and other dataclasses, nested. Nothing about the model
changes: its training flags, ``requires_grad`` and buffers (BatchNorm statistics and their
counters) are put back, the random number generators (CPU and the model's CUDA devices) are
restored, and its temporary forward hooks are removed, also when the forward raises. Traces are
cached per model (weakly) and input shape.

Example:
    >>> import torch, torch.nn as nn
    >>> from lrgroups.tracing import trace_model
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> trace, why = trace_model(model, torch.randn(1, 4))
    >>> sorted(trace.first_call[id(m)] for m in (model[0], model[2])), id(model[2]) in trace.head_modules
    ([1.0, 4.0], True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn

from ._util import has_params, kept_training_modes, remove_all

__all__ = ["Trace", "trace_model"]

_CONV_SIZES = (32, 64, 224, 299)  # 299: Inception v3's auxiliary classifier needs it in train mode
_MAX_CANDIDATES = 12  # input shapes tried before falling back to registration order


@dataclass(frozen=True)
class Trace:
    """What the forward passes showed, by object id (valid while the model's structure is unchanged).

    Attributes:
        first_call: module id -> its first call; parameter id -> its first use (one clock: the
            train-mode pass's, with what ran only in eval mode placed after what ran before it there).
        head_modules: ids of the modules whose output reaches the model output directly (in either mode).
        head_params: ids of the parameters used directly at the output (a functional tied layer).
        feeds: head module id -> the ids of the modules whose output flows into it (in either mode).
        train_error: why no train-mode pass ran (``""`` when one did); then the trace is the eval pass's.
    """

    first_call: dict[int, float]
    head_modules: frozenset[int]
    head_params: frozenset[int]
    feeds: dict[int, frozenset[int]]
    train_error: str = ""


_TRACES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _grad_fns(value: Any) -> list:
    """The autograd nodes of every tensor in ``value``: a tensor, or tuples (named ones too), lists,
    sets, mappings (Hugging Face ``ModelOutput`` s) and dataclass instances of them, nested."""
    if isinstance(value, torch.Tensor):
        return [value.grad_fn] if value.grad_fn is not None else []
    if isinstance(value, Mapping):
        value = list(value.values())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, f.name, None) for f in dataclasses.fields(value)]
    if isinstance(value, (list, tuple, set, frozenset)):
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


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Put back the model's buffers (BatchNorm statistics and counters: the objects and their values)
    and the random number generators (CPU, and the CUDA devices the model is on) after the block."""
    buffers = [
        (module, name, buffer, buffer.detach().clone())
        for module in model.modules()
        for name, buffer in module.named_buffers(recurse=False)
    ]
    tensors = [*model.parameters(), *(buffer for _, _, buffer, _ in buffers)]
    devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for module, name, buffer, saved in buffers:
                    if getattr(module, name, None) is not buffer:
                        setattr(module, name, buffer)
                    buffer.copy_(saved)


def _run_trace(model: nn.Module, args: tuple, kwargs: dict, training: bool = False) -> Trace:
    with _untouched(model):
        return _run_pass(model, args, kwargs, training)


def _run_pass(model: nn.Module, args: tuple, kwargs: dict, training: bool) -> Trace:
    recorder = _Recorder(model)
    output = recorder.run(args, kwargs, training)
    head_modules, head_params, hits = _heads(output, recorder.produced)
    feeds = {}
    for module_id, nodes in hits.items():
        reach = _reach(nodes) - set(nodes)
        feeds[module_id] = frozenset(m for node in reach if node in recorder.produced for m in recorder.produced[node])
    first_call = {k: float(v) for k, v in recorder.first_call.items()}
    return Trace(first_call, frozenset(head_modules), frozenset(head_params), feeds)


class _Recorder:
    """One forward pass of ``model`` with hooks that record when each module (with parameters) and
    each parameter is first used, and which autograd nodes are a module's output."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.clock = itertools.count()
        self.first_call: dict[int, int] = {}  # module or parameter -> first call / first use
        self.produced: dict[Any, set[int]] = {}  # grad_fn -> modules whose output it is
        self.params = list(model.parameters())

    def before(self, module: nn.Module, _args: tuple) -> None:
        if id(module) not in self.first_call:
            self.first_call[id(module)] = next(self.clock)

    def after(self, module: nn.Module, _args: tuple, output: Any) -> None:
        for fn in _grad_fns(output):
            self.produced.setdefault(fn, set()).add(id(module))

    def first_use(self) -> torch.overrides.TorchFunctionMode:
        """A mode that records when each parameter is first used (also by functional code, outside its module)."""
        first_call, clock, param_ids = self.first_call, self.clock, {id(p) for p in self.params}

        class FirstUse(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                for value in (*args, *(kwargs or {}).values()):
                    if isinstance(value, torch.Tensor) and id(value) in param_ids and id(value) not in first_call:
                        first_call[id(value)] = next(clock)
                return func(*args, **(kwargs or {}))

        return FirstUse()

    def run(self, args: tuple, kwargs: dict, training: bool) -> Any:
        """The model's output, in mode ``training`` with every parameter requiring grad; the hooks,
        ``requires_grad`` flags and training modes are put back after (also when it raises)."""
        model, params = self.model, self.params
        modules = [m for m in model.modules() if has_params(m)]
        requires_grad = [p.requires_grad for p in params]
        handles = [m.register_forward_pre_hook(self.before) for m in modules]
        # The model's own output (also that of the wrapped model inside a wrapper: a module holding every
        # parameter) is where the search for heads starts, not a layer's output.
        handles += [m.register_forward_hook(self.after) for m in modules if len(list(m.parameters())) < len(params)]
        try:
            with kept_training_modes(model):
                model.train(training)
                for p in params:
                    p.requires_grad_(True)
                # eager, also for a model compiled in place (``model.compile()``): Dynamo would trace the hooks
                # and this mode (pytorch#117758, #105653) instead of the model
                with torch.compiler.set_stance("force_eager"), torch.enable_grad(), self.first_use():
                    return model(*args, **kwargs)
        finally:
            remove_all(handles)
            for p, flag in zip(params, requires_grad, strict=True):
                p.requires_grad_(flag)


def _heads(output: Any, produced: dict) -> tuple[set[int], set[int], dict[int, list]]:
    """(the modules whose output reaches ``output`` directly, the parameters used directly there, the
    autograd nodes by which each such module is reached), searching back from ``output``."""
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
    return head_modules, head_params, hits


def _merge(evaluated: Trace, trained: Trace) -> Trace:
    """One trace of both passes: the train-mode clock, what ran only in eval mode placed (in its
    eval order) just after the last thing before it that ran in both; heads and feeds of either."""
    first_call = dict(trained.first_call)
    anchor, offset = -1.0, 0
    eval_order = sorted(evaluated.first_call.items(), key=lambda item: item[1])
    for key, _ in eval_order:
        if key in trained.first_call:
            anchor, offset = trained.first_call[key], 0
        else:
            offset += 1
            first_call[key] = anchor + offset / (len(eval_order) + 1)
    feeds = {
        key: evaluated.feeds.get(key, frozenset()) | trained.feeds.get(key, frozenset())
        for key in evaluated.feeds.keys() | trained.feeds.keys()
    }
    return Trace(
        first_call,
        evaluated.head_modules | trained.head_modules,
        evaluated.head_params | trained.head_params,
        feeds,
    )


def _doubled(value: Any) -> Any:
    """``value`` with every tensor whose first dimension is 1 repeated to 2 (a batch of one cannot
    run BatchNorm in train mode)."""
    if isinstance(value, torch.Tensor):
        return torch.cat([value, value]) if value.ndim >= 1 and value.shape[0] == 1 else value
    if isinstance(value, dict):
        return {key: _doubled(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_doubled(item) for item in value)
    return value


def _with_train_pass(model: nn.Module, evaluated: Trace, calls: list[tuple[tuple, dict]]) -> Trace:
    """``evaluated`` merged with the first train-mode pass that runs among ``calls`` (each also with
    a batch of two), or with ``train_error`` saying why none ran."""
    error: Exception | None = None
    for args, kwargs in calls:
        tries = [(args, kwargs)]
        bigger = (_doubled(args), _doubled(kwargs))
        if any(a is not b for a, b in zip(_flat(bigger), _flat((args, kwargs)), strict=True)):
            tries.append(bigger)
        for call_args, call_kwargs in tries:
            try:
                return _merge(evaluated, _run_trace(model, call_args, call_kwargs, training=True))
            except Exception as failure:  # a model that cannot run this input in train mode
                error = failure
    why = f"{type(error).__name__}: {error}" if error is not None else "no input"
    return dataclasses.replace(evaluated, train_error=why)


def _flat(value: Any) -> list:
    if isinstance(value, dict):
        return [item for v in value.values() for item in _flat(v)]
    if isinstance(value, (tuple, list)):
        return [item for v in value for item in _flat(v)]
    return [value]


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

    The model runs in eval mode, then in train mode (on the same input, or the same with a batch of
    two, or for a built input on a later built one that runs in train mode: Inception v3's
    auxiliary classifier needs 299 pixels); the trace merges both (see :class:`Trace`). When no
    train-mode pass runs, the trace is the eval pass's and ``Trace.train_error`` says why.

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
            evaluated = _run_trace(model, args, kwargs)
        except Exception as error:
            raise ValueError(
                f"{type(model).__name__} failed on example_input (needed to order its layers by data "
                f"flow): {type(error).__name__}: {error}"
            ) from error
        result = (_with_train_pass(model, evaluated, [(args, kwargs)]), "")
    elif any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        result = (None, "it has uninitialized (lazy) parameters")
    else:
        result = (None, "no input built from its layers' shapes ran")
        candidates = list(_candidate_inputs(model))
        for index, (args, kwargs) in enumerate(candidates):
            try:
                evaluated = _run_trace(model, args, kwargs)
            except Exception as error:
                result = (None, f"no input built from its layers' shapes ran (last: {type(error).__name__}: {error})")
                continue
            result = (_with_train_pass(model, evaluated, candidates[index:]), "")
            break
    per_model.clear()  # one structure, one input kept per model
    per_model[key] = result
    return result
