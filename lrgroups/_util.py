"""Small helpers shared by several lrgroups modules (one copy each; private to the package).

Example:
    >>> import torch.nn as nn
    >>> from lrgroups._util import first_names, has_params, kept_training_modes
    >>> first_names(["a", "b", "c"], shown=2), has_params(nn.ReLU())
    ('a, b and 1 more', False)
    >>> model = nn.Sequential(nn.Linear(2, 2)).eval()
    >>> with kept_training_modes(model):
    ...     _ = model.train()
    >>> model.training, model[0].training
    (False, False)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, MutableSequence, Sequence

import torch.nn as nn

__all__ = ["SHOWN", "first_names", "has_params", "kept_training_modes", "remove_all"]

#: How many names a message writes out before it counts the rest.
SHOWN = 5


def first_names(names: Sequence[str], shown: int = SHOWN) -> str:
    """``"a, b, c"``, or ``"a, b, c, d, e and 12 more"`` past ``shown`` names.

    Args:
        names: the names.
        shown: how many are written out.

    Returns:
        The text.

    Example:
        >>> first_names(["a", "b", "c"], shown=2)
        'a, b and 1 more'
    """
    head = ", ".join(names[:shown])
    return head if len(names) <= shown else f"{head} and {len(names) - shown} more"


def has_params(module: nn.Module) -> bool:
    """Whether ``module`` (or a submodule) holds a parameter."""
    return next(module.parameters(), None) is not None


def remove_all(handles: MutableSequence[Any]) -> None:
    """Remove every handle in ``handles`` (anything with ``remove()``: torch's ``RemovableHandle``, a
    :class:`~lrgroups.FrozenNormStats`) and empty the list (idempotent).

    Args:
        handles: the handles (the owner's list, emptied in place).
    """
    for handle in handles:
        handle.remove()
    handles.clear()


@contextlib.contextmanager
def kept_training_modes(model: nn.Module) -> Iterator[None]:
    """Put back every module's ``training`` flag after the block (also when it raises): a block may
    switch modes (``model.train()``, ``model.eval()``, one layer's flag) and leaves the model as it was.

    Args:
        model: the model whose modules' flags are kept.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
