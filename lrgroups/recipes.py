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
    ...     stop = tuning.after_validation(metric=1.0 / (epoch + 1))
    10 ['2.weight', '2.bias']
    20 ['0.weight', '0.bias']

Strategies: :func:`full`, :func:`linear_probe`, :func:`lp_ft`, :func:`layer_decay`,
:func:`discriminative`, :func:`layer_decay_between`, :func:`gradual_unfreezing`,
:func:`plateau_unfreezing`, :func:`surgical`. :data:`RECIPES` maps their names to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from . import rules as R
from .early_stopping import EarlyStopping, Plateau
from .optimizer import LayerwiseOptimizer
from .rules import Rule, Selector
from .unfreezing import ProgressiveUnfreezing

__all__ = [
    "Recipe",
    "FineTuning",
    "RECIPES",
    "full",
    "linear_probe",
    "lp_ft",
    "layer_decay",
    "discriminative",
    "layer_decay_between",
    "gradual_unfreezing",
    "plateau_unfreezing",
    "surgical",
]

_NOT_HEAD = Selector(where=lambda info: not info.is_head)
_HEAD = Selector(where=lambda info: info.is_head)


@dataclass
class FineTuning:
    """A built recipe: the optimizer plus the schedule and stopper a training loop drives.

    Call :meth:`after_step` after every ``optimizer.step()`` and :meth:`after_validation` after
    every evaluation (it returns True when training should stop); call :meth:`after_epoch` at the
    end of each epoch when the recipe counts epochs (``steps_per_epoch`` given to ``build`` does it
    for you inside :meth:`after_step`).
    """

    optimizer: LayerwiseOptimizer
    unfreezing: ProgressiveUnfreezing | None = None
    early_stopping: EarlyStopping | None = None
    steps_per_epoch: int | None = None
    steps: int = 0

    def after_step(self) -> list[str]:
        self.steps += 1
        unfrozen = self.unfreezing.step() if self.unfreezing is not None else []
        if self.steps_per_epoch and self.steps % self.steps_per_epoch == 0:
            unfrozen += self.after_epoch()
        return unfrozen

    def after_epoch(self) -> list[str]:
        return self.unfreezing.end_epoch() if self.unfreezing is not None else []

    def after_validation(self, metric: float) -> bool:
        if self.early_stopping is None:
            return False
        return self.early_stopping.step(metric, step=self.steps).stop

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "unfreezing": None if self.unfreezing is None else self.unfreezing.state_dict(),
            "early_stopping": None if self.early_stopping is None else self.early_stopping.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.unfreezing is not None:
            self.unfreezing.load_state_dict(state["unfreezing"])
        if self.early_stopping is not None:
            self.early_stopping.load_state_dict(state["early_stopping"])
        self.steps = state["steps"]


@dataclass(frozen=True)
class Recipe:
    """A fine-tuning strategy: rules, an optional unfreezing schedule and optional early stopping.

    ``unfreezing`` holds :class:`~lrgroups.ProgressiveUnfreezing` keyword arguments; a value that is
    a callable of ``total_steps`` is resolved by :meth:`build` (e.g. LP-FT's switch point).
    ``early_stopping`` holds :class:`~lrgroups.EarlyStopping` keyword arguments (mode ``"max"`` on
    a validation accuracy by default).
    """

    name: str
    rules: tuple[Rule, ...] = ()
    unfreezing: dict[str, Any] | None = None
    early_stopping: dict[str, Any] | None = None
    coarse: bool = False
    description: str = field(default="", compare=False)

    def build(
        self,
        model: nn.Module,
        optimizer: Callable[..., Any],
        *,
        lr: float,
        weight_decay: float = 0.0,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
        **optimizer_kwargs: Any,
    ) -> FineTuning:
        """Build the optimizer (and schedule, stopper) for ``model``; ``lr`` is the head's lr."""
        opt = LayerwiseOptimizer(
            model, optimizer, lr=lr, weight_decay=weight_decay, rules=self.rules, coarse=self.coarse,
            **optimizer_kwargs,
        )
        unfreezing = None
        if self.unfreezing is not None:
            kwargs = dict(self.unfreezing)
            for key, value in kwargs.items():
                if callable(value) and key in ("every_steps", "every_epochs"):
                    if total_steps is None:
                        raise ValueError(f"recipe {self.name!r} needs total_steps to place its stages")
                    kwargs[key] = value(total_steps)
            if "plateau" in kwargs:
                kwargs["plateau"] = Plateau(**kwargs["plateau"])
            unfreezing = ProgressiveUnfreezing(opt, **kwargs)
        stopper = None
        if self.early_stopping is not None:
            stopper = EarlyStopping(**{"mode": "max", **self.early_stopping}, model=model, unfreezing=unfreezing)
        return FineTuning(opt, unfreezing, stopper, steps_per_epoch)


