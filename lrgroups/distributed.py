"""Distributed training with parameters that are unfrozen later.

``DistributedDataParallel`` registers the parameters it all-reduces when it is constructed, and only
those with ``requires_grad=True`` then: a parameter frozen at that moment and unfrozen later trains
on each rank's own gradient, never reduced, and the ranks silently drift apart (Lightning #20340).
:func:`wrap_ddp` constructs DDP with every parameter registered and ``find_unused_parameters=True``,
so frozen parameters (which produce no gradient) are skipped and unfrozen ones are reduced.

Example (inside an initialised process group)::

    model = build_model()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, rules=[...])
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_epochs=1)
    ddp_model = lrgroups.wrap_ddp(model, device_ids=[local_rank])   # after freezing, before training
    ...  # train ddp_model as usual; schedule.end_epoch() unfreezes on every rank alike

Every rank must freeze and unfreeze the same parameters at the same step (drive unfreezing by step
or epoch counts, or by a metric that is all-reduced first).

``torch.distributed.checkpoint`` (DCP) maps optimizer state and group hyperparameters by the fully
qualified names of each group's ``params``. A frozen layer's group lists no parameter, and torch's
``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` take at most one such group: with several
the loader raises ``ValueError``, and with ``flatten_optimizer_state_dict=True`` the hyperparameters
of an empty group are not saved and the loader raises ``IndexError`` (pytorch#143828). Call them
inside :func:`dcp_layout`, where every group lists its frozen parameters too (``requires_grad=False``:
DCP keeps no state for them, and keeps each group's hyperparameters by their names)::

    with lrgroups.distributed.dcp_layout(opt):
        state = get_optimizer_state_dict(model, opt, options=options)
    ...
    with lrgroups.distributed.dcp_layout(opt):
        set_optimizer_state_dict(model, opt, state, options=options)

DCP keeps torch's keys only (not the ``"lrgroups"`` key): the frozen set is the loading optimizer's,
so restore it first (``ProgressiveUnfreezing.load_state_dict`` does) and then load the optimizer.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["wrap_ddp", "every_parameter_registered", "dcp_layout"]


@contextmanager
def every_parameter_registered(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every parameter of ``model`` requires grad, so a ``DistributedDataParallel``
    built there registers them all for gradient reduction, frozen ones included; on leaving (also on
    an error) the frozen ones are frozen again. What :func:`wrap_ddp` and Lightning's
    ``LayerwiseDDPStrategy`` build DDP in.

    Args:
        model: the model DDP is about to wrap.

    Yields:
        ``model``.

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Linear(2, 2).requires_grad_(False)
        >>> with every_parameter_registered(model):
        ...     model.weight.requires_grad
        True
        >>> model.weight.requires_grad
        False
    """
    frozen = [param for param in model.parameters() if not param.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    try:
        yield model
    finally:
        for param in frozen:
            param.requires_grad_(False)


def wrap_ddp(model: nn.Module, **ddp_kwargs: Any) -> DistributedDataParallel:
    """``DistributedDataParallel(model, find_unused_parameters=True, **ddp_kwargs)`` built with every
    parameter registered for gradient reduction, frozen ones included; ``requires_grad`` is left as
    it was.

    Args:
        model: the model to wrap.
        **ddp_kwargs: ``DistributedDataParallel``'s arguments (``device_ids``, ...).

    Returns:
        The DDP module.

    Raises:
        ValueError: ``find_unused_parameters=False`` (frozen parameters produce no gradient).
    """
    if ddp_kwargs.get("find_unused_parameters") is False:
        raise ValueError("wrap_ddp needs find_unused_parameters=True: frozen parameters produce no gradient")
    ddp_kwargs["find_unused_parameters"] = True
    with every_parameter_registered(model):
        return DistributedDataParallel(model, **ddp_kwargs)


@contextmanager
def dcp_layout(optimizer: torch.optim.Optimizer) -> Iterator[torch.optim.Optimizer]:
    """Inside the block every param group of a :class:`~lrgroups.LayerwiseOptimizer` lists its frozen
    parameters too (in plan order, ``requires_grad=False``, no state): the layout
    ``torch.distributed.checkpoint.state_dict``'s ``get_optimizer_state_dict`` and
    ``set_optimizer_state_dict`` expect, flattened (``flatten_optimizer_state_dict=True``) or not.
    With frozen layers the groups they fill are otherwise empty, and torch takes at most one empty
    group: several raise ``ValueError`` on load, and flattening drops their hyperparameters (a
    scheduled lr included) and raises ``IndexError`` on load (pytorch#143828). On leaving (also on an
    error) frozen parameters are in no group again.

    Call only DCP's functions inside: the optimizer must not step (a frozen parameter without a
    gradient is skipped by torch's optimizers, not by every optimizer). DCP saves torch's keys only,
    so a load keeps the loading optimizer's frozen set: restore it first (a
    :class:`~lrgroups.ProgressiveUnfreezing`'s ``load_state_dict`` does).

    Args:
        optimizer: a :class:`~lrgroups.LayerwiseOptimizer`, or a framework's wrapper around one
            (Lightning's, accelerate's: see :func:`lrgroups.unwrap`).

    Yields:
        The :class:`~lrgroups.LayerwiseOptimizer`.

    Raises:
        TypeError: ``optimizer`` holds no :class:`~lrgroups.LayerwiseOptimizer` (from :func:`lrgroups.unwrap`).

    Example:
        >>> import torch, torch.nn as nn, lrgroups
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1,
        ...                                   rules=[lrgroups.Rule("0.*", lr=0.01, frozen=True)])
        >>> with dcp_layout(opt):
        ...     [group["param_names"] for group in opt.param_groups]
        [['0.weight', '0.bias'], ['1.weight', '1.bias']]
        >>> [group["param_names"] for group in opt.param_groups]
        [[], ['1.weight', '1.bias']]
    """
    from .integrations import unwrap

    layerwise = unwrap(optimizer)
    groups = range(len(layerwise.param_groups))
    layerwise._sync(groups, with_frozen=True)
    try:
        yield layerwise
    finally:
        layerwise._sync(groups)
