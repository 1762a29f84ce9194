"""Named fine-tuning strategies from the literature, built from rules, unfreezing and early stopping.

Each recipe is a :class:`Recipe` (a frozen description); ``recipe.build(model, optimizer_cls, ...)``
returns a :class:`FineTuning` whose three hooks a training loop calls. Every recipe uses the same
base ``lr`` as the head's learning rate, so strategies compared at one ``lr`` differ only in what
they do below the head.

Example:
    >>> import torch, torch.nn as nn, lrgroups
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> tuning = lrgroups.recipes.gradual_unfreezing().build(model, torch.optim.AdamW, lr=1e-3, steps_per_epoch=10)
    >>> for epoch in range(3):
    ...     for step in range(10):
    ...         model(torch.randn(4, 4)).sum().backward()
    ...         tuning.optimizer.step(); tuning.optimizer.zero_grad()
    ...         unfrozen = tuning.after_step()
    ...         if unfrozen: print(tuning.steps, unfrozen)
    ...     decision = tuning.observe(1.0 / (epoch + 1))  # None here: this recipe has no stopper
    10 ['2.weight', '2.bias']
    20 ['0.weight', '0.bias']

Strategies: :func:`full`, :func:`linear_probe`, :func:`lp_ft`, :func:`l2_sp`, :func:`layer_decay`,
:func:`discriminative`, :func:`layer_decay_between`, :func:`gradual_unfreezing`,
:func:`plateau_unfreezing`, :func:`surgical`. :data:`RECIPES` maps their names to them. For
adapters: :func:`lora_plus` (LoRA+, not in :data:`RECIPES`: it needs a model with LoRA adapters).

Linear probes in closed form (for LP-FT, or on their own) live in :mod:`lrgroups.probe`
(:func:`~lrgroups.probe.head_features`, :func:`~lrgroups.probe.fit_linear_probe`,
:func:`~lrgroups.probe.set_linear_head`), re-exported here under the same names.

Ownership: a recipe freezes and thaws only what it froze itself; parameters that had
``requires_grad=False`` before ``build`` stay frozen through every stage.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping, Tuple, Union

import torch
import torch.nn as nn

from . import _deprecated
from . import rules as R
from .depth import find_head
from .driver import EarlyStoppingSpec, FineTuning, build_controllers, check_specs
from .l2sp import L2SP
from .lora import lora_plus as _lora_plus_rules
from .optimizer import LayerwiseOptimizer
from .probe import fit_linear_probe, head_features, set_linear_head
from .rules import (
    SELECTOR_FIELDS,
    FrozenDict,
    MadeByName,
    Rule,
    Selector,
    _check_keys,
    _decode,
    _encode,
    named_factory,
    rules_from_data,
)
from .unfreezing import ProgressiveUnfreezing, _selector, depth_stages

__all__ = [
    "Recipe",
    "FineTuning",
    "RECIPES",
    "full",
    "linear_probe",
    "lp_ft",
    "l2_sp",
    "layer_decay",
    "discriminative",
    "layer_decay_between",
    "gradual_unfreezing",
    "plateau_unfreezing",
    "surgical",
    "lora_plus",
    "fit_linear_probe",
    "set_linear_head",
    "head_features",
]

_NOT_HEAD = Selector(where=lambda info: not info.is_head)

Probe = Union[Tuple[torch.Tensor, torch.Tensor], Callable[[nn.Module], Tuple[torch.Tensor, torch.Tensor]], str, None]


def _fit_head(model: nn.Module, probe: Probe, C: float, recipe: str) -> None:
    if probe is None:
        raise ValueError(
            f"recipe {recipe!r} starts from a linear probe: pass build(..., probe=(features, labels)), "
            "probe=callable(model) -> (features, labels), or probe='fitted' if the head is already fitted"
        )
    if isinstance(probe, str):
        if probe == "fitted":
            return
        raise ValueError(f"probe must be (features, labels), a callable or 'fitted', got {probe!r}")
    head = find_head(model)
    if not isinstance(head, nn.Linear):
        raise TypeError(
            f"a closed-form probe needs an nn.Linear head, the model's head is {type(head).__name__}: "
            "fit it yourself and pass probe='fitted'"
        )
    features, labels = probe(model) if callable(probe) else probe
    set_linear_head(head, *fit_linear_probe(features, labels, C=C, num_classes=head.out_features))


# ---------------------------------------------------------------- built recipes
def _owned(stage: Selector, trainable: set[int]) -> Selector:
    """``stage`` restricted to parameters that were trainable before the recipe was built."""
    where = stage.where
    return replace(stage, where=lambda info: id(info.param) in trainable and (where is None or where(info)))


_Settings = FrozenDict  # the name pickles of recipes made before the shared type refer to


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenDict({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(item) for item in value)
    return value


@dataclass(frozen=True, eq=False)
class Recipe(MadeByName):
    """A fine-tuning strategy: rules, an optional unfreezing schedule, optional early stopping and
    an optional closed-form linear probe fitted before fine-tuning.

    ``unfreezing`` holds :class:`~lrgroups.ProgressiveUnfreezing` keyword arguments; ``every_steps``
    or ``every_epochs`` may be a callable ``(total_steps, num_stages) -> int`` that :meth:`build`
    resolves. The stages (default :func:`~lrgroups.depth_stages`) only ever cover parameters that
    were trainable when ``build`` was called. ``early_stopping`` holds :class:`~lrgroups.EarlyStopping`
    keyword arguments (mode ``"max"`` on a validation accuracy by default). ``probe_C`` set: ``build``
    first fits the head as a linear probe (:func:`fit_linear_probe` with ``C=probe_C``). ``l2sp``
    holds :class:`~lrgroups.L2SP` keyword arguments (``alpha``, ``beta``, ``anchor``); it replaces
    weight decay.

    A recipe is a value: hashable, and its settings are read-only (the dicts are kept as read-only
    copies, lists in them as tuples, ``rules`` as a tuple); :func:`dataclasses.replace` makes a new one.

    Raises:
        TypeError: changing a setting in place.
    """

    name: str
    rules: tuple[Rule, ...] = ()
    unfreezing: dict[str, Any] | None = None
    early_stopping: dict[str, Any] | None = None
    coarse: bool = False
    probe_C: float | None = None
    l2sp: dict[str, Any] | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        for name in ("unfreezing", "early_stopping", "l2sp"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _frozen(getattr(self, name)))

    def _values(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self) if f.compare)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data, what :meth:`from_dict` reads back to an equal recipe (and JSON,
        YAML, TOML hold). A recipe a named factory made (:data:`RECIPES`, :func:`lora_plus`) is
        ``{"recipe": name, **its arguments}`` (those at their defaults left out); any other its fields, its rules as
        :meth:`~lrgroups.Rule.to_dict` writes them and its stages as selector dicts.

        Raises:
            TypeError: the recipe holds a function that no factory name stands for (a ``where=``
                rule, a callable ``every_steps``): functions are not data.

        Example:
            >>> gradual_unfreezing(discriminative_gamma=0.5).to_dict()
            {'recipe': 'gradual_unfreezing', 'discriminative_gamma': 0.5}
            >>> Recipe.from_dict(_) == gradual_unfreezing(discriminative_gamma=0.5)
            True
        """
        kind = self.__dict__.get("_kind")
        if kind is not None:
            defaults = inspect.signature(_NAMED[kind[0]]).parameters
            return {"recipe": kind[0], **{key: _recipe_value(key, value, self.name) for key, value in kind[1].items()
                                          if value != defaults[key].default}}
        data: dict[str, Any] = {"name": self.name}
        if self.rules:
            data["rules"] = [rule.to_dict() for rule in self.rules]
        for key in ("unfreezing", "early_stopping", "l2sp"):
            value = getattr(self, key)
            if value is not None:
                data[key] = {k: _recipe_value(k, v, self.name) for k, v in value.items()}
        if self.coarse:
            data["coarse"] = True
        if self.probe_C is not None:
            data["probe_C"] = self.probe_C
        if self.description:
            data["description"] = self.description
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        """The recipe a plain mapping describes: ``{"recipe": "layer_decay", "gamma": 0.75}`` calls
        the named factory with the other keys; without ``recipe`` the keys are :class:`Recipe`'s fields
        (``rules`` a list of rule mappings, see :meth:`~lrgroups.Rule.from_dict`; stages in
        ``unfreezing`` as selector mappings or glob strings).

        Raises:
            ValueError: an unknown recipe or key (named, with the known ones), or what the factory
                or :meth:`~lrgroups.Rule.from_dict` refuses.
            TypeError: ``data`` is not a mapping.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"a recipe as data is a mapping, got {type(data).__name__}: {data!r}")
        data = dict(data)
        if "recipe" in data:
            name = data.pop("recipe")
            factory = _NAMED.get(name)
            if factory is None:
                raise ValueError(f"unknown recipe {name!r}; known: {', '.join(sorted(_NAMED))}")
            _check_keys(data, tuple(inspect.signature(factory).parameters), f"recipe {name!r}")
            return factory(**{key: Selector(**_selector_fields(value)) if isinstance(value, Mapping) else _decode(key, value)
                              for key, value in data.items()})
        known = tuple(f.name for f in fields(cls))
        _check_keys(data, known, "a recipe")
        if "name" not in data:
            raise ValueError("a recipe without a factory name ('recipe') needs its own 'name'")
        if "rules" in data:
            data["rules"] = tuple(rules_from_data(list(data["rules"])))
        if isinstance(data.get("unfreezing"), Mapping) and "stages" in data["unfreezing"]:
            unfreezing = dict(data["unfreezing"])
            unfreezing["stages"] = [stage if isinstance(stage, str) else Selector(**_selector_fields(stage))
                                    for stage in unfreezing["stages"]]
            data["unfreezing"] = unfreezing
        return cls(**data)

    def build(
        self,
        model: nn.Module,
        optimizer_cls: Callable[..., Any] | None = None,
        *,
        lr: float,
        weight_decay: float = 0.0,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
        probe: Probe = None,
        optimizer: Callable[..., Any] | None = None,
        **optimizer_kwargs: Any,
    ) -> FineTuning:
        """Build the optimizer (and schedule, stopper) for ``model``; ``lr`` is the head's lr.

        Args:
            model: the model, as for :class:`~lrgroups.LayerwiseOptimizer`.
            optimizer_cls: the inner optimizer's class or factory, as for :class:`~lrgroups.LayerwiseOptimizer`
                (``optimizer=`` is its deprecated name).
            lr: the head's learning rate (the base lr).
            weight_decay: the base weight decay.
            total_steps: the training budget in optimizer steps (needed by recipes that place stages
                within it).
            steps_per_epoch: makes :meth:`FineTuning.after_step` count epochs.
            probe: for recipes with a probe (:func:`lp_ft`): ``(features (N, D), labels (N,))`` of
                the head's inputs (see :func:`head_features`), a callable ``model -> (features,
                labels)``, or ``"fitted"`` when the head was already fitted.
            **optimizer_kwargs: passed to the inner optimizer, as for :class:`~lrgroups.LayerwiseOptimizer`.

        Returns:
            The :class:`~lrgroups.driver.FineTuning` driver of the run.

        Raises:
            ValueError: ``total_steps`` missing where needed, ``probe`` missing or given to a
                recipe without a probe, ``weight_decay`` given to a recipe with L2-SP, or anything
                :class:`~lrgroups.LayerwiseOptimizer` rejects.
        """
        optimizer_cls = _deprecated.keyword("lrgroups.recipes.Recipe.build", "optimizer", optimizer, "optimizer_cls",
                                            optimizer_cls, None)
        if optimizer_cls is None:
            raise TypeError(f"recipe {self.name!r}: build needs optimizer_cls (e.g. torch.optim.AdamW)")
        if self.probe_C is not None:
            _fit_head(model, probe, self.probe_C, self.name)
        elif probe is not None:
            raise ValueError(f"recipe {self.name!r} fits no probe; got probe={probe!r}")
        if self.l2sp is not None and weight_decay:
            raise ValueError(f"recipe {self.name!r} replaces weight decay by L2-SP: pass weight_decay=0")
        specs = self.specs()
        check_specs(*specs)
        opt = LayerwiseOptimizer(
            model, optimizer_cls, lr=lr, weight_decay=weight_decay, rules=self.rules, coarse=self.coarse,
            **optimizer_kwargs,
        )
        unfreezing, stopper = build_controllers(opt, model, *specs, total_steps=total_steps)
        l2sp = None if self.l2sp is None else L2SP(model, opt, **self.l2sp)
        return FineTuning(opt, unfreezing, stopper, steps_per_epoch, l2sp=l2sp)

    def specs(self) -> tuple["Recipe | None", EarlyStoppingSpec]:
        """The recipe's two specs for :mod:`lrgroups.driver`: the schedule's (the recipe itself, a
        :class:`~lrgroups.driver.ScheduleFactory`, or ``None`` without ``unfreezing``) and the
        stopper's (``early_stopping`` under the default ``mode="max"``, or ``None``). What
        :meth:`build` and :meth:`lrgroups.integrations.lightning.LayerwiseFinetuning.from_recipe` run.

        Returns:
            ``(unfreezing spec, early_stopping spec)``.

        Example:
            >>> unfreezing, early_stopping = plateau_unfreezing().specs()
            >>> unfreezing.name, early_stopping["mode"]
            ('plateau_unfreezing', 'max')
            >>> full().specs()
            (None, None)
        """
        stopping = None if self.early_stopping is None else {"mode": "max", **self.early_stopping}
        return (self if self.unfreezing is not None else None), stopping

    @property
    def has_plateau(self) -> bool:
        """Whether the recipe's schedule advances on a plateau of the metric (a ``plateau`` in
        ``unfreezing``; :class:`~lrgroups.driver.ScheduleFactory`)."""
        return self.unfreezing is not None and self.unfreezing.get("plateau") is not None

    def schedule(self, optimizer: LayerwiseOptimizer, total_steps: int | None = None) -> ProgressiveUnfreezing | None:
        """The recipe's unfreezing schedule over ``optimizer``, a :class:`~lrgroups.LayerwiseOptimizer`
        just built with the recipe's ``rules`` (what :meth:`build` does; a framework callback that
        receives the optimizer from the user calls it too). ``None`` when the recipe has no schedule
        or none of its stages selects a parameter. Stages cover only parameters that were trainable
        when ``optimizer`` was built (``optimizer.frozen_by(name) != "model"``).

        Raises:
            ValueError: ``total_steps`` missing for a recipe that places its stages within it.

        Example:
            >>> import torch, torch.nn as nn, lrgroups
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> recipe = lrgroups.recipes.gradual_unfreezing(unfreeze_fraction=0.5)
            >>> opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=recipe.rules)
            >>> recipe.schedule(opt, total_steps=20).every_steps
            5
        """
        if self.unfreezing is None:
            return None
        kwargs = dict(self.unfreezing)
        stages = kwargs.pop("stages", None)
        if stages is None:
            stages = depth_stages(max(row.depth for row in optimizer.plan), kwargs.pop("depths_per_stage", 1))
        everything = optimizer.select()
        trainable = {id(param) for name, param in everything.items() if optimizer.frozen_by(name) != "model"}
        stages = [_owned(_selector(stage), trainable) for stage in stages]  # a glob or a mapping is a stage too
        stages = [stage for stage in stages if optimizer.select(stage, missing="empty")]
        if not stages:
            return None
        for key in ("every_steps", "every_epochs"):
            if callable(kwargs.get(key)):
                if total_steps is None:
                    raise ValueError(f"recipe {self.name!r} needs total_steps to place its stages")
                kwargs[key] = kwargs[key](total_steps, len(stages))
        return ProgressiveUnfreezing(optimizer, stages, **kwargs)


def _selector_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    _check_keys(data, tuple(name for name in SELECTOR_FIELDS if name != "where"), "a stage")
    return {key: _decode(key, value) for key, value in data.items()}


def _recipe_value(key: str, value: Any, recipe: str) -> Any:
    """One value of a recipe's ``unfreezing`` / ``early_stopping`` / ``l2sp`` settings as plain data."""
    if isinstance(value, Selector):
        return {name: _encode(name, getattr(value, name), f"recipe {recipe!r}") for name in SELECTOR_FIELDS
                if getattr(value, name) is not None}
    if isinstance(value, (tuple, list)):
        return [_recipe_value(key, item, recipe) for item in value]
    if isinstance(value, Mapping):
        return {k: _recipe_value(k, v, recipe) for k, v in value.items()}
    return _encode(key, value, f"recipe {recipe!r}")