def full() -> Recipe:
    """Full fine-tuning: every parameter at the base lr."""
    return Recipe("full", description="all parameters, one lr")


def linear_probe() -> Recipe:
    """Linear probe: only the head trains; the backbone is frozen (and its BatchNorm statistics)."""
    return Recipe("linear_probe", rules=(Rule(where=_NOT_HEAD.where, frozen=True, name="freeze backbone"),),
                  description="head only")


def lp_ft(probe_fraction: float = 0.5) -> Recipe:
    """LP-FT (Kumar et al., 2022): linear probe for ``probe_fraction`` of the steps, then fine-tune
    everything at the same lr."""
    if not 0 < probe_fraction < 1:
        raise ValueError(f"probe_fraction must be in (0, 1), got {probe_fraction}")
    return Recipe(
        "lp_ft",
        unfreezing={"stages": (_HEAD, _NOT_HEAD), "every_steps": lambda total: max(1, int(total * probe_fraction))},
        description=f"head only for {probe_fraction:.0%} of steps, then all",
    )


def layer_decay(gamma: float = 0.75) -> Recipe:
    """Layer-wise lr decay (BEiT, MAE, ConvNeXt): ``lr * gamma ** (max_depth - depth)``."""
    return Recipe(f"layer_decay_{gamma}", rules=(R.layer_decay(gamma),), description=f"gamma={gamma}")


def discriminative(features_lr_ratio: float = 0.01) -> Recipe:
    """The classic two-rate setting: the backbone at ``features_lr_ratio`` x the head's lr (1e-5
    features / 1e-3 head is ratio 0.01)."""
    return Recipe(
        "discriminative",
        rules=(Rule(where=_NOT_HEAD.where, lr_mult=features_lr_ratio, name=f"features x{features_lr_ratio}"),),
        description=f"features at {features_lr_ratio} x head lr",
    )


def layer_decay_between(first_ratio: float = 0.01) -> Recipe:
    """Layer decay by its end points: depth 0 at ``first_ratio`` x the head lr, geometric up to the
    head, whatever the model's number of depths."""
    return Recipe(
        "layer_decay_between",
        rules=(Rule(lr_mult=lambda info: first_ratio ** (1 - info.depth / info.max_depth), needs_depth=True,
                    name=f"layer_decay_between(x{first_ratio}, x1)"),),
        description=f"depth 0 at {first_ratio} x head lr, geometric",
    )


def gradual_unfreezing(discriminative_gamma: float | None = None, epochs_per_stage: int = 1) -> Recipe:
    """ULMFiT's gradual unfreezing: head first, then one more depth (deepest first) per epoch;
    with ``discriminative_gamma`` (ULMFiT: 1/2.6) also layer decay."""
    with_decay = discriminative_gamma is not None
    rules = (R.layer_decay(discriminative_gamma),) if with_decay else ()
    name = "gradual_unfreezing" + ("_discriminative" if with_decay else "")
    return Recipe(name, rules=rules, unfreezing={"every_epochs": epochs_per_stage},
                  description=f"a stage per {epochs_per_stage} epoch(s)")


def plateau_unfreezing(patience: int = 2, depths_per_stage: int = 2) -> Recipe:
    """Unfreeze the next stage (``depths_per_stage`` depths, deepest first) when validation accuracy
    has not improved for ``patience`` checks; once every stage is unfrozen, the same plateau stops
    training early and the best weights are restored."""
    return Recipe(
        "plateau_unfreezing",
        unfreezing={"depths_per_stage": depths_per_stage},
        early_stopping={"patience": patience, "restore_best": True},
        description=f"advance on a {patience}-check plateau, then early stop",
    )


def surgical(block: str = "first") -> Recipe:
    """Surgical fine-tuning (Lee et al., 2023): train only the first block (input-level shifts) or
    the last block (output-level shifts), plus the head (a new head must train)."""
    if block not in ("first", "last"):
        raise ValueError(f"block must be 'first' or 'last', got {block!r}")

    def frozen(info: R.ParamInfo) -> bool:
        if info.is_head:
            return False
        return info.depth > 1 if block == "first" else info.depth < info.max_depth - 1

    rule = Rule(where=frozen, frozen=True, name=f"freeze all but {block} block", allow_empty=True)
    return Recipe(f"surgical_{block}", rules=(rule,),
                  coarse=True, description=f"{block} stage + head")


RECIPES: dict[str, Callable[..., Recipe]] = {
    "full": full,
    "linear_probe": linear_probe,
    "lp_ft": lp_ft,
    "layer_decay": layer_decay,
    "discriminative": discriminative,
    "layer_decay_between": layer_decay_between,
    "gradual_unfreezing": gradual_unfreezing,
    "plateau_unfreezing": plateau_unfreezing,
    "surgical": surgical,
}
