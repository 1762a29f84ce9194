"""The inner optimizers of a :class:`~lrgroups.LayerwiseOptimizer`: how the ``optimizer_cls`` argument is
read (a class, a factory, or several by name), their defaults, and building one from its groups.

A spec is a ``torch.optim.Optimizer`` subclass or a callable ``(param_groups, **kwargs) ->
Optimizer``; several inner optimizers are given as a dict ``{name: spec}`` or ``{name: (spec,
{kwargs})}``. What the wrapper is not given (``lr``, ``weight_decay``) is read from the inner
optimizer's own signature, so its defaults stay its own.

Example:
    >>> import torch
    >>> from lrgroups.inner import base_value, specs
    >>> specs({"adamw": torch.optim.AdamW, "sgd": (torch.optim.SGD, {"momentum": 0.9})}, {})["sgd"]
    (<class 'torch.optim.sgd.SGD'>, {'momentum': 0.9})
    >>> base_value("weight_decay", None, torch.optim.AdamW, {}, required=False)
    0.01
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

import torch
from torch.optim.optimizer import required as _REQUIRED

__all__ = [
    "DERIVED_STATE",
    "ForwardedToInner",
    "Inner",
    "OptimizerFactory",
    "OptimizerSpec",
    "accepts",
    "base_value",
    "build_inner",
    "build_inners",
    "check_differentiable",
    "check_factory",
    "check_weight_decay",
    "computes_own_lr",
    "factory_name",
    "group_dict",
    "signature_default",
    "specs",
    "state_carriers",
    "unprofiled_step",
]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
OptimizerSpec = Union[OptimizerFactory, tuple]

#: Optimizers whose state is derived from the whole parameter set (L-BFGS keeps flat history
#: vectors over all its parameters): their membership cannot change once they hold state, and
#: their state does not follow the shapes of the parameters.
DERIVED_STATE: tuple[type, ...] = (torch.optim.LBFGS,)
# The code of torch's step-profiling wrapper (``Optimizer.profile_hook_step``): an inner optimizer's
# step is called unwrapped, so hooks and profiling run once, on the wrapper, in torch's order.
_PROFILED_STEP = torch.optim.Optimizer.profile_hook_step(lambda self: None).__code__


@dataclass(eq=False)
class Inner:
    """One inner optimizer and the param groups (a contiguous range ``start:stop`` of the wrapper's
    ``param_groups``) it steps.

    Attributes:
        name: its name in the dict of optimizers; ``None`` for a single one.
        optimizer: the built optimizer.
        factory: the class or callable it was built with.
        kwargs: the keyword arguments it was built with (the wrapper's own ``lr`` and
            ``weight_decay`` not included).
        start: the index of its first group in the wrapper's ``param_groups``.
        stop: one past the index of its last group.
        eager_state: its constructor creates state (Adagrad): a hot-added parameter needs it too.
        carriers: the optimizers nested in it that step its groups and keep the state (timm's
            ``Lookahead`` keeps its moments in its base optimizer; see :func:`state_carriers`).
    """

    name: str | None
    optimizer: torch.optim.Optimizer
    factory: OptimizerFactory
    kwargs: dict
    start: int
    stop: int
    eager_state: bool
    carriers: tuple = ()


def signature_default(factory: OptimizerFactory, name: str) -> Any:
    """The default of keyword ``name`` in ``factory``'s signature; ``inspect.Parameter.empty`` when it
    has none, does not take it, has no readable signature, or its default is torch's ``required``
    marker (``torch.optim.optimizer.required``: ``SGDP(params, lr=required)`` in timm, older torch
    SGD), which says "no default".

    Args:
        factory: an optimizer class or callable.
        name: a keyword argument (``"lr"``, ``"weight_decay"``).

    Returns:
        The default value, or ``inspect.Parameter.empty``.
    """
    try:
        parameter = inspect.signature(factory).parameters.get(name)
    except (TypeError, ValueError):
        return inspect.Parameter.empty
    if parameter is None or parameter.default is _REQUIRED:
        return inspect.Parameter.empty
    return parameter.default


def accepts(factory: OptimizerFactory, name: str) -> bool:
    """Whether ``factory`` takes keyword ``name`` (also through ``**kwargs``; ``True`` when its
    signature cannot be read).

    Args:
        factory: an optimizer class or callable.
        name: a keyword argument.

    Returns:
        Whether the keyword is accepted.
    """
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def factory_name(factory: OptimizerFactory) -> str:
    """``factory.__name__`` (``"AdamW"``), else its ``repr``: the name messages use.

    Args:
        factory: an optimizer class or callable.

    Returns:
        The name.
    """
    return getattr(factory, "__name__", repr(factory))


def check_factory(factory: Any) -> OptimizerFactory:
    """``factory`` when it is an optimizer class or a callable.

    Args:
        factory: what the user gave as the optimizer.

    Returns:
        ``factory`` itself.

    Raises:
        TypeError: an optimizer instance (the wrapper builds the groups itself), or not callable.
    """
    if isinstance(factory, torch.optim.Optimizer):
        raise TypeError(
            f"pass the optimizer class or a factory, not an instance: LayerwiseOptimizer(model, "
            f"{type(factory).__name__}, lr=...) (it builds the param groups itself)"
        )
    if not callable(factory):
        raise TypeError(f"optimizer_cls must be a torch.optim.Optimizer subclass or a callable, got {factory!r}")
    return factory


def specs(optimizer_cls: Any, kwargs: dict) -> dict[str | None, tuple[OptimizerFactory, dict]]:
    """The inner optimizers to build, ``{name: (factory, kwargs)}``; name ``None`` for a single one.

    Args:
        optimizer_cls: a class or factory, or a dict of them by name (values optionally ``(factory,
            {kwargs})``).
        kwargs: the wrapper's extra keyword arguments (for a single optimizer only).

    Returns:
        The specs, in the order given.

    Raises:
        ValueError: an empty dict.
        TypeError: keyword arguments for all of several optimizers; a spec that is not a class or
            a callable (see :func:`check_factory`).
    """
    if isinstance(optimizer_cls, Mapping):
        if not optimizer_cls:
            raise ValueError("give at least one optimizer")
        if kwargs:
            raise TypeError(
                f"with several optimizers give each its own keyword arguments, as name: (class, {{...}}); "
                f"got {sorted(kwargs)} for all of them"
            )
        found = {}
        for name, spec in optimizer_cls.items():
            factory, own = spec if isinstance(spec, tuple) else (spec, {})
            found[str(name)] = (check_factory(factory), dict(own))
        return found
    return {None: (check_factory(optimizer_cls), dict(kwargs))}


def base_value(what: str, given: Any, factory: OptimizerFactory, kwargs: dict, required: bool) -> Any:
    """The starting value of ``what`` for one inner optimizer: its own keyword, else the wrapper's,
    else the optimizer's own default (read from its signature).

    Args:
        what: ``"lr"`` or ``"weight_decay"``.
        given: the wrapper's value (``None``: not given).
        factory: the inner optimizer's class or callable.
        kwargs: its own keyword arguments.
        required: raise when there is no value at all.

    Returns:
        The value, or ``None`` (not required and no default).

    Raises:
        ValueError: ``required`` and no value anywhere.
    """
    if what in kwargs:
        return kwargs[what]
    if given is not None:
        return given
    default = signature_default(factory, what)
    if default is inspect.Parameter.empty or default is None:
        if required:
            raise ValueError(f"{factory_name(factory)} has no default {what}: pass {what}=...")
        return None
    return default


def computes_own_lr(factory: OptimizerFactory, kwargs: dict, given: Any) -> bool:
    """Whether an inner optimizer runs without an lr: none is given (to it or to the wrapper) and its
    signature's default lr is ``None``, its switch to an lr it computes itself at every step
    (Adafactor's relative step, in timm's ``timm.optim.Adafactor`` and transformers'
    ``transformers.optimization.Adafactor``; Shazeer & Stern 2018, section 8).

    Args:
        factory: the inner optimizer's class or callable.
        kwargs: its own keyword arguments.
        given: the wrapper's ``lr`` (``None``: not given).

    Returns:
        Whether it computes its own lr.

    Example:
        >>> import timm.optim
        >>> computes_own_lr(timm.optim.Adafactor, {}, None), computes_own_lr(timm.optim.Adafactor, {}, 1e-3)
        (True, False)
    """
    if "lr" in kwargs:
        return kwargs["lr"] is None
    return given is None and signature_default(factory, "lr") is None


def build_inner(factory: OptimizerFactory, groups: list[dict], kwargs: dict, name: str | None,
                lr: Any, weight_decay: Any) -> torch.optim.Optimizer:
    """Build one inner optimizer over ``groups``.

    Args:
        factory: its class or callable.
        groups: its param group dicts.
        kwargs: its own keyword arguments.
        name: its name among several (``None``: the only one), for messages.
        lr: the wrapper's ``lr`` (passed unless ``kwargs`` has one; ``None``: not given).
        weight_decay: the wrapper's ``weight_decay`` (likewise).

    Returns:
        The optimizer.

    Raises:
        ValueError: the factory raised (its message included).
        TypeError: it returned something that is not a ``torch.optim.Optimizer``.
    """
    call = dict(kwargs)
    if lr is not None and "lr" not in call:
        call["lr"] = lr
    if weight_decay is not None and "weight_decay" not in call:
        call["weight_decay"] = weight_decay
    label = factory_name(factory) + ("" if name is None else f" ({name!r})")
    try:
        built = factory(groups, **call)
    except Exception as error:
        raise ValueError(f"could not build {label} from {len(groups)} param groups with {call}: {error}") from error
    if not isinstance(built, torch.optim.Optimizer):
        raise TypeError(f"{label} returned {type(built).__name__}, not a torch.optim.Optimizer")
    return built


def check_differentiable(wanted: Mapping[str | None, tuple[OptimizerFactory, dict]]) -> None:
    """Refuse what no inner optimizer of a wrapper can do (before anything is built).

    Args:
        wanted: the inner optimizers by name, as :func:`specs` gives them.

    Raises:
        ValueError: one is built with ``differentiable=True``.
    """
    for factory, kwargs in wanted.values():
        if kwargs.get("differentiable"):
            raise ValueError(
                f"{factory_name(factory)}(differentiable=True) is not supported: a differentiable step "
                "(autograd through the update, e.g. for meta-learning) needs non-leaf parameters, which a "
                "module's parameters are not; step a bare torch optimizer over lrgroups.param_groups(model, ...)")


def check_weight_decay(wanted: Mapping[str | None, tuple[OptimizerFactory, dict]], weight_decay: Any) -> None:
    """Refuse a wrapper's ``weight_decay`` for an inner optimizer without that option.

    Args:
        wanted: the inner optimizers by name, as :func:`specs` gives them.
        weight_decay: the wrapper's ``weight_decay`` (``None``: not given).

    Raises:
        ValueError: ``weight_decay`` was given and an inner optimizer has no such option.
    """
    for factory, kwargs in wanted.values():
        if weight_decay is not None and "weight_decay" not in kwargs and not accepts(factory, "weight_decay"):
            raise ValueError(f"{factory_name(factory)} has no weight_decay option but weight_decay={weight_decay} was given")


def group_dict(params: list, setting: tuple, base_lr: Any = None, base_wd: Any = None) -> dict[str, Any]:
    """One param group's dict from its settings: only what differs from the optimizer's defaults is
    written, so a tensor lr stays the tensor the user gave and untouched options stay the optimizer's.

    Args:
        params: the group's parameters.
        setting: ``(inner optimizer name, lr, weight decay, options)`` (:attr:`lrgroups.ParamPlan.settings`).
        base_lr: the lr the optimizer is built with (``None``: none; every lr not ``None`` is written).
        base_wd: the weight decay the optimizer is built with (``None``: none).

    Returns:
        ``{"params": params, "lr": ..., "weight_decay": ..., **options}``, keys left out where the
        optimizer's own value applies.

    Example:
        >>> group_dict([], (None, 0.1, 0.0, (("momentum", 0.9),)), base_lr=0.1)
        {'params': [], 'weight_decay': 0.0, 'momentum': 0.9}
    """
    _, lr, weight_decay, options = setting
    group: dict[str, Any] = {"params": params}
    if base_lr is None:  # no base lr: every lr is a rule's (or None: the optimizer computes its own)
        if lr is not None:
            group["lr"] = lr
    elif lr != float(base_lr):
        group["lr"] = torch.tensor(lr, dtype=base_lr.dtype, device=base_lr.device) if isinstance(base_lr, torch.Tensor) else lr
    if weight_decay is not None and weight_decay != base_wd:
        group["weight_decay"] = weight_decay
    group.update(options)
    return group


def build_inners(wanted: Mapping[str | None, tuple[OptimizerFactory, dict]], settings: list[tuple],
                 groups: list[dict], lr: Any, weight_decay: Any) -> list[Inner]:
    """Build every inner optimizer over its param groups, each checked against what the rules ask.

    Args:
        wanted: the inner optimizers by name, as :func:`specs` gives them, in order.
        settings: the distinct settings, one per group (:func:`lrgroups.groups.group_settings`:
            ordered by inner optimizer in ``wanted``'s order).
        groups: the group dicts (:func:`group_dict`), parallel to ``settings``.
        lr: the wrapper's ``lr`` (``None``: not given).
        weight_decay: the wrapper's ``weight_decay`` (``None``: not given).

    Returns:
        One :class:`Inner` per entry of ``wanted``, over consecutive ranges of ``groups``.

    Raises:
        ValueError: no parameter is routed to an inner optimizer; it cannot be built (its
            constructor's message), makes another number of groups, lacks an option the rules set,
            or has no weight decay where the rules set one.
        TypeError: a factory returned something that is not a ``torch.optim.Optimizer``.
    """
    inners: list[Inner] = []
    start = 0
    for name, (factory, kwargs) in wanted.items():
        own = [setting for setting in settings if setting[0] == name]
        if not own:
            raise ValueError(f"no parameter is routed to optimizer {name!r}")
        stop = start + len(own)
        built = build_inner(factory, groups[start:stop], kwargs, name, lr, weight_decay)
        _check_built(built, factory, own)
        inners.append(Inner(name, built, factory, kwargs, start, stop, False, state_carriers(built)))
        start = stop
    return inners


def _check_built(built: torch.optim.Optimizer, factory: OptimizerFactory, settings: list[tuple]) -> None:
    """Refuse an inner optimizer that would not do what its groups' ``settings`` ask."""
    if len(built.param_groups) != len(settings):
        raise ValueError(f"{factory_name(factory)} made {len(built.param_groups)} param groups of {len(settings)}")
    unknown = sorted({key for setting in settings for key, _ in setting[3]} - set(built.defaults))
    if unknown:
        raise ValueError(f"rule options {unknown} are not options of {type(built).__name__}, which would "
                         f"ignore them; its options: {', '.join(sorted(built.defaults))}")
    if any(setting[2] is not None for setting in settings) and "weight_decay" not in built.defaults:
        raise ValueError(f"{type(built).__name__} has no weight_decay option but the rules set weight decay")


def state_carriers(optimizer: torch.optim.Optimizer) -> tuple[torch.optim.Optimizer, ...]:
    """The optimizers nested in ``optimizer`` (its attributes, recursively) that step some of its
    param groups (the same group dicts) and so keep their own ``state``: the base optimizer of a
    wrapper such as timm's ``Lookahead`` (``_base_optimizer``). Their ``state`` and ``param_groups``
    are to be linked with the outer optimizer's, or their state is lost to ``state_dict`` and
    freezing.

    Args:
        optimizer: an inner optimizer, as built.

    Returns:
        The nested optimizers, outermost first (empty for a plain optimizer).

    Example:
        >>> import torch, timm.optim
        >>> base = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
        >>> state_carriers(timm.optim.Lookahead(base)) == (base,)
        True
    """
    groups = {id(group) for group in optimizer.param_groups}
    found, seen, todo = [], {id(optimizer)}, [optimizer]
    while todo:
        for value in vars(todo.pop(0)).values():
            if isinstance(value, torch.optim.Optimizer) and id(value) not in seen:
                seen.add(id(value))
                todo.append(value)
                if any(id(group) in groups for group in value.param_groups):
                    found.append(value)
    return tuple(found)


def unprofiled_step(optimizer: torch.optim.Optimizer) -> Callable:
    """``optimizer.step`` without torch's profiling wrapper (so the wrapper's hooks and profiling run
    once, on the wrapper).

    Args:
        optimizer: an inner optimizer.

    Returns:
        A callable ``(closure=None) -> loss``.
    """
    step = type(optimizer).step
    if getattr(step, "__code__", None) is _PROFILED_STEP:
        step = step.__wrapped__
    return functools.partial(step, optimizer)


class ForwardedToInner:
    """An attribute set on the wrapper by a caller that steps it and read by the inner optimizers'
    ``step`` (GradScaler's ``grad_scale``/``found_inf`` for fused optimizers): set and deleted on
    every inner optimizer (the wrapper's ``_inners``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, wrapper: Any, owner: type | None = None) -> Any:
        if wrapper is None:
            return self
        return getattr(wrapper._inners[0].optimizer, self.name)

    def __set__(self, wrapper: Any, value: Any) -> None:
        for inner in wrapper._inners:
            setattr(inner.optimizer, self.name, value)

    def __delete__(self, wrapper: Any) -> None:
        for inner in wrapper._inners:
            if hasattr(inner.optimizer, self.name):
                delattr(inner.optimizer, self.name)