#: The named recipe factories (:data:`RECIPES` and :func:`lora_plus`), by the name a recipe's dict gives.
_NAMED: dict[str, Callable[..., Recipe]] = {}


def _named(factory: Callable[..., Recipe]) -> Callable[..., Recipe]:
    """Register a recipe factory by its name (:func:`lrgroups.rules.named_factory`): the recipes it makes
    remember their arguments, so :meth:`Recipe.to_dict` writes them back by name."""
    return named_factory(factory.__name__, _NAMED, _frozen)(factory)


# ---------------------------------------------------------------- the strategies
@_named
def full() -> Recipe:
    """Full fine-tuning: every parameter at the base lr."""
    return Recipe("full", description="all parameters, one lr")


@_named
def linear_probe() -> Recipe:
    """Linear probe: only the head trains; the backbone is frozen (and its BatchNorm statistics)."""
    return Recipe("linear_probe", rules=(Rule(where=_NOT_HEAD.where, frozen=True, name="freeze backbone"),),
                  description="head only")


@_named
def lp_ft(ft_lr_mult: float = 1.0, C: float = 1.0) -> Recipe:
    """LP-FT as published (Kumar et al., ICLR 2022, "Fine-Tuning can Distort Pretrained Features and
    Underperform Out-of-Distribution"): fit the head as a linear probe to convergence (closed form,
    :func:`fit_linear_probe` with ``C``), then fine-tune every parameter at ``ft_lr_mult`` x ``lr``.

    The authors' code (``AnanyaKumar/transfer_learning``) sweeps the fine-tuning stage over the
    same lrs as plain fine-tuning, so the default is ``ft_lr_mult=1``: compare LP-FT and FT on one lr
    grid, and choose ``C`` on validation data (a probe that interpolates its training set, cross-
    entropy near 0, leaves the fine-tuning stage almost no gradient).

    ``build`` needs ``probe=``: the probe's ``(features, labels)``, a callable ``model -> (features,
    labels)``, or ``"fitted"`` when you fitted the head yourself (a non-linear head, say).

    Raises:
        ValueError: ``ft_lr_mult`` or ``C`` not > 0 (and, at build, no ``probe``).

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> x, y = torch.randn(30, 4), torch.arange(30) % 3
        >>> tuning = lp_ft(ft_lr_mult=0.1).build(model, torch.optim.SGD, lr=1e-2,
        ...                                       probe=lambda m: (head_features(m, x), y))
        >>> [group["lr"] for group in tuning.optimizer.param_groups]
        [0.001]
    """
    if not (ft_lr_mult > 0 and C > 0):
        raise ValueError(f"ft_lr_mult and C must be > 0, got {ft_lr_mult!r} and {C!r}")
    return Recipe(
        "lp_ft",
        rules=(Rule(lr_mult=ft_lr_mult, name=f"fine-tune at x{ft_lr_mult}"),),
        probe_C=C,
        description=f"closed-form probe (C={C}), then all at {ft_lr_mult} x lr",
    )


