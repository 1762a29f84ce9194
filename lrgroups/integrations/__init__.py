"""Glue for training frameworks; each submodule imports its framework only when it is imported.

- :mod:`lrgroups.integrations.lightning`: ``LayerwiseFinetuning`` (a Lightning ``Callback``) and
  ``LayerwiseDDPStrategy``.
- :mod:`lrgroups.integrations.transformers`: ``LayerwiseCallback`` (a Hugging Face ``TrainerCallback``).
- accelerate needs no glue: :func:`unwrap` reaches the :class:`~lrgroups.LayerwiseOptimizer` inside
  the object ``accelerator.prepare`` returns.

Example:
    >>> import torch, torch.nn as nn, lrgroups
    >>> opt = lrgroups.LayerwiseOptimizer(nn.Linear(2, 2), torch.optim.SGD, lr=0.1)
    >>> class Wrapper:  # what accelerate, Lightning and the HF Trainer hand back: .optimizer / ._optimizer
    ...     def __init__(self, optimizer): self.optimizer = optimizer
    >>> lrgroups.unwrap(Wrapper(opt)) is opt
    True
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .._util import first_names
from ..optimizer import LayerwiseOptimizer

__all__ = ["unwrap"]


def unwrap(optimizer: Any) -> LayerwiseOptimizer:
    """The :class:`~lrgroups.LayerwiseOptimizer` inside the wrappers frameworks put around an
    optimizer: accelerate's ``AcceleratedOptimizer`` (what ``accelerator.prepare`` returns and HF
    callbacks receive), Lightning's ``LightningOptimizer`` (``self.optimizers()``), or any object that
    keeps the optimizer it wraps in ``.optimizer`` or ``._optimizer``. So ``freeze``, ``unfreeze``,
    ``explain`` and ``select`` are one call away: ``lrgroups.unwrap(optimizer).unfreeze("layer4.*")``.

    Raises:
        TypeError: no LayerwiseOptimizer is inside ``optimizer`` (names the wrappers found).

    Example:
        >>> import torch, torch.nn as nn, lrgroups
        >>> opt = lrgroups.LayerwiseOptimizer(nn.Linear(2, 2), torch.optim.SGD, lr=0.1)
        >>> lrgroups.unwrap(opt) is opt
        True
    """
    seen = [type(optimizer).__name__]
    current = optimizer
    for _ in range(16):
        if isinstance(current, LayerwiseOptimizer):
            return current
        inner = getattr(current, "optimizer", None)
        if inner is None or inner is current:
            inner = getattr(current, "_optimizer", None)
        if inner is None or inner is current:
            break
        current = inner
        seen.append(type(current).__name__)
    raise TypeError(
        f"no LayerwiseOptimizer inside {' -> '.join(seen)}: build the optimizer with "
        "lrgroups.LayerwiseOptimizer(model, optimizer_cls, ...)"
    )


def _check_belongs(optimizer: LayerwiseOptimizer, model: nn.Module, who: str, fix: str) -> None:
    """Raise ``ValueError`` when ``optimizer`` manages tensors that are not ``model``'s parameters (it
    was built over another model instance): ``who`` names the framework's model, ``fix`` the remedy."""
    mine = {id(p) for p in model.parameters()}
    foreign = [name for name, param in optimizer.select(missing="empty").items() if id(param) not in mine]
    if foreign:
        few = first_names(foreign, 3)
        raise ValueError(
            f"the LayerwiseOptimizer steps parameters that are not {who}'s ({few}): it was built over another "
            f"model instance, so the model being trained would never change. {fix}"
        )


#: What a callback's ``log_lrs`` may be: every group's lr, or one per depth.
LOG_LRS = ("group", "depth")


def _lrs(optimizer: LayerwiseOptimizer, per: str) -> dict[str, float]:
    """The lr of every param group by its name (``per="group"``), or (``"depth"``) one per role and
    depth: groups whose names differ only by ``-nowd`` share a key when their lrs are equal (they
    keep their own names when not, so nothing is hidden)."""
    by_group = {group["name"]: float(group["lr"]) for group in optimizer.param_groups}
    if per == "group":
        return by_group
    shared: dict[str, list[tuple[str, float]]] = {}
    for name, lr in by_group.items():
        shared.setdefault(name.removesuffix("-nowd"), []).append((name, lr))
    out: dict[str, float] = {}
    for key, entries in shared.items():
        if len({lr for _, lr in entries}) == 1:
            out[key] = entries[0][1]
        else:
            out.update(entries)
    return out


def _trainable(optimizer: LayerwiseOptimizer) -> int:
    """How many scalars the optimizer trains now (the frozen ones are in no group)."""
    return sum(param.numel() for group in optimizer.param_groups for param in group["params"])


def _check_log_lrs(value: str | None, allowed: tuple[str | None, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"log_lrs must be one of {', '.join(map(repr, allowed))}, got {value!r}")
