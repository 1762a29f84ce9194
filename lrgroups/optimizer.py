"""LayerwiseOptimizer: applies a plan of per-parameter settings to any torch optimizer.

Example:
    >>> import torch, torch.nn as nn
    >>> import lrgroups
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=0.05,
    ...                                   rules=[lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()])
    >>> len(opt.param_groups), isinstance(opt, torch.optim.Optimizer)
    (4, True)
    >>> model(torch.randn(3, 4)).sum().backward(); opt.step(); opt.zero_grad()

Group layout: one param group per distinct ``(lr, weight_decay)`` the rules produce for *any*
parameter, frozen ones included, created up front. Frozen parameters sit in no group's ``params``
list; unfreezing inserts a parameter into the group its rules gave it, at its position in the
plan. The number of groups never changes, so every LR scheduler (which keeps per-group lists)
goes on scheduling every group, and a hot-added parameter follows exactly the lr trajectory it
would have had if it had been in the optimizer since step 0.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections import OrderedDict
from dataclasses import fields, replace
from typing import Any, Callable, Sequence

import pandas as pd
import torch
import torch.nn as nn

from .depth import unwrap_model
from .rules import ParamPlan, Rule, Selector, _no_match_message, describe_nonempty, plan_params

__all__ = ["LayerwiseOptimizer", "CheckpointMismatchError"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
_FORMAT = "lrgroups.LayerwiseOptimizer/1"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit this model and rule set; the message lists every difference."""


