"""BatchNorm running statistics: keep them frozen while a model trains, or re-estimate them on data.

BatchNorm layers carry two things a fine-tuning run can change: affine weights (parameters, trained by
the optimizer) and running statistics (buffers, updated by every forward pass in train mode). The
statistics decide much of a transferred model's accuracy, so they are a factor of their own:

* :func:`freeze_norm_stats` keeps BatchNorm layers in eval mode (statistics frozen) whatever
  ``model.train()`` says and whatever is trainable; their affine weights still train.
* :func:`precise_bn` re-estimates the statistics on given data as a cumulative average over batches
  ("precise BN": Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021; fvcore's ``update_bn_stats``;
  the same estimator as ``torch.optim.swa_utils.update_bn``), weights untouched.

Example:
    >>> import torch, torch.nn as nn, lrgroups
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    >>> with lrgroups.freeze_norm_stats(model):
    ...     _ = model.train()(torch.randn(2, 3, 8, 8))
    >>> model[1].running_mean.abs().sum().item(), int(model[1].num_batches_tracked)
    (0.0, 0)
    >>> lrgroups.precise_bn(model, [torch.randn(2, 3, 8, 8) for _ in range(3)])
    3
    >>> int(model[1].num_batches_tracked), model.training
    (3, True)
"""

from __future__ import annotations

import contextlib
import fnmatch
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._util import first_names, kept_training_modes, remove_all
from .depth import is_container, unwrap_model

if TYPE_CHECKING:
    from .groups import Slot

__all__ = ["batch_norms", "freeze_norm_stats", "FrozenNormStats", "precise_bn", "norm_units"]

ModuleSelector = Union[str, Callable[[str, nn.Module], bool], None]


def batch_norms(model: nn.Module, selector: ModuleSelector = None) -> dict[str, _BatchNorm]:
    """The BatchNorm layers of ``model`` (every ``_BatchNorm`` subclass: ``BatchNorm1d/2d/3d``,
    ``SyncBatchNorm``, timm's ``BatchNormAct2d``, ...) by module name (the bare model's names: DDP and
    ``torch.compile`` wrappers are looked through), in registration order.

    Args:
        model: any ``nn.Module``.
        selector: ``None`` (all of them), a shell glob over module names (``"layer1.*"``), or a
            predicate ``(name, module) -> bool``.

    Example:
        >>> import torch.nn as nn
        >>> list(batch_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LayerNorm(4))))
        ['1']
    """
    if selector is not None and not isinstance(selector, str) and not callable(selector):
        raise TypeError(f"selector must be a glob string or a callable (name, module) -> bool, got {selector!r}")
    found = {}
    for name, module in unwrap_model(model).named_modules():
        if not isinstance(module, _BatchNorm):
            continue
        if isinstance(selector, str) and not fnmatch.fnmatchcase(name, selector):
            continue
        if callable(selector) and not selector(name, module):
            continue
        found[name] = module
    return found


def _selected(model: nn.Module, selector: ModuleSelector, what: str) -> dict[str, _BatchNorm]:
    found = batch_norms(model, selector)
    if not found:
        every = list(batch_norms(model))
        detail = f"its BatchNorm layers are {first_names(every, 8)}" if every else "it has no BatchNorm layer"
        raise ValueError(
            f"{what}: no BatchNorm layer of {type(unwrap_model(model)).__name__} matches "
            f"selector {selector!r} ({detail})"
        )
    return found


