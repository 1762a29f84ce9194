"""Declarative rules and the pure planning step: model + rules -> one settings row per parameter.

Example:
    >>> import torch.nn as nn
    >>> from lrgroups.rules import Rule, plan, layer_decay, no_weight_decay
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> rows = plan(model, lr=1e-3, weight_decay=0.05, rules=[layer_decay(0.5), no_weight_decay()])
    >>> [(row.name, row.lr, row.weight_decay) for row in rows]
    [('0.weight', 0.0005, 0.05), ('0.bias', 0.0005, 0.0), ('2.weight', 0.001, 0.05), ('2.bias', 0.001, 0.0)]

Composition, the one rule to remember: every parameter starts at ``(lr, weight_decay, frozen)``
given to the optimizer (``frozen`` from ``requires_grad``), then each rule that matches it is applied
in order, attribute by attribute: ``lr=`` / ``weight_decay=`` / ``frozen=`` / ``inner=`` replace
the running value, ``lr_mult=`` / ``wd_mult=`` multiply it, ``options=`` merge key by key. So a later
rule overrides an earlier one and multipliers compose; parameters whose settings end up equal share a
param group. Values may be numbers or functions of :class:`ParamInfo` (that is how
:func:`layer_decay` reads depth).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import inspect
import math
import re
from abc import ABCMeta
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping, Sequence, Union

import torch.nn as nn

from . import _deprecated
from ._util import first_names
from .depth import ParamInfo, Tied, describe, describe_nonempty

__all__ = [
    "ParamInfo",
    "NoMatchError",
    "Selector",
    "Rule",
    "ParamPlan",
    "describe",
    "plan",
    "plan_params",
    "layer_decay",
    "layer_decay_between",
    "no_weight_decay",
    "head",
    "RULE_KINDS",
    "rules_from_data",
    "rules_to_data",
]

Number = Union[int, float]
Setting = Union[Number, Callable[["ParamInfo"], Number], None]


@dataclass(frozen=True)
class Selector(metaclass=ABCMeta):
    """Which parameters something applies to. All given criteria must hold (logical and).

    A :class:`Rule` holds one (``rule.selector``) and is accepted wherever a selector is
    (``isinstance(rule, Selector)`` holds: it reads as its selector).

    Args:
        pattern: shell glob over the parameter name or any of its aliases (``"layer4.*"``).
        regex: regular expression searched in the name (``r"blocks\\.(10|11)\\."``).
        module_type: the owning module is an instance of this type (or tuple of types).
        ndim: the tensor has this many dimensions (or one of a tuple of them).
        depth: an int, or an inclusive ``(low, high)`` range; ``None`` ends are open.
        where: any predicate of :class:`ParamInfo`.
    """

    pattern: str | None = None
    regex: str | None = None
    module_type: type | tuple[type, ...] | None = None
    ndim: int | tuple[int, ...] | None = None
    depth: int | tuple[int | None, int | None] | None = None
    where: Callable[[ParamInfo], bool] | None = None

    def matches(self, info: ParamInfo) -> bool:
        """Whether every given criterion holds for the parameter ``info`` describes."""
        names = (info.name, *info.aliases)
        if self.pattern is not None and not any(fnmatch.fnmatchcase(n, self.pattern) for n in names):
            return False
        if self.regex is not None and not any(re.search(self.regex, n) for n in names):
            return False
        if self.module_type is not None and not isinstance(info.module, self.module_type):
            return False
        if self.ndim is not None and info.ndim not in (self.ndim if isinstance(self.ndim, tuple) else (self.ndim,)):
            return False
        if self.depth is not None:
            low, high = (self.depth, self.depth) if isinstance(self.depth, int) else self.depth
            if (low is not None and info.depth < low) or (high is not None and info.depth > high):
                return False
        return self.where is None or bool(self.where(info))

    def criteria(self) -> str:
        """The selector's criteria as text, for error messages."""
        parts = [f"{name}={getattr(self, name)!r}" for name in SELECTOR_FIELDS if getattr(self, name) is not None]
        return ", ".join(parts) or "everything"

    def no_match_error(self, names: Sequence[str], what: str | None = None) -> NoMatchError:
        """The error for this selector matching none of ``names``, with the closest names.

        Args:
            names: the parameter names it was matched against.
            what: what matched nothing, for the message (default ``"selection <criteria>"``).

        Returns:
            The :class:`NoMatchError` (to raise).

        Example:
            >>> print(Selector(pattern="wieght").no_match_error(["weight", "bias"]))  # doctest: +ELLIPSIS
            selection pattern='wieght' matches no parameter; closest names: weight (the model has 2 ...
        """
        return NoMatchError(no_match_message(what or f"selection {self.criteria()}", self.pattern or self.regex, names))


#: The criteria of a :class:`Selector`, in order (also :class:`Rule`'s first constructor arguments).
SELECTOR_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Selector))


_RESERVED_OPTIONS = frozenset({"params", "param_names", "lr", "weight_decay"})