def _build_inner(optimizer: OptimizerFactory, groups: list[dict], lr: float, kwargs: dict) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"pass the optimizer class or a factory, not an instance: LayerwiseOptimizer(model, "
            f"{type(optimizer).__name__}, lr=...) (it builds the param groups itself)"
        )
    if not callable(optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer subclass or a callable, got {optimizer!r}")
    name = getattr(optimizer, "__name__", repr(optimizer))
    try:
        inner = optimizer(groups, lr=lr, **kwargs)
    except Exception as error:
        raise ValueError(f"could not build {name} from {len(groups)} param groups with {kwargs}: {error}") from error
    if not isinstance(inner, torch.optim.Optimizer):
        raise TypeError(f"{name} returned {type(inner).__name__}, not a torch.optim.Optimizer")
    return inner


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Wraps any torch optimizer; every parameter gets the lr, weight decay and frozen state that
    ordered declarative rules assign (see :mod:`lrgroups.rules` for how rules compose).

    It *is* a ``torch.optim.Optimizer``: ``param_groups``, ``state``, ``step``, ``zero_grad`` are
    the inner optimizer's, so torch and timm LR schedulers, ``torch.amp.GradScaler`` and training
    frameworks accept it.

    Args:
        model: any ``nn.Module``; DDP/DataParallel/``torch.compile`` wrappers are looked through
            (names and depths are the bare model's).
        optimizer: a ``torch.optim.Optimizer`` subclass (torch's, timm.optim's, third-party) or a
            callable ``(param_groups, **kwargs) -> Optimizer``.
        lr: base learning rate (the head's lr under layer decay).
        weight_decay: base weight decay.
        rules: ordered :class:`~lrgroups.Rule` s.
        coarse: stage-wise depths (timm ``group_matcher(coarse=True)``) instead of block-wise.
        example_input / tied: how depths follow the data flow and where a tied embedding/output
            tensor goes (see :func:`lrgroups.depth.param_layers`).
        norm_stats: what a frozen normalisation layer does with its running statistics: ``"freeze"``
            (default: it runs in eval mode while all its affine parameters are frozen, so a frozen
            block does not change at all) or ``"update"`` (BatchNorm statistics follow
            ``model.train()`` as usual).
        **optimizer_kwargs: passed to the optimizer (betas, eps, momentum, foreach, fused, ...).

    Example:
        >>> import torch, torchvision, lrgroups
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> opt = lrgroups.LayerwiseOptimizer(
        ...     model, torch.optim.Adam, lr=1e-5,
        ...     rules=[lrgroups.Rule("fc.*", lr=1e-3), lrgroups.Rule("layer4.*", frozen=True)])
        >>> [round(g["lr"], 6) for g in opt.param_groups], len(opt.param_groups[0]["params"])
        ([1e-05, 0.001], 45)
        >>> opt.unfreeze("layer4.*")[:2]
        ['layer4.0.conv1.weight', 'layer4.0.bn1.weight']
        >>> len(opt.param_groups[0]["params"])
        60
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        *,
        lr: float,
        weight_decay: float = 0.0,
        rules: Sequence[Rule] = (),
        coarse: bool = False,
        norm_stats: str = "freeze",
        example_input: Any = None,
        tied: str | None = None,
        **optimizer_kwargs: Any,
    ) -> None:
        if norm_stats not in ("freeze", "update"):
            raise ValueError(f"norm_stats must be 'freeze' or 'update', got {norm_stats!r}")
        infos = describe_nonempty(model, coarse, example_input=example_input, tied=tied)
        rows = plan_params(infos, lr=lr, weight_decay=weight_decay, rules=rules)
        settings = list(OrderedDict.fromkeys(row.settings for row in rows))
        group_of = [settings.index(row.settings) for row in rows]
        members: list[list[int]] = [[] for _ in settings]
        for index, row in enumerate(rows):
            if not row.frozen:
                members[group_of[index]].append(index)
        groups = [
            {"params": [infos[i].param for i in members[g]], "lr": s_lr, "weight_decay": s_wd}
            for g, (s_lr, s_wd) in enumerate(settings)
        ]
        inner = _build_inner(optimizer, groups, float(lr), optimizer_kwargs)
        if "weight_decay" not in inner.defaults and any(row.weight_decay for row in rows):
            raise ValueError(f"{type(inner).__name__} has no weight_decay option but the rules set weight decay")

        self._inner = inner
        self._model = model
        self._rows = rows
        self._infos = infos
        self._group_of = group_of
        self._group_settings = settings
        self._members = members
        self._frozen = [row.frozen for row in rows]
        self._stash: dict[int, dict] = {}
        self._base_lr = float(lr)
        self._index = {name: i for i, row in enumerate(rows) for name in (row.name, *row.aliases)}
        self._init_optimizer_hooks()
        self._ratio_check = self.register_step_pre_hook(self._warn_if_ratios_flattened)
        for index, info in enumerate(infos):
            info.param.requires_grad_(not rows[index].frozen)
            if rows[index].frozen:
                info.param.grad = None
        self._norm_hooks = []
        if norm_stats == "freeze":
            self._install_norm_hooks()

    def _init_optimizer_hooks(self) -> None:
        """What ``Optimizer.__init__`` sets up besides the groups (hooks and step profiling)."""
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self._warned_capturable_if_run_uncaptured = True

    # The inner optimizer's state is the state: these are views, not copies.
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self._inner.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._inner.param_groups = value

    @property
    def state(self):
        return self._inner.state

    @state.setter
    def state(self, value) -> None:
        self._inner.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self._inner.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self._inner.defaults = value

    @property
    def inner(self) -> torch.optim.Optimizer:
        """The wrapped optimizer."""
        return self._inner

    @property
    def _step_supports_amp_scaling(self) -> bool:
        return getattr(self._inner, "_step_supports_amp_scaling", False)

    def step(self, closure: Callable[[], float] | None = None):
        """One step of the inner optimizer (frozen parameters are in no group: untouched).

        Step hooks registered on this wrapper run here; torch's profiling wrapper is left to the
        inner optimizer's ``step`` so that it is paid once per step, not twice.
        """
        if self._optimizer_step_pre_hooks:
            args: tuple = (closure,)
            kwargs: dict = {}
            for hook in list(self._optimizer_step_pre_hooks.values()):
                result = hook(self, args, kwargs)
                if result is not None:
                    args, kwargs = result
            closure = kwargs.get("closure", args[0] if args else None)
        # GradScaler sets these on the optimizer it steps (for fused optimizers) and deletes them after.
        forwarded = [attr for attr in ("grad_scale", "found_inf") if attr in self.__dict__]
        for attr in forwarded:
            setattr(self._inner, attr, self.__dict__[attr])
        try:
            loss = self._inner.step(closure)
        finally:
            for attr in forwarded:
                delattr(self._inner, attr)
        if self._optimizer_step_post_hooks:
            for hook in list(self._optimizer_step_post_hooks.values()):
                hook(self, (closure,), {})
        return loss

    step.hooked = True  # tells Optimizer._patch_step_function not to wrap it

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._inner.zero_grad(set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise TypeError(
            "LayerwiseOptimizer builds its groups from rules and never adds groups (that would break "
            "attached LR schedulers): include the parameters in the model and use opt.unfreeze(...)"
        )

    # ---------------------------------------------------------------- plan views
    @property
    def plan(self) -> list[ParamPlan]:
        """The rows the rules produced, with ``frozen`` as it is now."""
        return [row if row.frozen == frozen else replace(row, frozen=frozen) for row, frozen in zip(self._rows, self._frozen)]

    def explain(self) -> pd.DataFrame:
        """One row per parameter: ``name, depth, lr, weight_decay, frozen, group, rules, aliases,
        shape, numel``; ``group`` indexes ``param_groups`` (-1 when frozen); ``lr`` is the planned
        lr (a scheduler scales the group's current lr)."""
        return pd.DataFrame(
            [
                {
                    "name": row.name,
                    "depth": row.depth,
                    "lr": row.lr,
                    "weight_decay": row.weight_decay,
                    "frozen": row.frozen,
                    "group": -1 if row.frozen else group,
                    "rules": ", ".join(row.rules),
                    "aliases": ", ".join(row.aliases),
                    "shape": row.shape,
                    "numel": math.prod(row.shape),
                }
                for row, group in zip(self.plan, self._group_of)
            ]
        )

    def summary(self) -> pd.DataFrame:
        """One row per param group: its settings, depth range, and how many tensors/elements are
        trainable and frozen."""
        table = self.explain()
        table["group"] = self._group_of
        table["trainable_numel"] = table["numel"].where(~table["frozen"], 0)
        return table.groupby("group").agg(
            lr=("lr", "first"),
            weight_decay=("weight_decay", "first"),
            depth_min=("depth", "min"),
            depth_max=("depth", "max"),
            tensors=("name", "size"),
            frozen_tensors=("frozen", "sum"),
            trainable_numel=("trainable_numel", "sum"),
        )

    def __repr__(self) -> str:
        frozen = sum(self._frozen)
        return (
            f"LayerwiseOptimizer({type(self._inner).__name__}, {len(self._rows)} parameters "
            f"({frozen} frozen), {len(self.param_groups)} groups)"
        )

    def per_group(self, value: float) -> list[float]:
        """``value`` scaled by each group's planned lr ratio to the base lr.

        Schedulers that take one peak lr for all groups (``OneCycleLR``, ``CyclicLR``) would flatten
        the rules' ratios; pass them ``max_lr=opt.per_group(peak)`` instead.
        """
        if self._base_lr == 0:
            raise ValueError("per_group needs a non-zero base lr")
        return [value * group_lr / self._base_lr for group_lr, _ in self._group_settings]

    def _warn_if_ratios_flattened(self, optimizer, args, kwargs) -> None:
        """Step pre-hook for the first step only (it removes itself); registered first, so it sees
        the lrs the schedulers set before any other hook changes them."""
        self._ratio_check.remove()
        planned = [group_lr for group_lr, _ in self._group_settings]
        current = [group["lr"] for group in self.param_groups]
        if isinstance(current[0], torch.Tensor):
            current = [float(c) for c in current]
        scale = [c / p for c, p in zip(current, planned) if p > 0]
        if scale and not all(math.isclose(s, scale[0], rel_tol=1e-6, abs_tol=1e-12) for s in scale):
            warnings.warn(
                "the param groups' lr no longer keep the ratios the rules gave them (planned "
                f"{planned}, now {current}): a scheduler with one max_lr/base_lr for all groups "
                "(OneCycleLR, CyclicLR) flattens them; pass max_lr=opt.per_group(peak_lr)",
                stacklevel=4,
            )

    # ---------------------------------------------------------------- freezing
    def _select(self, pattern: str | Selector | None, select: dict) -> list[int]:
        if isinstance(pattern, Selector) and select:
            raise TypeError("give a Selector or selector fields, not both")
        selector = pattern if isinstance(pattern, Selector) else Selector(pattern=pattern, **select)
        chosen = [i for i, info in enumerate(self._infos) if selector.matches(info)]
        if not chosen:
            rule = Rule(**{f.name: getattr(selector, f.name) for f in fields(Selector)})
            raise ValueError(_no_match_message(rule, [row.name for row in self._rows]))
        return chosen

    def freeze(self, pattern: str | Selector | None = None, *, keep_state: bool = False, **select: Any) -> list[str]:
        """Freeze the selected parameters (a glob, a :class:`~lrgroups.Selector`, or its fields as
        keywords); returns the names that changed.

        A frozen parameter leaves its group's ``params`` list, gets ``requires_grad=False`` and
        ``.grad = None``: no step, momentum or weight decay touches it. Its optimizer state is
        dropped (``keep_state=False``, the default: a later unfreeze starts afresh, as a newly added
        parameter would) or kept aside and restored on unfreeze (``keep_state=True``; it is carried
        by ``state_dict()``).
        """
        return [self._rows[i].name for i in self._select(pattern, select) if self._freeze_one(i, keep_state)]

    def unfreeze(self, pattern: str | Selector | None = None, **select: Any) -> list[str]:
        """Unfreeze the selected parameters: each is hot-added to the group its rules gave it, at
        its plan position (so group contents equal those of a run that never froze it); returns the
        names that changed."""
        return [self._rows[i].name for i in self._select(pattern, select) if self._unfreeze_one(i)]

    def _freeze_one(self, index: int, keep_state: bool) -> bool:
        if self._frozen[index]:
            return False
        param = self._infos[index].param
        group = self._group_of[index]
        position = self._members[group].index(index)
        del self._members[group][position]
        del self.param_groups[group]["params"][position]
        state = self.state.pop(param, None)
        if keep_state and state:
            self._stash[index] = state
        param.requires_grad_(False)
        param.grad = None
        self._frozen[index] = True
        return True

    def _unfreeze_one(self, index: int) -> bool:
        if not self._frozen[index]:
            return False
        param = self._infos[index].param
        group = self._group_of[index]
        position = bisect.bisect_left(self._members[group], index)
        self._members[group].insert(position, index)
        self.param_groups[group]["params"].insert(position, param)
        if index in self._stash:
            self.state[param] = self._stash.pop(index)
        param.requires_grad_(True)
        self._frozen[index] = False
        return True

    def group_of(self, name: str) -> int:
        """Index into ``param_groups`` of the group the rules gave ``name`` (frozen or not)."""
        return self._group_of[self._index[name]]

    def is_frozen(self, name: str) -> bool:
        """Whether the parameter called ``name`` (or an alias of it) is frozen now."""
        return self._frozen[self._index[name]]

    def _install_norm_hooks(self) -> None:
        by_module: dict[int, list[int]] = {}
        for index, info in enumerate(self._infos):
            if info.is_norm and isinstance(info.module, nn.modules.batchnorm._NormBase):
                by_module.setdefault(id(info.module), []).append(index)
        modules = {id(info.module): info.module for info in self._infos}
        for module_id, indices in by_module.items():
            hook = _FrozenNormHook(self._frozen, indices)
            self._norm_hooks.append(modules[module_id].register_forward_pre_hook(hook.before))
            self._norm_hooks.append(modules[module_id].register_forward_hook(hook.after))

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict plus the layout by parameter name and the frozen set.

        Loads with ``torch.load(..., weights_only=True)``.
        """
        return {
            "format": _FORMAT,
            "names": [row.name for row in self._rows],
            "groups": list(self._group_of),
            "settings": self._settings(),
            "frozen": [row.name for row, frozen in zip(self._rows, self._frozen) if frozen],
            "stash": {self._rows[i].name: state for i, state in self._stash.items()},
            "inner": self._inner.state_dict(),
        }

    def _mismatches(self, checkpoint: dict[str, Any]) -> list[str]:
        if checkpoint.get("format") != _FORMAT:
            return [f"not a LayerwiseOptimizer checkpoint (format {checkpoint.get('format')!r}, expected {_FORMAT!r})"]
        problems = []
        names = [row.name for row in self._rows]
        saved_names, own_names = set(checkpoint["names"]), set(names)
        missing = [n for n in names if n not in saved_names]
        unexpected = [n for n in checkpoint["names"] if n not in own_names]
        if missing:
            problems.append(f"parameters missing from the checkpoint: {', '.join(missing[:10])}")
        if unexpected:
            problems.append(f"parameters in the checkpoint but not in the model: {', '.join(unexpected[:10])}")
        if missing or unexpected:
            return problems
        if checkpoint["names"] != names:
            problems.append("parameters are in a different order")
        for name, ours, theirs in zip(names, self._settings(), checkpoint["settings"]):
            if list(ours) != list(theirs):
                problems.append(f"{name}: rules give lr, weight_decay = {ours}, checkpoint has {theirs}")
        if checkpoint["groups"] != self._group_of:
            problems.append("group layout differs (the rules produce different groups)")
        if problems:
            return problems[:20]
        frozen = set(checkpoint["frozen"])
        counts = [0] * len(self.param_groups)
        for index, row in enumerate(self._rows):
            counts[self._group_of[index]] += row.name not in frozen
        saved = [len(g["params"]) for g in checkpoint["inner"]["param_groups"]]
        if saved != counts:
            problems.append(f"inner optimizer groups hold {saved} parameters, the frozen set implies {counts}")
        return problems

    def _settings(self) -> list[list[float]]:
        return [[row.lr, row.weight_decay] for row in self._rows]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore layout, frozen set and inner state. A checkpoint from another model or rule set
        raises :class:`CheckpointMismatchError` listing the differences; nothing is changed then."""
        problems = self._mismatches(state_dict)
        if problems:
            raise CheckpointMismatchError("checkpoint does not fit this model/rules:\n  " + "\n  ".join(problems))
        frozen = set(state_dict["frozen"])
        self._stash.clear()
        for index, row in enumerate(self._rows):
            if row.name in frozen:
                self._freeze_one(index, keep_state=False)
            else:
                self._unfreeze_one(index)
        self._inner.load_state_dict(state_dict["inner"])
        self._stash = {
            self._index[name]: {
                key: value.to(self._infos[self._index[name]].param.device)
                if isinstance(value, torch.Tensor) and key != "step"
                else value
                for key, value in state.items()
            }
            for name, state in state_dict["stash"].items()
        }
        self._ratio_check.remove()


class _FrozenNormHook:
    """Forward pre-hook and hook: a norm layer whose affine parameters are all frozen runs this
    forward in eval mode; its ``training`` flag is put back afterwards."""

    def __init__(self, frozen: list[bool], indices: list[int]) -> None:
        self.frozen = frozen
        self.indices = indices
        self.switched = False

    def before(self, module: nn.Module, args: tuple) -> None:
        if module.training and all(self.frozen[i] for i in self.indices):
            module.training = False
            self.switched = True

    def after(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.switched:
            module.training = True
            self.switched = False