class FrozenNormStats:
    """The handle :func:`freeze_norm_stats` returns: the frozen layers, ``remove()``, and a context
    manager that removes on exit.

    The one mechanism in lrgroups that keeps norm layers in eval mode while the model trains
    (:func:`precise_bn` does the opposite for one call: it forces its layers into train mode with hooks
    of its own, for the re-estimation only): the :class:`~lrgroups.LayerwiseOptimizer` holds one for
    the norm layers it manages, with ``active`` (``module -> bool``, checked at every
    forward) saying whether a layer counts as frozen now. Among the handles with an ``active``
    predicate on one layer only the newest not removed decides (found among torch's global forward
    pre-hooks, in registration order): removing it hands the decision back to the one before.
    Handles without a predicate (``freeze_norm_stats``) always freeze their layers.

    Nothing is put on the layers: each handle owns a pair of forward hooks common to all modules
    (``torch.nn.modules.module.register_module_forward_pre_hook`` and
    ``register_module_forward_hook(always_call=True)``) that switch one of its layers' ``training``
    flag off for the call and put it back after; other modules pass through (one set lookup). So
    ``torch.jit.script`` (which compiles a module's own hooks) and ``torch.save(model)`` (which pickles
    them) see the user's model only: a scripted, saved or deep-copied model runs its norms as torch
    does, and loads where lrgroups is not installed. ``torch.compile(model)`` warns that global hooks
    also run for its wrapper (these ignore it); ``model.compile()`` does not.

    The layers are held weakly. A handle whose layers are all garbage-collected, or whose optimizer is,
    stops acting at once and its hooks are taken out of torch's hook dictionaries at the next
    ``remove()`` or the next handle built (never during a garbage collection: ``torch.compile`` fails
    when those dictionaries change while it traces).

    Args:
        modules: the layers by name (BatchNorm or InstanceNorm layers: ``_NormBase`` subclasses).
        active: ``module -> bool``, whether a layer counts as frozen at this forward; ``None``: always.
    """

    def __init__(
        self, modules: Mapping[str, nn.modules.batchnorm._NormBase], active: Callable[[nn.Module], bool] | None = None
    ) -> None:
        _unhook_retired()
        self._active = active
        self._retired = False
        self._switched: set[int] = set()
        # id -> weak reference; an id leaves the set when its layer dies, so a new object reusing it is not frozen
        self._ids = {id(module) for module in modules.values()}
        self._refs = {name: weakref.ref(module, self._forget) for name, module in modules.items()}
        self._handles = [
            nn.modules.module.register_module_forward_pre_hook(self._before),
            nn.modules.module.register_module_forward_hook(self._after, always_call=True),
        ]

    @property
    def modules(self) -> dict[str, nn.Module]:
        """The frozen layers by name (those still alive; none once removed)."""
        if self._retired:
            return {}
        return {name: module for name, ref in self._refs.items() if (module := ref()) is not None}

    def _forget(self, ref: weakref.ref) -> None:  # a layer died (a garbage collection may be running)
        self._ids = {i for i in self._ids if any(r is not ref and id(r()) == i for r in self._refs.values())}
        if not self._ids:
            self.retire()

    def retire(self) -> None:
        """Stop acting at once, without touching torch's hook dictionaries (safe during a garbage
        collection); the hooks are taken out at the next ``remove()`` or handle built."""
        self._retired = True
        self._ids = set()
        self._active = None

    def _decides(self, module: nn.Module) -> bool:
        if self._active is None:
            return True
        newest = None
        for hook in nn.modules.module._global_forward_pre_hooks.values():  # registration order: last is newest
            owner = getattr(hook, "__self__", None)
            if isinstance(owner, FrozenNormStats) and owner._active is not None and id(module) in owner._ids:
                newest = owner
        return newest is self and self._active(module)

    def _before(self, module: nn.Module, args: tuple) -> None:
        # momentum None: an explicit re-estimation (swa_utils.update_bn, Lightning's SWA, precise_bn) wins
        if id(module) in self._ids and module.training and module.momentum is not None and self._decides(module):
            module.training = False
            self._switched.add(id(module))

    def _after(self, module: nn.Module, args: tuple, output: Any) -> None:
        if id(module) in self._switched:
            module.training = True
            self._switched.discard(id(module))

    def remove(self) -> None:
        """Remove the hooks: the layers follow ``model.train()`` / ``model.eval()`` again (or the
        previous handle with an ``active`` predicate decides). Idempotent."""
        self.retire()
        _unhook_retired()

    def __enter__(self) -> FrozenNormStats:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self._retired else "active"
        return f"FrozenNormStats({len(self._refs)} norm layers, {state})"