@_named
def l2_sp(alpha: float = 0.1, beta: float = 0.01, anchor: str | Selector | None = None) -> Recipe:
    """L2-SP (Li, Grandvalet & Davoine, ICML 2018, "Explicit Inductive Bias for Transfer Learning
    with Convolutional Networks"): weight decay toward the pretrained weights (strength ``alpha``) for
    the backbone and toward zero (``beta``) for the head, decoupled (see :class:`~lrgroups.L2SP`;
    the defaults are the paper's alpha = 0.1, beta = 0.01). Build it with ``weight_decay=0``.

    Raises:
        ValueError: ``alpha`` or ``beta`` negative or not finite.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> tuning = l2_sp(alpha=0.1, beta=0.01).build(model, torch.optim.SGD, lr=0.1)
        >>> sorted(tuning.l2sp.anchors)
        ['0.bias', '0.weight']
    """
    alpha, beta = L2SP.check_strengths(alpha, beta)
    return Recipe("l2_sp", l2sp={"alpha": alpha, "beta": beta, "anchor": anchor},
                  description=f"decay toward the start (alpha={alpha}), head toward 0 (beta={beta})")


@_named
def layer_decay(gamma: float = 0.75) -> Recipe:
    """Layer-wise lr decay (BEiT, MAE, ConvNeXt): ``lr * gamma ** (max_depth - depth)``."""
    return Recipe(f"layer_decay_{gamma}", rules=(R.layer_decay(gamma),), description=f"gamma={gamma}")


