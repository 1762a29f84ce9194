"""Every deprecated public name of lrgroups, in one place: each is a one-line alias of the name that
replaced it, works as before, and warns with ``DeprecationWarning``; they go in the next minor release.

:data:`DEPRECATED` lists them (``(where, old name, new name)``); the classes spell each alias as one
line with :func:`alias` (a method or attribute) or :func:`keyword` (a constructor argument).

Example:
    >>> import warnings
    >>> class Counter:
    ...     def end_epoch(self): return "counted"
    ...     after_epoch = alias("end_epoch")
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     Counter().after_epoch(), caught[0].category.__name__
    ('counted', 'DeprecationWarning')
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["DEPRECATED", "alias", "keyword"]

#: ``(where, old name, new name)`` of every deprecated alias.
DEPRECATED: tuple[tuple[str, str, str], ...] = (
    ("lrgroups.driver.FineTuning", "after_epoch", "end_epoch"),
    ("lrgroups.ProgressiveUnfreezing", "reset_patience", "reset_patience_on_advance"),
    ("lrgroups.ProgressiveUnfreezing.__init__", "reset_patience", "reset_patience_on_advance"),
    ("lrgroups.LayerwiseOptimizer", "optimizer", "optimizer_cls"), ("lrgroups.Rule", "optimizer", "inner"),
)


def _warn(where: str, old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{where}.{old} is deprecated, use {new} (the same thing); {old} goes in the next minor release",
                  DeprecationWarning, stacklevel=stacklevel)


class alias:
    """A deprecated name for the method or attribute ``new`` of the same class: reading it (and, for
    an attribute, setting it) warns and acts on ``new``.

    Args:
        new: the name that replaced it.
    """

    def __init__(self, new: str) -> None:
        self.new = new

    def __set_name__(self, owner: type, name: str) -> None:
        self.old, self.where = name, owner.__qualname__

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        _warn(self.where, self.old, self.new)
        return getattr(obj, self.new)

    def __set__(self, obj: Any, value: Any) -> None:
        _warn(self.where, self.old, self.new)
        setattr(obj, self.new, value)


def keyword(where: str, old: str, old_value: Any, new: str, new_value: Any, default: Any) -> Any:
    """The value of a renamed keyword argument: ``new_value``, or ``old_value`` (with a warning) when
    only the old keyword was given.

    Args:
        where: the callable, for the message.
        old: the deprecated keyword; ``old_value`` is ``None`` when it was not given.
        old_value: its value.
        new: the keyword that replaced it; ``new_value`` is ``None`` when it was not given.
        new_value: its value.
        default: the value when neither was given.

    Returns:
        The value to use.

    Raises:
        TypeError: both keywords were given.
    """
    if old_value is None:
        return default if new_value is None else new_value
    if new_value is not None:
        raise TypeError(f"{where}: give {new}= only ({old}= is its deprecated name)")
    _warn(where, old, new, stacklevel=4)
    return old_value