def _unhook_retired() -> None:
    """Take the hooks of every retired handle out of torch's global hook dictionaries."""
    retired = {
        id(owner): owner
        for hook in list(nn.modules.module._global_forward_pre_hooks.values())
        if isinstance(owner := getattr(hook, "__self__", None), FrozenNormStats) and owner._retired
    }
    for owner in retired.values():
        for handle in owner._handles:
            handle.remove()
        owner._handles.clear()


def norm_units(model: nn.Module, params: Sequence[torch.Tensor]) -> list[tuple[nn.Module, list[int]]]:
    """The norm layers with running statistics (BatchNorm and InstanceNorm: ``_NormBase``) whose
    frozen state ``params`` decide, each with the indices (into ``params``) of the parameters that
    decide it: its own parameters; for a norm without parameters, those of its block (the nearest
    enclosing module other than the model and the plain containers that has parameters), else those
    of the layer registered just before it. A norm decided by a parameter not in ``params`` is left
    out.

    Args:
        model: the bare model (no DDP or compile wrapper).
        params: the parameters an optimizer manages, in its order.

    Returns:
        ``[(norm layer, sorted parameter indices)]`` in module order.

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, affine=False), nn.Linear(3, 1))
        >>> [(type(m).__name__, idx) for m, idx in norm_units(model, list(model.parameters()))]
        [('BatchNorm1d', [0, 1])]
    """
    index = {id(param): i for i, param in enumerate(params)}
    modules = dict(model.named_modules())
    units = []
    for name, module in modules.items():
        if not isinstance(module, nn.modules.batchnorm._NormBase):
            continue
        own = list(module.parameters())
        if not own:
            own = _block_params(model, modules, name)
        if own and all(id(p) in index for p in own):
            units.append((module, sorted({index[id(p)] for p in own})))
    return units


def _block_params(model: nn.Module, modules: dict[str, nn.Module], name: str) -> list[torch.Tensor]:
    parts = name.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        ancestor = modules[".".join(parts[:depth])]
        if not is_container(ancestor):
            params = list(ancestor.parameters())
            if params:
                return params
    parent = modules[".".join(parts[:-1])] if len(parts) > 1 else model
    before = []
    for child_name, child in parent.named_children():
        if child_name == parts[-1]:
            break
        if next(child.parameters(), None) is not None:
            before = list(child.parameters())
    return before


class OwnedNormFreeze:
    """The ``active`` predicate of the :class:`FrozenNormStats` handle an optimizer holds for the norm
    layers it manages: a layer counts as frozen when every slot that decides it is frozen and (unless
    ``also_frozen_before_build``) not all by ``before_build`` (peft's or the user's frozen norms keep
    the mode the model gives them). It answers ``False`` for any other module.

    Args:
        units: ``[(norm layer, slots)]``: each layer with the :class:`~lrgroups.groups.Slot` s of the
            parameters that decide it (see :func:`norm_units`).
        also_frozen_before_build: also freeze a layer frozen before the optimizer was built.
        before_build: the owner recorded for what was frozen before the optimizer was built.
    """

    def __init__(
        self, units: Sequence[tuple[nn.Module, Sequence[Slot]]], also_frozen_before_build: bool, before_build: str
    ) -> None:
        self.slots = {id(module): list(slots) for module, slots in units}
        self.also_frozen_before_build = also_frozen_before_build
        self.before_build = before_build

    def __call__(self, module: nn.Module) -> bool:
        slots = self.slots.get(id(module))
        if slots is None:
            return False
        owners = [slot.frozen_by for slot in slots]
        if None in owners:
            return False
        return self.also_frozen_before_build or any(owner != self.before_build for owner in owners)


