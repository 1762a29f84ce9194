"""Every deprecated public name of lrgroups, in one place: each is a one-line alias of the name that
replaced it, works as before, and warns with ``DeprecationWarning``; they go in the next minor release.

:data:`DEPRECATED` lists them (``(where, old name, new name)``); the classes spell each alias as one
line with :func:`alias` (a method or attribute), which adds its row to :data:`DEPRECATED` when its
class is made, or :func:`keyword` (a constructor argument), whose rows :data:`KEYWORDS` holds and
which refuses a rename that is not listed there. :func:`listed` imports every module of lrgroups
first, so its rows are all of them.

Example:
    >>> import warnings
    >>> class Counter:
    ...     def end_epoch(self): return "counted"
    ...     after_epoch = alias("end_epoch")
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     Counter().after_epoch(), caught[0].category.__name__
    ('counted', 'DeprecationWarning')
    >>> DEPRECATED[-1][1:]  # the alias listed itself
    ('after_epoch', 'end_epoch')
    >>> _ = DEPRECATED.pop()  # (a doctest's class is no part of lrgroups)
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from pathlib import Path
from typing import Any, Callable

__all__ = ["DEPRECATED", "KEYWORDS", "alias", "keyword", "listed"]

#: Renamed keyword arguments, ``(where, old name, new name)``: :func:`keyword` refuses any other.
KEYWORDS: tuple[tuple[str, str, str], ...] = (
    ("lrgroups.unfreezing.ProgressiveUnfreezing.__init__", "reset_patience", "reset_patience_on_advance"),
    ("lrgroups.optimizer.LayerwiseOptimizer.__init__", "optimizer", "optimizer_cls"),
    ("lrgroups.rules.Rule.__init__", "optimizer", "inner"),
    ("lrgroups.recipes.Recipe.build", "optimizer", "optimizer_cls"),
)

#: ``(where, old name, new name)`` of every deprecated name of the modules imported so far: the
#: :data:`KEYWORDS`, then each :func:`alias` in the order its class was made (see :func:`listed`).
DEPRECATED: list[tuple[str, str, str]] = list(KEYWORDS)


def listed() -> tuple[tuple[str, str, str], ...]:
    """Every deprecated name of lrgroups, sorted: :data:`DEPRECATED` after every module of the
    package was imported (a framework integration whose framework is missing is skipped).

    Returns:
        ``(where, old name, new name)`` rows.

    Example:
        >>> ("lrgroups.early_stopping.EarlyStopping", "step", "observe") in listed()
        True
    """
    for module in pkgutil.walk_packages([str(Path(__file__).parent)], "lrgroups."):  # (no import of the package)
        try:
            importlib.import_module(module.name)
        except ImportError:  # pragma: no cover - an optional framework is not installed
            continue
    return tuple(sorted(set(DEPRECATED)))


def _warn(where: str, old: str, new: str, stacklevel: int = 3, same: str = "the same thing") -> None:
    warnings.warn(f"{where}.{old} is deprecated, use {new} ({same}); {old} goes in the next minor release",
                  DeprecationWarning, stacklevel=stacklevel)


class alias:
    """A deprecated name for the method or attribute ``new`` of the same class: reading it (and, for
    an attribute, setting it) warns and acts on ``new``. Its row ``(module.Class, old, new)`` goes
    into :data:`DEPRECATED` when the class is made.

    Args:
        new: the name that replaced it.
        returns: for a method whose old name returned something else, how to make the old result
            from the new one (e.g. ``lambda decision: decision.stop``); ``None``: the same result.
    """

    def __init__(self, new: str, returns: Callable[[Any], Any] | None = None) -> None:
        self.new, self.returns = new, returns

    def __set_name__(self, owner: type, name: str) -> None:
        self.old, self.where = name, f"{owner.__module__}.{owner.__qualname__}"
        DEPRECATED.append((self.where, self.old, self.new))

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        _warn(self.where, self.old, self.new, same="the same thing" if self.returns is None else "it returns more")
        target = getattr(obj, self.new)
        if self.returns is None:
            return target
        returns = self.returns
        return lambda *args, **kwargs: returns(target(*args, **kwargs))

    def __set__(self, obj: Any, value: Any) -> None:
        _warn(self.where, self.old, self.new)
        setattr(obj, self.new, value)


def keyword(where: str, old: str, old_value: Any, new: str, new_value: Any, default: Any) -> Any:
    """The value of a renamed keyword argument: ``new_value``, or ``old_value`` (with a warning) when
    only the old keyword was given.

    Args:
        where: the callable, as its row in :data:`KEYWORDS` names it.
        old: the deprecated keyword; ``old_value`` is ``None`` when it was not given.
        old_value: its value.
        new: the keyword that replaced it; ``new_value`` is ``None`` when it was not given.
        new_value: its value.
        default: the value when neither was given.

    Returns:
        The value to use.

    Raises:
        TypeError: both keywords were given.
        RuntimeError: ``(where, old, new)`` is not a row of :data:`KEYWORDS` (the list would drift).
    """
    if (where, old, new) not in KEYWORDS:
        raise RuntimeError(f"lrgroups._deprecated.KEYWORDS lacks {(where, old, new)!r}: list the rename there")
    if old_value is None:
        return default if new_value is None else new_value
    if new_value is not None:
        raise TypeError(f"{where}: give {new}= only ({old}= is its deprecated name)")
    _warn(where, old, new, stacklevel=4)
    return old_value