def _hashable(value: Any) -> Any:
    """``value`` with its lists, sets and dicts as tuples and frozensets, so that equal values hash alike."""
    if isinstance(value, Mapping):
        return frozenset((key, _hashable(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_hashable(item) for item in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)  # an unhashable object: its text
    return value


class FrozenDict(dict):
    """A read-only dict that hashes by its items, by value as ``==`` compares (``{"momentum": 1}``
    and ``{"momentum": 1.0}`` hash alike; lists, sets and dicts inside hash as tuples and frozensets,
    and a value that cannot be hashed at all by its ``repr``): a rule's ``options`` and a recipe's
    settings, so that rules and recipes are hashable values.

    Raises:
        TypeError: on any change in place (build a new rule or recipe).
    """

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset((key, _hashable(value)) for key, value in self.items()))

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        """Refused: a FrozenDict does not change in place.

        Raises:
            TypeError: always.
        """
        raise TypeError("read-only (a rule's options, a recipe's settings): build a new Rule or Recipe "
                        "(dataclasses.replace)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _read_only  # type: ignore[assignment]

    def __reduce__(self):
        return (type(self), (dict(self),))


_FrozenOptions = FrozenDict  # the name pickles of rules made before the shared type refer to


class MadeByName:
    """Equality and hash of a value a named factory may have made (a :class:`Rule`, a
    :class:`~lrgroups.recipes.Recipe`): such a value holds functions, which compare by identity, so
    two made by the same factory with the same arguments (:func:`named_factory`) are equal; any other
    compares its fields (``_values()``)."""

    def _values(self) -> tuple:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, type(self)) and not isinstance(self, type(other)):
            return NotImplemented
        mine, theirs = self.__dict__.get("_kind"), other.__dict__.get("_kind")
        if mine is not None or theirs is not None:
            return mine == theirs
        return self._values() == other._values()

    def __hash__(self) -> int:
        kind = self.__dict__.get("_kind")
        return hash(kind if kind is not None else self._values())


def named_factory(kind: str, registry: dict[str, Callable[..., Any]],
                  freeze: Callable[[Any], Any] = lambda value: value) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a factory under ``kind`` in ``registry``; what it makes remembers ``(kind, its
    arguments)`` (defaults included, ``**kwargs`` spread out, each value passed through ``freeze``), so
    :class:`MadeByName` compares it by them and ``to_dict`` writes it back by name."""

    def register(factory: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(factory)

        @functools.wraps(factory)
        def make(*args: Any, **kwargs: Any) -> Any:
            made = factory(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments: dict[str, Any] = {}
            for name, value in bound.arguments.items():
                if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(value)
                else:
                    arguments[name] = value
            object.__setattr__(made, "_kind", (kind, FrozenDict({k: freeze(v) for k, v in arguments.items()})))
            return made

        registry[kind] = make
        return make

    return register


@dataclass(frozen=True, init=False, repr=False, eq=False)
class Rule(MadeByName):
    """Select parameters (a :class:`Selector`, its fields given directly or as ``selector=``) and set
    their lr, weight decay, options, inner optimizer (by name) or frozen flag.

    The selection is a field of the rule, apart from its settings: ``rule.selector``. The selector's
    fields and methods read through the rule (``rule.pattern``, ``rule.matches(info)``,
    ``rule.criteria()``), and a rule is accepted wherever a selector is.

    Example:
        >>> rule = Rule("fc.*", lr=1e-3)
        >>> rule.label, rule.selector
        ("Rule(pattern='fc.*', lr=0.001)", Selector(pattern='fc.*', regex=None, module_type=None, ndim=None, depth=None, where=None))
        >>> Rule(selector=Selector(ndim=1), weight_decay=0.0) == Rule(ndim=1, weight_decay=0.0)
        True

    Args:
        pattern: shell glob over the parameter name or any of its aliases (see :class:`Selector`).
        regex: regular expression searched in the name.
        module_type: the owning module's type (or tuple of types).
        ndim: the tensor's number of dimensions (or a tuple of them).
        depth: an int, or an inclusive ``(low, high)`` range.
        where: any predicate of :class:`ParamInfo`.
        lr: absolute learning rate (replaces the running value).
        lr_mult: multiplies the running learning rate.
        weight_decay: absolute weight decay.
        wd_mult: multiplies the running weight decay.
        frozen: ``True`` freezes (not in the optimizer, ``requires_grad=False``), ``False`` trains.
        options: any other per-group option of the inner optimizer (``{"betas": (0.9, 0.95)}``,
            ``{"momentum": 0.8}``, Rprop's ``{"step_sizes": (1e-6, 1.0)}``); merged key by key, a
            later rule's value replacing an earlier one's. ``lr``/``weight_decay`` have their own
            fields and ``params``/``param_names`` belong to the optimizer: giving them here raises
            ``ValueError``.
        inner: the name of the inner optimizer these parameters go to, when
            :class:`~lrgroups.LayerwiseOptimizer` is given several (``{"muon": Muon, "adamw": AdamW}``).
        name: label shown by ``explain()``; defaults to the rule's repr.
        allow_empty: if ``False`` (default) a rule that matches no parameter is an error.
        needs_depth: if ``True`` the rule is meaningless when every parameter has one depth, which
            is then an error (layer decay must never be a silent no-op).
        selector: the selection as a :class:`Selector`; fields given directly replace its own.
        optimizer: deprecated name of ``inner`` (it warns; so does reading ``rule.optimizer``).

    Raises:
        TypeError: ``options`` is not a mapping.
        ValueError: ``options`` sets ``lr``, ``weight_decay``, ``params`` or ``param_names``.
    """

    selector: Selector
    lr: Setting = None
    lr_mult: Setting = None
    weight_decay: Setting = None
    wd_mult: Setting = None
    frozen: bool | None = None
    options: Mapping[str, Any] | None = None
    inner: str | None = None
    name: str | None = None
    allow_empty: bool = False
    needs_depth: bool = False

    optimizer = _deprecated.alias("inner")

    def __init__(
        self,
        pattern: str | None = None,
        regex: str | None = None,
        module_type: type | tuple[type, ...] | None = None,
        ndim: int | tuple[int, ...] | None = None,
        depth: int | tuple[int | None, int | None] | None = None,
        where: Callable[[ParamInfo], bool] | None = None,
        lr: Setting = None,
        lr_mult: Setting = None,
        weight_decay: Setting = None,
        wd_mult: Setting = None,
        frozen: bool | None = None,
        options: Mapping[str, Any] | None = None,
        inner: str | None = None,
        name: str | None = None,
        allow_empty: bool = False,
        needs_depth: bool = False,
        *,
        selector: Selector | None = None,
        optimizer: str | None = None,
    ) -> None:
        inner = _deprecated.keyword("lrgroups.rules.Rule.__init__", "optimizer", optimizer, "inner", inner, None)
        given = {key: value for key, value in zip(SELECTOR_FIELDS, (pattern, regex, module_type, ndim, depth, where), strict=True)
                 if value is not None}
        selector = Selector(**given) if selector is None else replace(selector, **given) if given else selector
        settings = {"selector": selector, "lr": lr, "lr_mult": lr_mult, "weight_decay": weight_decay,
                    "wd_mult": wd_mult, "frozen": frozen, "options": options, "inner": inner, "name": name,
                    "allow_empty": allow_empty, "needs_depth": needs_depth}
        for key, value in settings.items():
            object.__setattr__(self, key, value)
        self.__post_init__()

    def __post_init__(self) -> None:
        if not isinstance(self.selector, Selector) or isinstance(self.selector, Rule):
            raise TypeError(f"selector must be a Selector, got {self.selector!r}")
        if self.options is not None:
            if not isinstance(self.options, Mapping):
                raise TypeError(f"options must be a mapping of option names to values, got {self.options!r}")
            reserved = sorted(set(self.options) & _RESERVED_OPTIONS)
            if reserved:
                raise ValueError(
                    f"options may not set {', '.join(reserved)}: use the rule's lr=/weight_decay= fields "
                    "(params and param_names belong to the optimizer)"
                )
            # A frozen rule keeps a hashable, order-free copy.
            object.__setattr__(self, "options", FrozenDict(self.options))

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "selector" not in state:  # pickled when Rule subclassed Selector: its fields were the rule's
            state = dict(state)
            state["selector"] = Selector(**{key: state.pop(key, None) for key in SELECTOR_FIELDS})
        if "optimizer" in state:  # pickled when the inner optimizer's name was the field ``optimizer``
            state = dict(state)
            state["inner"] = state.pop("optimizer")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        values = [*(getattr(self.selector, key) for key in SELECTOR_FIELDS),
                  *(getattr(self, f.name) for f in fields(self) if f.name != "selector")]
        names = [*SELECTOR_FIELDS, *(f.name for f in fields(self) if f.name != "selector")]
        return f"Rule({', '.join(f'{key}={value!r}' for key, value in zip(names, values, strict=True))})"

    def _values(self) -> tuple:
        return (self.selector, *(getattr(self, key) for key in _SETTING_FIELDS))

    def to_dict(self) -> dict[str, Any]:
        """The rule as plain data (str, numbers, bools, lists, dicts): what :meth:`from_dict` reads
        back to an equal rule, and what JSON, YAML and TOML hold (:func:`rules_to_data`).

        A rule made by a named factory (:data:`RULE_KINDS`: ``layer_decay``, ``no_weight_decay``,
        ...) is written as ``{"kind": name, **its arguments}``; any other rule as its fields, those at
        their defaults left out. ``module_type`` is written as the type's import path, a depth range
        as ``{"min": low, "max": high}`` (an open end left out), tuples as lists.

        Raises:
            TypeError: the rule holds a function (``where=``, a callable ``lr``, an Auto-RGN rule):
                functions are not data.

        Example:
            >>> Rule("fc.*", lr=1e-3, options={"betas": (0.9, 0.95)}).to_dict()
            {'pattern': 'fc.*', 'lr': 0.001, 'options': {'betas': [0.9, 0.95]}}
            >>> layer_decay(0.75, depth=(1, None)).to_dict()
            {'kind': 'layer_decay', 'gamma': 0.75, 'depth': {'min': 1}}
        """
        kind = self.__dict__.get("_kind")
        if kind is not None:
            name, arguments = kind
            return {"kind": name, **{key: _encode(key, value, self.label) for key, value in arguments.items()}}
        data = {key: _encode(key, getattr(self.selector, key), self.label) for key in SELECTOR_FIELDS
                if getattr(self.selector, key) is not None}
        for key in _SETTING_FIELDS:
            value = getattr(self, key)
            if value is not None and not (key in ("allow_empty", "needs_depth") and value is False):
                data[key] = _encode(key, dict(value) if key == "options" else value, self.label)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Rule":
        """The rule a plain mapping describes (what :meth:`to_dict`, a config file or a CLI gives).

        ``{"kind": "layer_decay", "gamma": 0.75}`` calls the named factory (:data:`RULE_KINDS`) with
        the other keys; without ``kind`` (or with ``kind = "rule"``) the keys are :class:`Rule`'s own
        arguments. ``module_type`` may be an import path (``"torch.nn.BatchNorm2d"``), ``depth`` an
        int, ``[low, high]`` or ``{"min": low, "max": high}``; lists become tuples.

        Raises:
            ValueError: an unknown ``kind`` or key (the message lists the known ones and the closest),
                or a ``module_type`` path that names no ``nn.Module`` subclass.
            TypeError: ``data`` is not a mapping.

        Example:
            >>> Rule.from_dict({"kind": "layer_decay", "gamma": 0.75}) == layer_decay(0.75)
            True
            >>> Rule.from_dict({"pattern": "fc.*", "lr": 1e-3}) == Rule("fc.*", lr=1e-3)
            True
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"a rule as data is a mapping (a dict, a TOML table), got {type(data).__name__}: {data!r}")
        data = {_OLD_KEYS.get(key, key) if _OLD_KEYS.get(key) not in data else key: value
                for key, value in data.items()}
        kind = data.pop("kind", "rule")
        if kind == "rule":
            _check_keys(data, (*SELECTOR_FIELDS, *_SETTING_FIELDS), "a rule")
            return cls(**{key: _decode(key, value) for key, value in data.items()})
        factory = RULE_KINDS.get(kind)
        if factory is None:
            raise ValueError(f"unknown rule kind {kind!r}; known: {', '.join(['rule', *sorted(RULE_KINDS)])}")
        _check_keys(data, _kind_keys(factory), f"rule kind {kind!r}")
        return factory(**{key: _decode(key, value) for key, value in data.items()})

    # The selector's fields and methods, read through the rule.
    @property
    def pattern(self) -> str | None:
        """The selector's ``pattern``."""
        return self.selector.pattern

    @property
    def regex(self) -> str | None:
        """The selector's ``regex``."""
        return self.selector.regex

    @property
    def module_type(self) -> type | tuple[type, ...] | None:
        """The selector's ``module_type``."""
        return self.selector.module_type

    @property
    def ndim(self) -> int | tuple[int, ...] | None:
        """The selector's ``ndim``."""
        return self.selector.ndim

    @property
    def depth(self) -> int | tuple[int | None, int | None] | None:
        """The selector's ``depth``."""
        return self.selector.depth

    @property
    def where(self) -> Callable[[ParamInfo], bool] | None:
        """The selector's ``where``."""
        return self.selector.where

    def matches(self, info: ParamInfo) -> bool:
        """Whether the rule's selector picks ``info`` (:meth:`Selector.matches`)."""
        return self.selector.matches(info)

    def criteria(self) -> str:
        """The selector's criteria as text (:meth:`Selector.criteria`)."""
        return self.selector.criteria()

    def no_match_error(self, names: Sequence[str], what: str | None = None) -> NoMatchError:
        """The error for this rule matching none of ``names`` (:meth:`Selector.no_match_error`; by
        default the message names the rule by its :attr:`label`)."""
        return self.selector.no_match_error(names, what or f"rule {self.label}")

    @property
    def label(self) -> str:
        """The rule's ``name``, else ``Rule(<criteria>, <settings>)``."""
        if self.name is not None:
            return self.name
        settings = [
            f"{key}={getattr(self, key)!r}"
            for key in ("lr", "lr_mult", "weight_decay", "wd_mult", "frozen", "inner")
            if getattr(self, key) is not None
        ]
        if self.options:
            settings.append(f"options={dict(self.options)!r}")
        return f"Rule({', '.join([self.criteria(), *settings])})"


Selector.register(Rule)  # a rule reads as its selector wherever a Selector is taken

#: A :class:`Rule`'s settings (its fields besides the selector), in order.
_SETTING_FIELDS: tuple[str, ...] = (
    "lr", "lr_mult", "weight_decay", "wd_mult", "frozen", "options", "inner", "name", "allow_empty", "needs_depth",
)
#: Keys of a rule's dict read as another: ``optimizer`` is what ``to_dict`` wrote for ``inner`` before.
_OLD_KEYS = {"optimizer": "inner"}

#: The named rule factories, by the ``kind`` a rule's dict gives (:meth:`Rule.from_dict`); a rule
#: they make remembers its arguments, so :meth:`Rule.to_dict` writes it back as its kind.
RULE_KINDS: dict[str, Callable[..., Rule]] = {}


def _kind_keys(factory: Callable[..., Rule]) -> tuple[str, ...]:
    parameters = inspect.signature(factory).parameters
    named = tuple(name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        named += (*SELECTOR_FIELDS, *_SETTING_FIELDS)  # **select / **settings go to Rule
    return named


def _check_keys(data: Mapping[str, Any], known: Sequence[str], what: str) -> None:
    unknown = [key for key in data if key not in known]
    if unknown:
        hints = [f"{key!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, known, n=1))
                 else repr(key) for key in unknown]
        raise ValueError(f"{what} has unknown key(s) {', '.join(hints)}; known: {', '.join(known)}")


def _encode(key: str, value: Any, label: str) -> Any:
    """One rule value as plain data (see :meth:`Rule.to_dict`)."""
    if key == "module_type":
        types = value if isinstance(value, tuple) else (value,)
        paths = [f"{t.__module__}.{t.__qualname__}" for t in types]
        return paths if isinstance(value, tuple) else paths[0]
    if key == "depth" and isinstance(value, tuple):
        return {bound: end for bound, end in zip(("min", "max"), value, strict=True) if end is not None}
    if callable(value):
        raise TypeError(
            f"rule {label}: {key} is a function, which is not data; write the rule with data fields "
            f"(pattern, regex, module_type, ndim, depth; numbers) or a named kind ({', '.join(sorted(RULE_KINDS))})"
        )
    if isinstance(value, Mapping):
        return {str(k): _encode(str(k), v, label) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_encode(key, item, label) for item in value]
    return value


def _decode(key: str, value: Any) -> Any:
    """One rule value from plain data (see :meth:`Rule.from_dict`)."""
    if key == "module_type":
        if isinstance(value, (list, tuple)):
            return tuple(_decode(key, item) for item in value)
        return _module_type(value) if isinstance(value, str) else value
    if key == "depth" and isinstance(value, Mapping):
        _check_keys(value, ("min", "max"), "a depth range")
        return (value.get("min"), value.get("max"))
    if isinstance(value, Mapping):
        return {k: _decode(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_decode(key, item) for item in value)
    return value


def _module_type(path: str) -> type:
    module_name, _, qualname = path.rpartition(".")
    found: Any = None
    for cut in range(len(path.split(".")) - 1, 0, -1):  # the longest importable module prefix
        parts = path.split(".")
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute, None)
        break
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ValueError(f"module_type {path!r} names no nn.Module subclass (give its import path, e.g. 'torch.nn.BatchNorm2d')")
    return found


def rules_to_data(rules: Sequence[Rule], format: str | None = None) -> list[dict[str, Any]] | str:
    """Rules as plain data (``format=None``: a list of dicts, :meth:`Rule.to_dict`) or as text in
    ``"json"``, ``"yaml"`` (PyYAML) or ``"toml"`` (tomli-w; an array named ``rules``, which ``[[rules]]`` tables also give).

    Raises:
        TypeError: a rule holds a function (see :meth:`Rule.to_dict`).
        ValueError: an unknown ``format``.
        ImportError: ``"yaml"`` without PyYAML, ``"toml"`` without tomli-w (the ``config`` extra).

    Example:
        >>> print(rules_to_data([layer_decay(0.75), no_weight_decay()], "toml"))
        rules = [
            { kind = "layer_decay", gamma = 0.75 },
            { kind = "no_weight_decay" },
        ]
        <BLANKLINE>
    """
    data = [rule.to_dict() for rule in rules]
    if format is None:
        return data
    if format == "json":
        import json

        return json.dumps({"rules": data}, indent=2)
    if format == "yaml":
        import yaml

        return yaml.safe_dump({"rules": data}, sort_keys=False)
    if format == "toml":
        import tomli_w

        return tomli_w.dumps({"rules": data})
    raise ValueError(f"format must be None, 'json', 'yaml' or 'toml', got {format!r}")


def rules_from_data(data: Any, format: str | None = None) -> list[Rule]:
    """Rules from plain data or text: a list of rule mappings, or a mapping with a ``rules`` list (a
    TOML file's ``[[rules]]`` tables); text is parsed as ``format`` (``"json"``, ``"yaml"``,
    ``"toml"``). A :class:`Rule` in the list is kept as it is.

    Raises:
        ValueError: as :meth:`Rule.from_dict` (with the rule's position), an unknown ``format``, or a
            mapping without ``rules``.

    Example:
        >>> text = '{"rules": [{"kind": "layer_decay", "gamma": 0.75}, {"pattern": "fc.*", "lr": 0.001}]}'
        >>> rules_from_data(text, "json") == [layer_decay(0.75), Rule("fc.*", lr=1e-3)]
        True
    """
    if format is not None:
        if format == "json":
            import json

            data = json.loads(data)
        elif format == "yaml":
            import yaml

            data = yaml.safe_load(data)
        elif format == "toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10: the tomli backport (a dependency there)
                import tomli as tomllib

            data = tomllib.loads(data)
        else:
            raise ValueError(f"format must be None, 'json', 'yaml' or 'toml', got {format!r}")
    if isinstance(data, Mapping):
        _check_keys(data, ("rules",), "a rules document")
        if "rules" not in data:
            raise ValueError("a rules document is a list of rules or a mapping with a 'rules' list")
        data = data["rules"]
    rules = []
    for index, item in enumerate(data):
        try:
            rules.append(item if isinstance(item, Rule) else Rule.from_dict(item))
        except (ValueError, TypeError) as error:
            raise type(error)(f"rule {index}: {error}") from None
    return rules


@dataclass(frozen=True)
class ParamPlan:
    """One row of the plan: the settings the rules give one parameter.

    ``weight_decay`` is ``None`` where neither the caller nor a rule set it: the inner optimizer's
    own default applies. ``options`` holds the other per-group options the rules set, as sorted
    ``(key, value)`` pairs; ``optimizer`` names the inner optimizer (``None``: the only one).
    """

    name: str
    aliases: tuple[str, ...]
    depth: int
    lr: float
    weight_decay: float | None
    frozen: bool
    rules: tuple[str, ...]
    shape: tuple[int, ...]
    depth_source: str = ""
    options: tuple[tuple[str, Any], ...] = ()
    optimizer: str | None = None

    @property
    def settings(self) -> tuple:
        """What decides the param group: parameters with equal settings (inner optimizer, lr,
        weight decay and every option) share one group."""
        return (self.optimizer, self.lr, self.weight_decay, self.options)


def _resolve(value: Setting, info: ParamInfo) -> float:
    return float(value(info) if callable(value) else value)


def _check_value(what: str, value: float, where: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Invalid {what} value: {value!r} for {where} ({what} must be finite and >= 0)")


class NoMatchError(ValueError, KeyError):
    """A rule, a selection (``freeze``, ``unfreeze``, ``select``, a schedule's stage) or a parameter
    name (``group_of``, ``is_frozen``, ``frozen_by``) matches no parameter of the model; the message
    names the closest names. A ``ValueError`` (as rule errors always were) and a ``KeyError`` (as
    unknown names were).

    Example:
        >>> import torch.nn as nn
        >>> try:
        ...     plan(nn.Linear(2, 2), lr=0.1, rules=[Rule("wieght", lr=0.2)])
        ... except NoMatchError as error:
        ...     print(str(error).split(" (the model")[0])
        rule Rule(pattern='wieght', lr=0.2) matches no parameter; closest names: weight
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def no_match_message(what: str, probe: str | None, names: Sequence[str]) -> str:
    """``"<what> matches no parameter"`` with a glob hint for a bare module name, the closest names
    to ``probe`` (a glob, regex or name) and a sample of the model's names."""
    message = f"{what} matches no parameter"
    if probe and not any(c in probe for c in "*?[") and any(name.startswith(probe + ".") for name in names):
        message += f"; did you mean {probe + '.*'!r} (a glob matches whole names; a module's name alone " \
                   "matches none of its parameters)?"
    if probe:
        close = difflib.get_close_matches(probe, names, n=5, cutoff=0.3)
        if close:
            message += f"; closest names: {', '.join(close)}"
    return message + f" (the model has {len(names)} parameters: {first_names(names, 3)})"


def plan(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float | None = 0.0,
    rules: Sequence[Rule] = (),
    coarse: bool = False,
    example_input: Any = None,
    tied: Tied | None = None,
) -> list[ParamPlan]:
    """The settings of every parameter of ``model``: a pure function of the model and the rules.

    ``coarse``, ``example_input`` and ``tied`` decide depths and heads (see :func:`describe`). Without an
    inner optimizer there is no default to fall back on, so ``weight_decay`` defaults to 0 here, where
    :class:`~lrgroups.LayerwiseOptimizer` takes the inner optimizer's own default (AdamW's 0.01) and
    :func:`~lrgroups.param_groups` leaves it to the optimizer; pass it to see the plan they build.

    Raises ``ValueError`` (one message naming the cause, nothing else done) for: a model without
    parameters, a non-finite or negative lr or weight decay (base or produced by a rule), a rule
    that matches nothing (with the closest names), and a depth-dependent rule on a model whose
    parameters all sit at one depth.
    """
    infos = describe_nonempty(model, coarse, example_input=example_input, tied=tied)
    return plan_params(infos, lr=lr, weight_decay=weight_decay, rules=rules)


Base = Union[float, None, Mapping[Union[str, None], Union[float, None]]]


def _base(value: Base, optimizer: str | None) -> float | None:
    return value.get(optimizer) if isinstance(value, Mapping) else value


def plan_params(
    infos: Sequence[ParamInfo],
    *,
    lr: Base,
    weight_decay: Base = 0.0,
    rules: Sequence[Rule] = (),
    optimizers: Sequence[str] | None = None,
) -> list[ParamPlan]:
    """:func:`plan` on parameters already described by :func:`describe`.

    ``lr`` and ``weight_decay`` are the starting values, or mappings from inner-optimizer name to
    starting value when the rules route parameters to several (``optimizers`` lists the names, the
    first taking every parameter no rule routes). A ``None`` weight decay means "the inner
    optimizer's default": it stays ``None`` unless a rule sets it (``wd_mult`` on it raises).
    """
    rules = [Rule.from_dict(rule) if isinstance(rule, Mapping) else rule for rule in rules]
    _check_routes(rules, optimizers)
    for base_lr in (lr.values() if isinstance(lr, Mapping) else [lr]):
        _check_value("lr", float(base_lr), "the base lr")
    for base_wd in (weight_decay.values() if isinstance(weight_decay, Mapping) else [weight_decay]):
        if base_wd is not None:
            _check_value("weight_decay", float(base_wd), "the base weight decay")
    flat = next((rule for rule in rules if rule.needs_depth), None) if infos and infos[0].max_depth == 0 else None
    if flat is not None:
        raise ValueError(
            f"{flat.label} has no effect: every parameter has depth 0 (depth from "
            f"{infos[0].depth_source or 'the model'}: one layer); use a model with several layers or "
            "drop the rule"
        )
    default_inner = optimizers[0] if optimizers else None
    hits = [0] * len(rules)
    rows = []
    for info in infos:
        matching = [index for index, rule in enumerate(rules) if rule.matches(info)]
        for index in matching:
            hits[index] += 1
        rows.append(_plan_row(info, [rules[i] for i in matching], lr, weight_decay, default_inner))
    for rule, count in zip(rules, hits, strict=True):
        if count == 0 and not rule.allow_empty:
            raise rule.no_match_error([info.name for info in infos])
    return rows


def _check_routes(rules: Sequence[Rule], optimizers: Sequence[str] | None) -> None:
    """Refuse a rule routing to an inner optimizer that is not among ``optimizers`` (or to any, when
    there is one optimizer: ``optimizers`` is ``None``)."""
    if optimizers is not None:
        unknown = sorted({rule.inner for rule in rules if rule.inner is not None} - set(optimizers))
        if unknown:
            raise ValueError(f"rules route to unknown optimizer(s) {unknown}; the optimizers are {list(optimizers)}")
    elif any(rule.inner is not None for rule in rules):
        name = next(rule.label for rule in rules if rule.inner is not None)
        raise ValueError(f"{name} routes to a named optimizer, but one optimizer was given: pass a dict of optimizers")


def _plan_row(info: ParamInfo, matching: Sequence[Rule], lr: Base, weight_decay: Base,
              default_inner: str | None) -> ParamPlan:
    """One parameter's row: its starting values (its inner optimizer's base lr and weight decay,
    ``frozen`` from ``requires_grad``) with the ``matching`` rules applied in order."""
    inner = next((rule.inner for rule in reversed(matching) if rule.inner is not None), default_inner)
    start_wd = _base(weight_decay, inner)
    value = {
        "lr": float(_base(lr, inner)),
        "weight_decay": None if start_wd is None else float(start_wd),
        "frozen": not info.param.requires_grad,
    }
    options: dict[str, Any] = {}
    for rule in matching:
        _apply(rule, info, value, options)
    matched = [rule.label for rule in matching]
    _check_value("lr", value["lr"], f"parameter {info.name!r} (rules: {matched})")
    if value["weight_decay"] is not None:
        _check_value("weight_decay", value["weight_decay"], f"parameter {info.name!r} (rules: {matched})")
    return ParamPlan(
        name=info.name,
        aliases=info.aliases,
        depth=info.depth,
        lr=value["lr"],
        weight_decay=value["weight_decay"],
        frozen=value["frozen"],
        rules=tuple(matched),
        shape=tuple(info.param.shape),
        depth_source=info.depth_source,
        options=tuple(sorted(options.items())),
        optimizer=inner,
    )


def _apply(rule: Rule, info: ParamInfo, value: dict[str, Any], options: dict[str, Any]) -> None:
    """Apply one matching rule to a parameter's running ``value`` (``lr``, ``weight_decay``,
    ``frozen``) and ``options``, in place (see the module docstring: replace, multiply, merge)."""
    if rule.lr is not None:
        value["lr"] = _resolve(rule.lr, info)
    if rule.lr_mult is not None:
        value["lr"] *= _resolve(rule.lr_mult, info)
    if rule.weight_decay is not None:
        value["weight_decay"] = _resolve(rule.weight_decay, info)
    if rule.wd_mult is not None:
        if value["weight_decay"] is None:
            raise ValueError(
                f"{rule.label} multiplies the weight decay of {info.name!r}, which is the inner "
                "optimizer's default: pass weight_decay= to the optimizer"
            )
        value["weight_decay"] *= _resolve(rule.wd_mult, info)
    if rule.frozen is not None:
        value["frozen"] = bool(rule.frozen)
    if rule.options:
        options.update(rule.options)


def _check_gamma(gamma: float) -> None:
    if not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
        raise ValueError(f"layer decay gamma must be in (0, 1], got {gamma!r}")


@named_factory("layer_decay", RULE_KINDS)
def layer_decay(gamma: float, **select) -> Rule:
    """Geometric layer decay: ``lr_mult = gamma ** (max_depth - depth)`` (BEiT, MAE, ConvNeXt).

    The head (top depth) keeps the base lr; each level below it gets ``gamma`` times the level
    above. Depths are :mod:`lrgroups.depth`'s, counted within the optimizer's ``select=``.

    What equals what (tested): on a timm model that defines ``group_matcher`` (with its classifier
    or without, ``num_classes=0``) every parameter's lr multiplier equals the ``lr_scale`` of timm's
    ``param_groups_layer_decay(model, layer_decay=gamma)``. On a timm model without one, timm falls
    back to ``auto_group_layers`` (12 tensors per layer in registration order, the
    ``pretrained_cfg["classifier"]`` names on top); lrgroups does not copy that fallback and orders
    layers by the forward pass, so the two need not agree there. On other models the convention is timm's
    and MAE's for ViTs (embeddings 0, block ``i`` at ``i + 1``, head on top; the final norm with the
    last block as in timm, where MAE puts it with the head) and ELECTRA's for BERT (pooler one level
    below the task head): see :mod:`lrgroups.depth`.

    Raises:
        ValueError: ``gamma`` outside (0, 1]; building a plan with it raises when every parameter has
            one depth (it would do nothing).

    Source: BEiT (Bao et al. 2022), timm ``optim/_param_groups.py``, MAE ``util/lr_decay.py``.

    Example:
        >>> layer_decay(0.75).label
        'layer_decay(0.75)'
    """
    _check_gamma(gamma)
    return Rule(
        **select,
        lr_mult=lambda info: gamma ** (info.max_depth - info.depth),
        name=f"layer_decay({gamma})",
        needs_depth=True,
    )


@named_factory("layer_decay_between", RULE_KINDS)
def layer_decay_between(first_lr: float, head_lr: float, **select) -> Rule:
    """Layer decay given by its end points: ``first_lr`` at depth 0, ``head_lr`` at the top depth,
    geometric in between: ``lr = first_lr * (head_lr / first_lr) ** (depth / max_depth)``.

    The same two numbers mean the same thing on a 14-level ViT and a 38-level ConvNeXt, unlike a
    per-level ``gamma``. ``first_lr=1e-5, head_lr=1e-3`` is the classic discriminative setting.

    Example:
        >>> layer_decay_between(1e-5, 1e-3).label
        'layer_decay_between(1e-05, 0.001)'
    """
    for what, value in (("first_lr", first_lr), ("head_lr", head_lr)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{what} must be finite and > 0, got {value!r}")
    ratio = head_lr / first_lr
    return Rule(
        **select,
        lr=lambda info: first_lr * ratio ** (info.depth / info.max_depth),
        name=f"layer_decay_between({first_lr}, {head_lr})",
        needs_depth=True,
    )


@named_factory("no_weight_decay", RULE_KINDS)
def no_weight_decay(**select) -> Rule:
    """Weight decay 0 for biases, norm weights, every tensor with ``ndim <= 1`` and the names the
    model lists in its ``no_weight_decay()`` (timm: ``pos_embed``, ``cls_token``, ...).

    Example:
        >>> no_weight_decay().label
        'no_weight_decay'
    """
    return Rule(
        **select,
        where=lambda info: info.ndim <= 1 or info.is_norm or info.name.endswith(".bias") or info.no_weight_decay,
        weight_decay=0.0,
        name="no_weight_decay",
        allow_empty=True,
    )


@named_factory("head", RULE_KINDS)
def head(**settings) -> Rule:
    """A rule for the parameters of every head (:attr:`ParamInfo.is_head`): timm's
    ``get_classifier()`` on timm models; otherwise every layer whose output reaches the model's
    output directly in a forward pass (DETR: the class head and the whole box MLP), or, when the
    model cannot be run, the classifier found by name (:func:`lrgroups.depth.find_head`). A tensor
    tied between the input embedding and the output layer is a head unless
    ``tied="embedding"`` (see :func:`lrgroups.depth.param_layers`).

    Example:
        >>> head(lr=1e-3).label
        'head'
    """
    return Rule(where=lambda info: info.is_head, name=settings.pop("name", "head"), **settings)