def retire_all(handles: list[FrozenNormStats]) -> None:
    """Retire every handle in ``handles`` (see :meth:`FrozenNormStats.retire`): what an optimizer's
    finalizer does at garbage collection, when torch's hook dictionaries must not change.

    Args:
        handles: the handles (the optimizer's list, left as it is).
    """
    for handle in handles:
        handle.retire()


def freeze_norm_stats(model: nn.Module, selector: ModuleSelector = None) -> FrozenNormStats:
    """Keep BatchNorm layers in eval mode (running statistics frozen, normalising with them) whatever
    ``model.train()`` says and whatever is trainable; their affine weights still train if trainable.

    Each selected layer runs every forward pass as in eval mode (its ``training`` flag is switched off
    for the call and put back after, so ``model.training`` and ``module.training`` still read what
    ``model.train()`` set), except while its ``momentum`` is None: that is how an explicit
    re-estimation (``torch.optim.swa_utils.update_bn``, Lightning's ``StochasticWeightAveraging``)
    asks for the cumulative average, and it wins, as :func:`precise_bn` does. Otherwise running
    statistics, ``num_batches_tracked`` included, are not updated;
    gradients still flow to the affine weight and bias. This is the BN protocol of the usual
    fine-tuning practice (detectron2's ``FrozenBatchNorm`` without freezing the affine weights;
    Kumar et al. 2022 fine-tune with BatchNorm in eval mode).

    Args:
        model: any ``nn.Module`` (DDP and ``torch.compile`` wrappers are looked through).
        selector: which BatchNorm layers: ``None`` (all), a glob over module names (``"layer[12].*"``)
            or a predicate ``(name, module) -> bool``.

    Returns:
        A :class:`FrozenNormStats` handle: ``handle.remove()`` restores normal behaviour; ``with
        freeze_norm_stats(model): ...`` removes it on exit.

    Raises:
        ValueError: no BatchNorm layer matches (or the model has none).
        TypeError: ``selector`` is neither a string nor a callable.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> handle = freeze_norm_stats(model)
        >>> model.train()(torch.randn(5, 3)).sum().backward()
        >>> model[1].running_var.tolist(), model[1].weight.grad is not None, model[1].training
        ([1.0, 1.0, 1.0, 1.0], True, True)
        >>> handle.remove()
    """
    return FrozenNormStats(_selected(model, selector, "freeze_norm_stats"))


def _forward(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, (tuple, list)):
        model(batch[0])
    elif isinstance(batch, Mapping):
        model(**batch)
    else:
        model(batch)