@_named
def discriminative(features_lr_ratio: float = 0.01) -> Recipe:
    """The classic two-rate setting: the backbone at ``features_lr_ratio`` x the head's lr (1e-5
    features / 1e-3 head is ratio 0.01)."""
    return Recipe(
        "discriminative",
        rules=(Rule(where=_NOT_HEAD.where, lr_mult=features_lr_ratio, name=f"features x{features_lr_ratio}"),),
        description=f"features at {features_lr_ratio} x head lr",
    )


@_named
def layer_decay_between(first_ratio: float = 0.01) -> Recipe:
    """Layer decay by its end points: depth 0 at ``first_ratio`` x the head lr, geometric up to the
    head, whatever the model's number of depths."""
    return Recipe(
        "layer_decay_between",
        rules=(Rule(lr_mult=lambda info: first_ratio ** (1 - info.depth / info.max_depth), needs_depth=True,
                    name=f"layer_decay_between(x{first_ratio}, x1)"),),
        description=f"depth 0 at {first_ratio} x head lr, geometric",
    )


def _check_fraction(what: str, value: float | None) -> None:
    if value is not None and not 0 < value <= 1:
        raise ValueError(f"{what} must be in (0, 1], got {value!r}")


def _spread(fraction: float) -> Callable[[int, int], int]:
    """Steps per stage that unfreeze the last of ``num_stages`` stages at ``fraction`` of the budget."""
    return lambda total, num_stages: max(1, int(total * fraction) // max(1, num_stages - 1))


@_named
def gradual_unfreezing(discriminative_gamma: float | None = None, epochs_per_stage: int = 1,
                       unfreeze_fraction: float | None = None) -> Recipe:
    """ULMFiT's gradual unfreezing (Howard & Ruder 2018): head first, then one more depth (deepest
    first) per epoch; with ``discriminative_gamma`` (ULMFiT: 1/2.6) also layer decay. After its last
    stage everything trains until the end of the budget.

    ``unfreeze_fraction`` (needs ``build(total_steps=...)``): place the stages by steps instead, so
    that the last one is unfrozen at that fraction of the budget and the rest of the budget trains
    everything, however many depths the model has.

    Raises:
        ValueError: ``unfreeze_fraction`` outside (0, 1], ``epochs_per_stage < 1``.
    """
    _check_fraction("unfreeze_fraction", unfreeze_fraction)
    if epochs_per_stage < 1:
        raise ValueError(f"epochs_per_stage must be >= 1, got {epochs_per_stage}")
    with_decay = discriminative_gamma is not None
    rules = (R.layer_decay(discriminative_gamma),) if with_decay else ()
    name = "gradual_unfreezing" + ("_discriminative" if with_decay else "")
    if unfreeze_fraction is None:
        return Recipe(name, rules=rules, unfreezing={"every_epochs": epochs_per_stage},
                      description=f"a stage per {epochs_per_stage} epoch(s), then all")
    return Recipe(name, rules=rules, unfreezing={"every_steps": _spread(unfreeze_fraction)},
                  description=f"stages spread over {unfreeze_fraction:.0%} of steps, then all")


@_named
def plateau_unfreezing(patience: int = 2, depths_per_stage: int = 2,
                       fallback_fraction: float | None = 0.5) -> Recipe:
    """Unfreeze the next stage (``depths_per_stage`` depths, deepest first) when validation accuracy
    has not improved for ``patience`` checks; once every stage is unfrozen, the same plateau stops
    training early and the best weights are restored.

    ``fallback_fraction`` (default 0.5, needs ``build(total_steps=...)``): a stage also advances
    after ``fallback_fraction * total_steps / (stages - 1)`` steps without a plateau, so every stage
    is unfrozen by that fraction of the budget even when no plateau comes (short budgets); without
    it (``None``) the schedule waits for plateaus only and, in a budget too short for one, trains
    just the top stage (the head and the last block, which is surgical fine-tuning of the last
    block).

    Raises:
        ValueError: ``fallback_fraction`` outside (0, 1].
    """
    _check_fraction("fallback_fraction", fallback_fraction)
    unfreezing: dict[str, Any] = {"depths_per_stage": depths_per_stage}
    if fallback_fraction is not None:
        unfreezing["every_steps"] = _spread(fallback_fraction)
    return Recipe(
        "plateau_unfreezing",
        unfreezing=unfreezing,
        early_stopping={"patience": patience, "restore_best": True},
        description=f"advance on a {patience}-check plateau"
        + (f" or by {fallback_fraction:.0%} of steps" if fallback_fraction is not None else "") + ", then early stop",
    )


_BLOCKS = ("first", "middle", "last", "head")


@_named
def surgical(block: str = "first", train_head: bool = True) -> Recipe:
    """Surgical fine-tuning (Lee et al., ICLR 2023, "Surgical Fine-Tuning Improves Adaptation to
    Distribution Shifts"): train one block, the rest frozen. Blocks are stage-wise depths (the stem
    at 0, one per stage, the head on top): ``"first"`` is the stem and the first stage (input-level
    shifts: corruptions), ``"middle"`` the stages between the first and the last (feature-level
    shifts), ``"last"`` the last stage (output-level shifts; with any non-head parameters at the
    head's depth, such as a final norm), ``"head"`` the head alone.

    The model's head is used as it is: a new head for new classes, or the source head kept when the
    label spaces match. ``train_head=True`` (default) trains it along with the block (a new head
    must train); ``train_head=False`` freezes it (Lee et al.'s setting with the source head kept).

    Raises:
        ValueError: an unknown ``block``, or ``block="head"`` with ``train_head=False`` (nothing
            would train); at build, a model with no stage for the block (``"middle"`` needs at least
            three stages below the head).

    Example:
        >>> import torch, timm
        >>> model = timm.create_model("resnet10t", num_classes=3)
        >>> opt = surgical("middle", train_head=False).build(model, torch.optim.SGD, lr=0.1).optimizer
        >>> sorted({name.split(".")[0] for name in opt.explain().query("not frozen").name})
        ['layer2', 'layer3']
    """
    if block not in _BLOCKS:
        raise ValueError(f"block must be one of {_BLOCKS}, got {block!r}")
    if block == "head" and not train_head:
        raise ValueError("surgical('head', train_head=False) trains nothing")
    chosen = {
        "first": lambda info: info.depth <= 1,
        "middle": lambda info: 1 < info.depth < info.max_depth - 1,
        "last": lambda info: info.depth >= info.max_depth - 1,
        "head": lambda info: False,
    }[block]

    def frozen(info: R.ParamInfo) -> bool:
        return not train_head if info.is_head else not chosen(info)

    rules = [Rule(where=frozen, frozen=True, name=f"freeze all but the {block} block", allow_empty=True)]
    if block != "head":  # the block must exist
        rules.append(Rule(where=lambda info: not info.is_head and chosen(info), name=f"{block} block"))
    head = "" if block == "head" else (" + head" if train_head else ", head frozen")
    suffix = "" if train_head or block == "head" else "_frozen_head"
    return Recipe(f"surgical_{block}{suffix}", rules=tuple(rules), coarse=True, description=f"{block} block{head}")


@_named
def lora_plus(lr_ratio: float = 16.0, *, vectors: bool = False, embedding_lr: float | None = None) -> Recipe:
    """LoRA+ (Hayou, Ghosh & Yu, ICML 2024): every LoRA ``B`` matrix at ``lr_ratio`` times the lr of its
    ``A`` matrix; ``lr`` at build is the ``A`` matrices' (and every other parameter's) lr. The rules are
    :func:`lrgroups.lora.lora_plus`'s (its arguments, what they mean and peft parity); to compose with
    layer decay, give the rules directly: ``rules=[layer_decay(0.8), *lora_plus(16)]``.

    Raises:
        ValueError: ``lr_ratio`` or ``embedding_lr`` not finite and > 0.
        lrgroups.NoMatchError: at build, the model has no LoRA ``B`` matrix.

    Example:
        >>> import peft, torch, torch.nn as nn
        >>> model = peft.get_peft_model(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
        ...                             peft.LoraConfig(target_modules=["0"], r=2))
        >>> lrs = lora_plus(16).build(model, torch.optim.AdamW, lr=1e-4).optimizer.explain().set_index("name")["lr"]
        >>> float(lrs["0.lora_A.default.weight"]), float(lrs["0.lora_B.default.weight"])
        (0.0001, 0.0016)
    """
    return Recipe(f"lora_plus_{lr_ratio}", rules=tuple(_lora_plus_rules(lr_ratio, vectors=vectors, embedding_lr=embedding_lr)),
                  description=f"LoRA B at {lr_ratio} x A's lr")


RECIPES: dict[str, Callable[..., Recipe]] = {
    "full": full,
    "linear_probe": linear_probe,
    "lp_ft": lp_ft,
    "l2_sp": l2_sp,
    "layer_decay": layer_decay,
    "discriminative": discriminative,
    "layer_decay_between": layer_decay_between,
    "gradual_unfreezing": gradual_unfreezing,
    "plateau_unfreezing": plateau_unfreezing,
    "surgical": surgical,
}
