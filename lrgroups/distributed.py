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

``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` / ``set_optimizer_state_dict``
take a :class:`~lrgroups.LayerwiseOptimizer` as any optimizer (its ``state_dict`` has torch's layout).
torch's loader keeps at most one empty param group and drops its hyperparameters; the wrapper keeps
its own for such a group. With several empty groups (several frozen layers with distinct settings)
torch's loader raises: save ``opt.state_dict()`` itself then.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["wrap_ddp", "every_parameter_registered"]


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
        raise ValueError(
            "wrap_ddp needs find_unused_parameters=True: frozen parameters produce no gradient"
        )
    ddp_kwargs["find_unused_parameters"] = True
    with every_parameter_registered(model):
        return DistributedDataParallel(model, **ddp_kwargs)