@torch.no_grad()
def precise_bn(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    momentum: float | None = None,
    max_batches: int | None = None,
    selector: ModuleSelector = None,
) -> int:
    """Re-estimate BatchNorm running statistics on ``batches``; weights untouched, modes restored.

    With ``momentum=None`` (precise BN: Wu & Johnson 2021, fvcore's ``update_bn_stats``) each selected
    layer's ``running_mean`` / ``running_var`` become the plain average over batches of the batch mean
    and the batch's unbiased variance, and ``num_batches_tracked`` the number of batches: exactly what
    ``torch.optim.swa_utils.update_bn`` computes. Batches are weighted equally (a short last batch
    counts as much as a full one). With a float ``momentum`` the statistics are not reset: each batch
    updates them as training would, ``stat = (1 - momentum) * stat + momentum * batch_stat``.

    The whole model runs in train mode under ``torch.no_grad()`` (dropout included, as in fvcore), and
    every selected layer normalises with batch statistics even where :func:`freeze_norm_stats` or
    :class:`~lrgroups.LayerwiseOptimizer`'s frozen-norm handling keeps it in eval mode. Afterwards every
    module's ``training`` flag and every layer's ``momentum`` are what they were. Layers without
    running statistics (``track_running_stats=False``) are skipped.

    Args:
        model: any ``nn.Module`` with BatchNorm layers.
        batches: an iterable of inputs: a tensor is passed as ``model(x)``, a tuple or list as
            ``model(batch[0])`` (``(x, y)`` pairs from a DataLoader), a mapping as ``model(**batch)``.
            Inputs must already be on the model's device.
        momentum: ``None`` for the cumulative average, or a float in ``(0, 1]``.
        max_batches: use at most this many batches (``None``: all).
        selector: which BatchNorm layers (as in :func:`freeze_norm_stats`); the others run in eval
            mode and keep their statistics.

    Returns:
        The number of batches used.

    Raises:
        ValueError: no selected BatchNorm layer tracks running statistics; ``batches`` is empty;
            ``momentum`` outside ``(0, 1]``; ``max_batches < 1``. On any error (the model's own
            included) the statistics are left as they were.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
        >>> data = [torch.randn(8, 3) + 2 for _ in range(4)]
        >>> precise_bn(model, data, max_batches=2), model.training
        (2, False)
        >>> means = torch.stack([model[0](x).mean(0) for x in data[:2]]).mean(0)
        >>> torch.allclose(model[1].running_mean, means)
        True
    """
    if momentum is not None and not 0 < momentum <= 1:
        raise ValueError(f"momentum must be None or in (0, 1], got {momentum!r}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches!r}")
    layers = [m for m in _selected(model, selector, "precise_bn").values() if m.track_running_stats]
    if not layers:
        raise ValueError("precise_bn: no selected BatchNorm layer tracks running statistics")
    saved = [
        (layer, {k: v.clone() for k, v in layer.named_buffers(recurse=False) if v is not None}) for layer in layers
    ]
    count = 0
    try:
        with kept_training_modes(model), _estimating(layers, momentum):
            model.train()
            for module in batch_norms(model).values():
                if all(module is not layer for layer in layers):
                    module.training = False
            count = _forward_all(model, batches, max_batches)
    finally:
        if count == 0:  # an error or no batch: the statistics are what they were
            for layer, buffers in saved:
                for key, value in buffers.items():
                    getattr(layer, key).copy_(value)
    if count == 0:
        raise ValueError("precise_bn: batches is empty")
    return count


@contextlib.contextmanager
def _estimating(layers: Sequence[nn.modules.batchnorm._NormBase], momentum: float | None) -> Iterator[None]:
    """Inside the block ``layers`` run in train mode at every call (hooks of their own, also where a
    :class:`FrozenNormStats` keeps them in eval mode) with ``momentum`` (``None``: their statistics
    reset, a cumulative average); after it the hooks are removed and the momenta put back."""
    momenta = [(layer, layer.momentum) for layer in layers]
    hooks = []
    forced: dict[int, bool] = {}

    # force_train runs after the layer's other pre-hooks (and after a freeze's global one); put_back before
    # its other hooks (after a freeze's global one): the caller puts every mode back after the block
    def force_train(module: nn.Module, args: tuple) -> None:
        forced[id(module)] = module.training
        module.training = True

    def put_back(module: nn.Module, args: tuple, output: Any) -> None:
        module.training = forced.pop(id(module))

    try:
        for layer in layers:
            hooks.append(layer.register_forward_pre_hook(force_train))
            hooks.append(layer.register_forward_hook(put_back, prepend=True, always_call=True))
            if momentum is None:
                layer.reset_running_stats()
            layer.momentum = momentum
        yield
    finally:
        remove_all(hooks)
        for layer, value in momenta:
            layer.momentum = value


def _forward_all(model: nn.Module, batches: Iterable[Any], max_batches: int | None) -> int:
    """Run ``model`` on each batch (at most ``max_batches``); the number run."""
    count = 0
    for batch in batches:
        if max_batches is not None and count >= max_batches:
            break
        _forward(model, batch)
        count += 1
    return count
