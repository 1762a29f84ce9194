"""LayerwiseOptimizer: applies a plan of per-parameter settings to one or several torch optimizers.

Example:
    >>> import torch, torch.nn as nn
    >>> import lrgroups
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=0.05,
    ...                                   rules=[lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()])
    >>> len(opt.param_groups), isinstance(opt, torch.optim.Optimizer)
    (4, True)
    >>> model(torch.randn(3, 4)).sum().backward(); opt.step(); opt.zero_grad()

Group layout: one param group per distinct settings (inner optimizer, lr, weight decay, options)
the rules produce for *any* parameter, frozen ones included, created up front. Frozen parameters
sit in no group's ``params`` list; unfreezing inserts a parameter into the group its rules gave
it, at its position in the plan. The number of groups never changes, so every LR scheduler (which
keeps per-group lists) goes on scheduling every group, and a hot-added parameter follows exactly
the lr trajectory it would have had if it had been in the optimizer since step 0.

One source of truth: one slot per parameter (its plan row, group and who froze it); the groups'
``params``/``param_names`` lists are derived from the slots. The wrapper is built by
``torch.optim.Optimizer.__init__`` over the inner optimizers' own group dicts, and the inner
optimizers share its ``state``: hooks, pickling, ``deepcopy``, profiling and ``state_dict`` are
torch's.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from . import _deprecated, checkpoint
from ._util import first_names, remove_all
from .checkpoint import CheckpointMismatchError, cast_like_torch
from .depth import ParamInfo, describe_nonempty, renumber, unwrap_model
from .groups import MODEL_OWNER, RULE_OWNER, USER_OWNER, Slot, group_names, group_settings
from .inner import (
    DERIVED_STATE,
    ForwardedToInner,
    Inner,
    OptimizerSpec,
    base_value,
    build_inners,
    check_differentiable,
    check_weight_decay,
    computes_own_lr,
    factory_name,
    group_dict,
    specs,
    state_carriers,
    unprofiled_step,
)
from .norms import FrozenNormStats, OwnedNormFreeze, norm_units, retire_all
from .rules import NoMatchError, ParamPlan, Rule, Selector, no_match_message, plan_params

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LayerwiseOptimizer", "CheckpointMismatchError"]

_NORM_POLICIES = ("freeze", "freeze_all", "update")


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Wraps any torch optimizer (or several); every parameter gets the lr, weight decay, options,
    inner optimizer and frozen state that ordered declarative rules assign (see
    :mod:`lrgroups.rules` for how rules compose).

    It *is* a ``torch.optim.Optimizer``, built by ``Optimizer.__init__``: ``param_groups`` is the
    concatenation of the inner optimizers' groups (the same dicts) and ``state`` is shared with
    them, so torch and timm LR schedulers, ``torch.amp.GradScaler`` (fused path included),
    ``torch.distributed.checkpoint`` and training frameworks take it as they are. Step hooks run
    in torch's order and receive the wrapper.

    Every param group carries a short, unique ASCII ``name`` by role and depth (``"depth03"``,
    ``"depth03-nowd"``, ``"head"``: :func:`lrgroups.groups.group_names`), which loggers show (Lightning's ``LearningRateMonitor``; the HF callback in
    :mod:`lrgroups.integrations.transformers`).

    Defaults are the inner optimizer's: what is not passed (``lr``, ``weight_decay``, ``betas``, ...)
    is the inner optimizer's own default; a tensor ``lr`` stays a tensor; every parameter, frozen
    ones included, goes through the inner optimizer's constructor (its validation) when the wrapper
    is built.

    Args:
        model: any ``nn.Module``; DDP/DataParallel/``torch.compile`` wrappers are looked through
            (names and depths are the bare model's).
        optimizer_cls: a ``torch.optim.Optimizer`` subclass (torch's, timm.optim's, third-party) or a
            callable ``(param_groups, **kwargs) -> Optimizer``; or a dict of them by name, values
            optionally ``(class, {kwargs})``: rules route parameters with ``Rule(..., inner=name)``,
            the first takes the rest.
        lr: base learning rate (the head's lr under layer decay); default: the inner optimizer's.
        weight_decay: base weight decay; default: the inner optimizer's.
        rules: ordered :class:`~lrgroups.Rule` s.
        select: only these parameters (a glob or a :class:`~lrgroups.Selector`) are optimized;
            the wrapper never touches the others (their ``requires_grad`` included), so two
            wrappers on disjoint parts of one model both train. Depths count within the selection
            (:func:`lrgroups.depth.renumber`: 0..max over the selected parameters, heads on top);
            a ``depth=`` in ``select`` itself reads the whole model's depths, rules and stages the
            renumbered ones.
        coarse: stage-wise depths (timm ``group_matcher(coarse=True)``) instead of block-wise.
        example_input: how depths follow the data flow (see :func:`lrgroups.depth.param_layers`).
        tied: where a tied embedding/output tensor goes (see :func:`lrgroups.depth.param_layers`).
        norm_stats: what a frozen normalisation layer does with its running statistics:
            ``"freeze"`` (default: a norm layer this optimizer froze — by a rule, :meth:`freeze` or a
            schedule — runs in eval mode while it is frozen, so a frozen block does not change at
            all; one frozen before the optimizer was built, by the user or an adapter library such
            as peft, keeps the mode ``model.train()``/``eval()`` gives it, as under a plain torch
            optimizer), ``"freeze_all"`` (both run in eval mode) or ``"update"`` (BatchNorm
            statistics always follow ``model.train()``). A norm
            layer counts as frozen when all its parameters are; one without parameters follows
            its block (the nearest enclosing non-container module with parameters, else the layer
            registered just before it). The hooks are removed by :meth:`close` (or leaving a
            ``with`` block) and when the optimizer is garbage-collected; the newest optimizer over
            a norm layer decides its mode, and closing it hands the decision back to the one before;
            a ``copy.deepcopy`` of the model carries no active hook.
        optimizer: deprecated name of ``optimizer_cls`` (it warns).
        **optimizer_kwargs: passed to the (single) optimizer (betas, eps, momentum, foreach, ...).

    Raises:
        ValueError: bad lr/weight decay, a rule matching nothing, an optimizer that cannot be built
            from the groups (the inner constructor's message), weight decay for an optimizer
            without it. Nothing (``requires_grad`` included) is changed then.
        TypeError: no ``optimizer_cls``, or an optimizer instance instead of a class or factory.

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

    grad_scale = ForwardedToInner()
    found_inf = ForwardedToInner()

    def __init__(
        self,
        model: nn.Module,
        optimizer_cls: OptimizerSpec | Mapping[str, OptimizerSpec] | None = None,
        *,
        lr: float | torch.Tensor | None = None,
        weight_decay: float | None = None,
        rules: Sequence[Rule] = (),
        select: str | Selector | None = None,
        coarse: bool = False,
        norm_stats: str = "freeze",
        example_input: Any = None,
        tied: str | None = None,
        optimizer: OptimizerSpec | Mapping[str, OptimizerSpec] | None = None,
        **optimizer_kwargs: Any,
    ) -> None:
        optimizer_cls = _deprecated.keyword("lrgroups.optimizer.LayerwiseOptimizer.__init__", "optimizer", optimizer, "optimizer_cls",
                                            optimizer_cls, None)
        _check_arguments(model, optimizer_cls, norm_stats, lr)
        wanted = specs(optimizer_cls, optimizer_kwargs)
        check_differentiable(wanted)
        infos = _managed(model, select, coarse, example_input, tied)
        base_lr = {name: base_value("lr", lr, f, kw, required=False) for name, (f, kw) in wanted.items()}
        base_wd = {name: base_value("weight_decay", weight_decay, f, kw, required=False) for name, (f, kw) in wanted.items()}
        check_weight_decay(wanted, weight_decay)
        rows = _plan_rows(infos, wanted, lr, base_lr, base_wd, rules)

        # Groups: distinct settings in order of first appearance, grouped by inner optimizer.
        order, members = group_settings(rows, list(wanted))
        groups = [group_dict([infos[i].param for i in indices], setting, base_lr[setting[0]], base_wd[setting[0]])
                  for setting, indices in zip(order, members, strict=True)]
        inners = build_inners(wanted, order, groups, lr, weight_decay)
        self._adopt(inners)
        for group, name in zip(self.param_groups, group_names(rows, order, self.param_groups), strict=True):
            group["name"] = name

        group_index = {setting: g for g, setting in enumerate(order)}
        self._slots = [Slot(info, row, group_index[row.settings], _frozen_at_build(info, row))
                       for info, row in zip(infos, rows, strict=True)]
        self._inners = inners
        self._planned_lrs = [None if s[1] is None else float(s[1]) for s in order]
        self._planned_wds = [group.get("weight_decay") for group in self.param_groups]  # where no rule sets one
        self._norm_stats = norm_stats
        self._mode: str | None = None  # the last train()/eval() forwarded to the inner optimizers
        self._derive()
        self._relink(loaded=False)
        self._apply_frozen()
        self._norm_units = norm_units(unwrap_model(model), [slot.param for slot in self._slots]) if norm_stats != "update" else []
        self._install_hooks()
        self._ratio_check = self.register_step_pre_hook(self._warn_if_ratios_flattened)

    # ---------------------------------------------------------------- construction helpers
    def _adopt(self, inners: list[Inner]) -> None:
        """Become the optimizer over the inner optimizers' own group dicts (in order) and share their
        state, through torch's own machinery (hooks, step profiling, pickling): ``add_param_group``
        validates (leaf tensors, no parameter in two groups) and re-lists each group's params, which
        are put back so inner optimizers that hold on to their lists keep them."""
        all_groups = [group for inner in inners for group in inner.optimizer.param_groups]
        lists = [group["params"] for group in all_groups]
        self._building = True
        super().__init__(all_groups, {})
        self._building = False
        for group, params in zip(all_groups, lists, strict=True):
            group["params"] = params
        self.defaults = inners[0].optimizer.defaults
        state = inners[0].optimizer.state
        for holder in [inner.optimizer for inner in inners[1:]] + [c for inner in inners for c in inner.carriers]:
            state.update(holder.state)
        self.state = state
        for inner in inners:
            inner.eager_state = any(p in state for g in inner.optimizer.param_groups for p in g["params"])

    def _apply_frozen(self) -> None:
        """At build: frozen parameters hold no state, sit in no group's list, and do not require grad."""
        for slot in self._slots:
            if slot.frozen_by is not None:
                self.state.pop(slot.param, None)
        self._sync(range(len(self.param_groups)))
        for slot in self._slots:
            slot.param.requires_grad_(slot.frozen_by is None)
            if slot.frozen_by is not None:
                slot.param.grad = None

    def _derive(self) -> None:
        """What follows from the slots and inner optimizers (rebuilt after unpickling)."""
        self._index = {name: slot for slot in self._slots for name in (slot.row.name, *slot.row.aliases)}
        self._group_slots: list[list[Slot]] = [[] for _ in self._planned_lrs]
        for slot in self._slots:
            self._group_slots[slot.group].append(slot)
        self._steps = [unprofiled_step(inner.optimizer) for inner in self._inners]
        self._list_frozen()

    def _list_frozen(self) -> None:
        """The frozen and the trainable parameters, flat (``zero_grad`` clears the frozen ones, ``step``
        checks both lists' ``requires_grad``: one pass over each, no walk of the groups)."""
        self._frozen = [slot.param for slot in self._slots if slot.frozen_by is not None]
        self._trainable = [slot.param for slot in self._slots if slot.frozen_by is None]
        self._warned_outside = ()

    def _relink(self, loaded: bool = True) -> None:
        """Point every inner optimizer at its range of ``param_groups`` and at the shared ``state``;
        after a load through its own ``__setstate__``, which fills in options missing from old
        checkpoints, as it does when it loads one itself."""
        for inner in self._inners:
            contents = {"state": self.state, "param_groups": self.param_groups[inner.start : inner.stop]}
            for optimizer in (inner.optimizer, *inner.carriers):  # the nested ones that keep the state too
                if loaded:
                    optimizer.__setstate__(contents)
                else:
                    optimizer.__dict__.update(contents)

    def _sync(self, groups: Iterable[int], with_frozen: bool = False) -> None:
        """Rebuild the ``params`` and ``param_names`` lists of ``groups`` from the slots (in place);
        ``with_frozen``: list the frozen parameters too (:func:`lrgroups.distributed.dcp_layout`)."""
        for g in groups:
            listed = [slot for slot in self._group_slots[g] if with_frozen or slot.frozen_by is None]
            group = self.param_groups[g]
            group["params"][:] = [slot.param for slot in listed]
            group["param_names"] = [slot.row.name for slot in listed]
        self._list_frozen()

    def _install_hooks(self) -> None:
        self._layout_hook = self.register_state_dict_post_hook(_add_layout, prepend=True)
        handles = []
        if self._norm_units:  # the hooks are norms.FrozenNormStats' (the newest decides): one handle for all
            units = [(module, [self._slots[i] for i in indices]) for module, indices in self._norm_units]
            frozen = OwnedNormFreeze(units, self._norm_stats == "freeze_all", MODEL_OWNER)
            handles.append(FrozenNormStats({str(k): module for k, (module, _) in enumerate(units)}, active=frozen))
        self._norm_handles = handles
        self._finalizer = weakref.finalize(self, retire_all, handles)  # never changes hook dicts mid-trace

    def close(self) -> None:
        """Remove the norm-layer hooks this optimizer installed (idempotent). Also done when the
        optimizer is garbage-collected (they stop acting then, and go at the next removal or
        installation), and on leaving ``with LayerwiseOptimizer(...) as opt:``."""
        self._finalizer.detach()
        remove_all(self._norm_handles)

    def __enter__(self) -> "LayerwiseOptimizer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- torch.optim.Optimizer protocol
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({key: self.__dict__[key] for key in ("_slots", "_inners", "_planned_lrs", "_planned_wds",
                                                          "_norm_stats", "_norm_units")})
        state["_ratio_check_pending"] = self.__dict__.get("_ratio_check") is not None
        state["_mode"] = self.__dict__.get("_mode")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        ratio_check_pending = state.pop("_ratio_check_pending", True)
        self._mode = state.pop("_mode", self.__dict__.get("_mode"))
        super().__setstate__(state)
        if "_slots" in state:  # unpickled or deep-copied: rebuild what is derived, own hooks anew
            self._derive()
            self._install_hooks()
            self._ratio_check = self.register_step_pre_hook(self._warn_if_ratios_flattened) if ratio_check_pending else None
        self._relink()

    @property
    def inner(self) -> torch.optim.Optimizer:
        """The wrapped optimizer (the first one when there are several; see :attr:`inners`)."""
        return self._inners[0].optimizer

    @property
    def inners(self) -> dict[str | None, torch.optim.Optimizer]:
        """The inner optimizers by name (``None`` for a single one)."""
        return {inner.name: inner.optimizer for inner in self._inners}

    def train(self) -> None:
        """Switch every inner optimizer that has a mode switch to its training mode: calls its
        ``train()`` (schedule-free optimizers, Defazio et al. 2024: ``schedulefree.AdamWScheduleFree``,
        ``SGDScheduleFree``, ``RAdamScheduleFree``, which refuse to step
        otherwise and move the parameters from the averaged point ``x`` to the gradient point ``y``);
        inner optimizers without one are left as they are. accelerate's ``AcceleratedOptimizer`` and
        the HF Trainer call it (``hasattr(optimizer, "train")``); call it with ``model.train()``.

        Parameters frozen while in training mode are moved to their averaged point first (see
        :meth:`freeze`), so a frozen parameter holds what ``eval()`` would give it.

        Example:
            >>> import torch, torch.nn as nn, lrgroups
            >>> opt = lrgroups.LayerwiseOptimizer(nn.Linear(2, 2), torch.optim.SGD, lr=0.1)
            >>> opt.train(); opt.eval()  # no inner mode switch: nothing happens
        """
        self._switch("train")

    def eval(self) -> None:
        """Switch every inner optimizer that has a mode switch to its evaluation mode (its
        ``eval()``; see :meth:`train`); call it with ``model.eval()``, before evaluating or saving
        the model's weights."""
        self._switch("eval")

    def _switch(self, mode: str) -> None:
        for inner in self._inners:
            switch = getattr(inner.optimizer, mode, None)
            if callable(switch):
                switch()
        self._mode = mode

    def _inner_of(self, slot: Slot) -> Inner:
        """The inner optimizer whose groups hold ``slot``'s group."""
        return next(inner for inner in self._inners if inner.start <= slot.group < inner.stop)

    def _probe(self, inner: Inner, slot: Slot) -> torch.optim.Optimizer:
        """A fresh optimizer of ``inner``'s kind over ``slot``'s parameter alone, in a copy of its group."""
        group = {key: value for key, value in self.param_groups[slot.group].items() if key not in ("params", "param_names")}
        return inner.factory([{**group, "params": [slot.param]}], **inner.kwargs)

    def _move_one(self, slot: Slot, state: dict, mode: str) -> None:
        """Move one parameter (not in any group: frozen, or being unfrozen) between the points of a
        schedule-free inner optimizer, with the inner optimizer's own ``train()``/``eval()`` run on a
        probe optimizer over that parameter alone: first the opposite switch without its state (the
        probe's mode, no value changes), then ``mode`` with it (the parameter moves)."""
        inner = self._inner_of(slot)
        if not (callable(getattr(inner.optimizer, "train", None)) and callable(getattr(inner.optimizer, "eval", None))):
            return
        probe = self._probe(inner, slot)
        getattr(probe, "eval" if mode == "train" else "train")()
        probe.state[slot.param] = state
        getattr(probe, mode)()

    @property
    def _step_supports_amp_scaling(self) -> bool:
        return all(getattr(inner.optimizer, "_step_supports_amp_scaling", False) for inner in self._inners)

    def step(self, closure: Callable[[], float] | None = None):
        """One step of each inner optimizer (frozen parameters are in no group: untouched).

        Torch runs the hooks registered on the wrapper and profiles the step once; the inner
        optimizers' steps are called without torch's profiling wrapper (hooks registered on an
        inner optimizer itself do not run). With several inner optimizers a closure is evaluated
        once, before they step.
        """
        if self._ratio_check is not None:  # the first step's check has run (torch ran the pre-hooks)
            self._end_ratio_check()
        if any(p.requires_grad for p in self._frozen) or not all(p.requires_grad for p in self._trainable):
            self._warn_outside_changes(_user_stacklevel() + 1, once=True)
        steps = self._steps
        if len(steps) == 1:
            return steps[0](closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for step in steps:
            step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Torch's ``zero_grad`` over the param groups (its hooks and profiling), and the same for
        every frozen parameter: a gradient a frozen parameter collected (its ``requires_grad`` set
        outside the optimizer; ``step`` warns about it) is cleared, never left stale.

        Args:
            set_to_none: set gradients to ``None`` (default) instead of zeroing them, as torch's.
        """
        super().zero_grad(set_to_none)
        for param in self._frozen:
            if param.grad is not None:
                if set_to_none:
                    param.grad = None
                else:
                    if param.grad.grad_fn is not None:
                        param.grad.detach_()
                    else:
                        param.grad.requires_grad_(False)
                    param.grad.zero_()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Refused once built (it would break attached LR schedulers): the groups come from the
        rules; put the parameters in the model and use :meth:`unfreeze`.

        Raises:
            TypeError: always, after construction.
        """
        if self.__dict__.get("_building"):  # Optimizer.__init__ adding the inner optimizers' groups
            return super().add_param_group(param_group)
        raise TypeError(
            "LayerwiseOptimizer builds its groups from rules and never adds groups (that would break "
            "attached LR schedulers): include the parameters in the model and use opt.unfreeze(...)"
        )

    # ---------------------------------------------------------------- plan views
    @property
    def plan(self) -> list[ParamPlan]:
        """The rows the rules produced (as :func:`lrgroups.plan` gives them: ``weight_decay`` is
        ``None`` where neither the call nor a rule set one; :meth:`explain` shows the inner
        optimizer's default there), with ``frozen`` as it is now."""
        return [
            slot.row if slot.row.frozen == (slot.frozen_by is not None) else replace(slot.row, frozen=slot.frozen_by is not None)
            for slot in self._slots
        ]

    def explain(self) -> "pd.DataFrame":
        """One row per parameter: ``name, depth, depth_source, lr, weight_decay, options, optimizer,
        frozen, frozen_by, group, rules, aliases, shape, numel``; ``depth_source`` says where the
        depth came from (timm group_matcher, forward order, registration order; head); ``group`` indexes ``param_groups`` (-1 when
        frozen); ``lr`` is the planned lr (a scheduler scales the group's current lr);
        ``weight_decay`` is the inner optimizer's default where no rule set it; ``frozen_by`` is
        ``"model"`` (frozen before the wrapper was built), ``"rule"`` (a rule's ``frozen=True``), the
        owner given to :meth:`freeze`, or ``None`` (an object column: ``None``, not NaN, under pandas 3
        too). pandas is imported here, not by ``import lrgroups``."""
        import pandas as pd

        table = pd.DataFrame(
            [
                {
                    "name": slot.row.name,
                    "depth": slot.row.depth,
                    "depth_source": slot.row.depth_source,
                    "lr": slot.row.lr,
                    "weight_decay": settings["weight_decay"],
                    "options": dict(slot.row.options),
                    "optimizer": slot.row.optimizer,
                    "frozen": slot.frozen_by is not None,
                    "frozen_by": slot.frozen_by,
                    "group": -1 if slot.frozen_by is not None else slot.group,
                    "rules": ", ".join(slot.row.rules),
                    "aliases": ", ".join(slot.row.aliases),
                    "shape": slot.row.shape,
                    "numel": math.prod(slot.row.shape),
                }
                for slot, settings in zip(self._slots, self._settings, strict=True)
            ]
        )
        table["frozen_by"] = pd.Series([slot.frozen_by for slot in self._slots], dtype=object)
        return table

    def summary(self) -> "pd.DataFrame":
        """One row per param group (indexed as ``param_groups``): its ``name``, the planned ``lr``
        and the ``current_lr`` (what a scheduler made of it; a tensor lr as a float), weight decay,
        ``options``, depth range, and how many tensors/elements are trainable and frozen."""
        table = self.explain()
        table["group"] = [slot.group for slot in self._slots]
        table["trainable_numel"] = table["numel"].where(~table["frozen"], 0)
        out = table.groupby("group").agg(
            lr=("lr", "first"),
            weight_decay=("weight_decay", "first"),
            options=("options", "first"),
            depth_min=("depth", "min"),
            depth_max=("depth", "max"),
            tensors=("name", "size"),
            frozen_tensors=("frozen", "sum"),
            trainable_numel=("trainable_numel", "sum"),
        )
        out.insert(0, "name", [self.param_groups[g]["name"] for g in out.index])
        out.insert(2, "current_lr", [math.nan if self.param_groups[g].get("lr") is None
                                     else float(self.param_groups[g]["lr"]) for g in out.index])
        return out

    def __repr__(self) -> str:
        frozen = sum(slot.frozen_by is not None for slot in self._slots)
        kinds = "+".join(type(inner.optimizer).__name__ for inner in self._inners)
        return f"LayerwiseOptimizer({kinds}, {len(self._slots)} parameters ({frozen} frozen), {len(self.param_groups)} groups)"

    def per_group(self, value: float) -> list[float]:
        """``value`` scaled by each group's planned lr ratio to the base lr.

        Schedulers that take one peak lr for all groups (``OneCycleLR``, ``CyclicLR``) would flatten
        the rules' ratios; pass them ``max_lr=opt.per_group(peak)`` instead.

        Raises:
            ValueError: the base lr is 0.
        """
        base = self.defaults["lr"]
        if not isinstance(base, (int, float, torch.Tensor)) or any(lr is None for lr in self._planned_lrs):
            raise ValueError(f"per_group needs a base lr and an lr in every group; the base lr is {base!r} (give the "
                             "optimizer lr=...)")
        if float(base) == 0:
            raise ValueError("per_group needs a non-zero base lr")
        return [value * group_lr / float(base) for group_lr in self._planned_lrs]

    def _warn_if_ratios_flattened(self, optimizer, args, kwargs) -> None:
        """Step pre-hook for the first step only (step() removes it); registered first, so it sees
        the lrs the schedulers set before any other hook changes them. The warning names the groups
        furthest from their planned ratio (not every lr), what to pass to each kind of scheduler, and
        points at the user's line (the first frame outside torch and lrgroups)."""
        planned = self._planned_lrs
        current = [None if p is None else float(group["lr"]) for p, group in zip(planned, self.param_groups, strict=True)]
        scale = {g: c / p for g, (c, p) in enumerate(zip(current, planned, strict=True)) if p is not None and p > 0}
        if not scale or all(math.isclose(s, next(iter(scale.values())), rel_tol=1e-6, abs_tol=1e-12)
                            for s in scale.values()):
            return
        low, high = min(scale, key=scale.get), max(scale, key=scale.get)
        names = [self.param_groups[g].get("name", f"group {g}") for g in (low, high)]
        warnings.warn(
            f"the param groups' lrs no longer keep the ratios the rules gave them: each group's lr / its planned lr "
            f"ranges from {scale[low]:.3g} ({names[0]}: planned {planned[low]:.3g}, now {current[low]:.3g}) to "
            f"{scale[high]:.3g} ({names[1]}: planned {planned[high]:.3g}, now {current[high]:.3g}) over "
            f"{len(scale)} groups. A scheduler that sets one absolute lr for every group flattens them: "
            "torch's OneCycleLR / CyclicLR: pass max_lr=opt.per_group(peak_lr) (and base_lr=opt.per_group(...)); "
            "timm's schedulers: warmup_lr_init and lr_min are absolute lrs, pass warmup_lr_init=0 and lr_min=0 "
            "(a positive lr_min lifts low-lr groups above their planned peak by the end); a hand-written loop "
            "(MAE's lr * lr_scale): set each group's lr to lr * planned / base, i.e. opt.per_group(lr)[i]",
            stacklevel=_user_stacklevel(),
        )

    def _end_ratio_check(self) -> None:
        if self._ratio_check is not None:
            self._ratio_check.remove()
            self._ratio_check = None

    # ---------------------------------------------------------------- freezing
    def _select(self, pattern: str | Selector | None, select: dict, missing: str = "raise") -> list[Slot]:
        if isinstance(pattern, Selector) and select:
            raise TypeError("give a Selector or selector fields, not both")
        if missing not in ("raise", "empty"):
            raise ValueError(f"missing must be 'raise' or 'empty', got {missing!r}")
        selector = pattern if isinstance(pattern, Selector) else Selector(pattern=pattern, **select)
        chosen = [slot for slot in self._slots if selector.matches(slot.info)]
        if not chosen and missing == "raise":
            raise selector.no_match_error([slot.row.name for slot in self._slots])
        return chosen

    def _slot(self, name: str) -> Slot:
        slot = self._index.get(name)
        if slot is None:
            raise NoMatchError(no_match_message(f"name {name!r}", name, [slot.row.name for slot in self._slots]))
        return slot

    def select(self, pattern: str | Selector | None = None, *, missing: str = "raise",
               **select: Any) -> dict[str, torch.Tensor]:
        """``{name: parameter}`` of the parameters a selection picks (a glob, a
        :class:`~lrgroups.Selector`, or its fields as keywords), in plan order; nothing changes.

        Args:
            pattern: a glob over the names, or a :class:`~lrgroups.Selector`.
            missing: ``"raise"`` (default) when nothing matches, or ``"empty"`` to return ``{}``.
            **select: :class:`~lrgroups.Selector` fields (``ndim=1``, ``depth=(0, 3)``, ...).

        Returns:
            The selected parameters by name.

        Raises:
            ValueError: the selection matches no parameter (with the closest names; a
                :class:`~lrgroups.NoMatchError`), unless ``missing="empty"``.

        Example:
            >>> import torch, torch.nn as nn, lrgroups
            >>> opt = lrgroups.LayerwiseOptimizer(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), torch.optim.SGD, lr=0.1)
            >>> list(opt.select(ndim=1))
            ['0.bias', '1.bias']
        """
        return {slot.row.name: slot.param for slot in self._select(pattern, select, missing)}

    def _check_membership_change(self, slots: list[Slot]) -> None:
        groups = {slot.group for slot in slots}
        for inner in self._inners:
            if isinstance(inner.optimizer, DERIVED_STATE) and any(inner.start <= g < inner.stop for g in groups):
                if any(p in self.state for g in self.param_groups[inner.start : inner.stop] for p in g["params"]):
                    raise RuntimeError(
                        f"{type(inner.optimizer).__name__} derives its state from the whole parameter set "
                        "(flat history vectors), so parameters cannot be frozen or unfrozen once it has "
                        "stepped; freeze/unfreeze before the first step, or build a new optimizer"
                    )

    def freeze(
        self, pattern: str | Selector | None = None, *, keep_state: bool = False, owner: str = USER_OWNER, **select: Any
    ) -> list[str]:
        """Freeze the selected parameters (a glob, a :class:`~lrgroups.Selector`, or its fields as
        keywords); returns the names that changed (already-frozen ones keep their owner).

        A frozen parameter leaves its group's ``params`` list, gets ``requires_grad=False`` and
        ``.grad = None``: no step, momentum or weight decay touches it. Its optimizer state is
        dropped (``keep_state=False``, the default: a later unfreeze starts afresh, as a newly added
        parameter would) or kept aside and restored on unfreeze (``keep_state=True``; it is carried
        by ``state_dict()``). ``owner`` is recorded (``explain()["frozen_by"]``) so that
        ``unfreeze(owner=...)`` thaws only what that owner froze. With a schedule-free inner optimizer
        in training mode (:meth:`train`), a parameter that has state is first moved to its averaged
        point ``x`` (what ``eval()`` gives it), which it keeps while frozen; ``keep_state=True``
        moves it back to ``y`` when it is unfrozen in training mode.

        Raises:
            ValueError: the selection matches no parameter (with the closest names).
            RuntimeError: an inner optimizer with derived state (L-BFGS) has stepped already.

        Example:
            >>> import torch, torch.nn as nn, lrgroups
            >>> opt = lrgroups.LayerwiseOptimizer(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), torch.optim.SGD, lr=0.1)
            >>> opt.freeze("0.*", owner="schedule"), opt.frozen_by("0.weight")
            (['0.weight', '0.bias'], 'schedule')
            >>> opt.unfreeze("0.*", owner="someone-else"), opt.unfreeze("0.*")
            ([], ['0.weight', '0.bias'])
        """
        if not isinstance(owner, str) or not owner:
            raise ValueError(f"owner must be a non-empty string, got {owner!r}")
        slots = [slot for slot in self._select(pattern, select) if slot.frozen_by is None]
        self._check_membership_change(slots)
        self._warn_outside_changes()
        for slot in slots:
            state = self.state.pop(slot.param, None)
            if state and self._mode == "train":  # a schedule-free inner: leave the gradient point y for x
                self._move_one(slot, state, "eval")
            slot.kept = state if keep_state and state else None
            slot.param.requires_grad_(False)
            slot.param.grad = None
            slot.frozen_by = owner
        self._sync({slot.group for slot in slots})
        return [slot.row.name for slot in slots]

    def unfreeze(self, pattern: str | Selector | None = None, *, owner: str | None = None, **select: Any) -> list[str]:
        """Unfreeze the selected parameters: each is hot-added to the group its rules gave it, at
        its plan position (so group contents equal those of a run that never froze it); returns the
        names that changed. ``owner=None`` thaws whatever froze them (the model, a rule, anyone);
        ``owner="x"`` thaws only what ``freeze(..., owner="x")`` froze.

        Raises:
            ValueError: the selection matches no parameter (with the closest names).
            RuntimeError: an inner optimizer with derived state (L-BFGS) has stepped already.
        """
        slots = [
            slot
            for slot in self._select(pattern, select)
            if slot.frozen_by is not None and (owner is None or slot.frozen_by == owner)
        ]
        self._check_membership_change(slots)
        self._warn_outside_changes()
        for slot in slots:
            slot.param.grad = None  # a gradient from before (or outside) the freeze is never applied
            if slot.kept is not None:
                if self._mode == "train":  # a schedule-free inner: back from x to the gradient point y
                    self._move_one(slot, slot.kept, "train")
                self.state[slot.param] = slot.kept
                slot.kept = None
            else:
                self._fresh_state(slot)
            slot.param.requires_grad_(True)
            slot.frozen_by = None
        self._sync({slot.group for slot in slots})
        return [slot.row.name for slot in slots]

    def _warn_outside_changes(self, stacklevel: int = 3, once: bool = False) -> None:
        """Warn when ``requires_grad`` was changed outside the wrapper, so that torch and the frozen
        set disagree: a frozen parameter that collects gradients (never applied, cleared by
        ``zero_grad`` and dropped when it is unfrozen) or a trainable one that gets none (silently
        never stepped). ``once``: not again for the same parameters (``step`` checks every time)."""
        collecting = [slot.row.name for slot in self._slots if slot.frozen_by is not None and slot.param.requires_grad]
        starved = [slot.row.name for slot in self._slots if slot.frozen_by is None and not slot.param.requires_grad]
        if once:
            if (collecting, starved) == self._warned_outside:
                return
            self._warned_outside = (collecting, starved)
        for names, what, fix in (
            (collecting, "frozen but requires_grad=True: they collect gradients that are never applied (zero_grad "
             "clears them)", f"to train them call opt.unfreeze({collecting[0]!r}) (or a pattern) instead of "
             "requires_grad_(True)" if collecting else ""),
            (starved, "trainable but requires_grad=False: they get no gradient, so no step",
             f"to freeze them call opt.freeze({starved[0]!r}) (or a pattern) instead of requires_grad_(False)"
             if starved else ""),
        ):
            if names:
                warnings.warn(f"requires_grad was changed outside the optimizer: {first_names(names)} "
                              f"{'is' if len(names) == 1 else 'are'} {what}; {fix}: freeze and unfreeze through "
                              "the optimizer", UserWarning, stacklevel=stacklevel)

    def _fresh_state(self, slot: Slot) -> None:
        """For an optimizer that creates state in its constructor (Adagrad): the state its
        constructor would create for this parameter in its group."""
        inner = self._inner_of(slot)
        if not inner.eager_state:
            return
        probe = self._probe(inner, slot)
        for holder in (probe, *state_carriers(probe)):
            if slot.param in holder.state:
                self.state[slot.param] = holder.state[slot.param]

    def group_of(self, name: str) -> int:
        """Index into ``param_groups`` of the group the rules gave ``name`` (frozen or not)."""
        return self._slot(name).group

    def is_frozen(self, name: str) -> bool:
        """Whether the parameter called ``name`` (or an alias of it) is frozen now."""
        return self._slot(name).frozen_by is not None

    def frozen_by(self, name: str) -> str | None:
        """Who froze ``name``: ``"model"``, ``"rule"``, the owner given to :meth:`freeze`; ``None``
        when it trains."""
        return self._slot(name).frozen_by

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict (``state``, ``param_groups`` with ``param_names``; torch's hooks run)
        plus ``"lrgroups"``: ``format``, ``names`` (every parameter, frozen ones included),
        ``settings``, ``groups``, ``frozen`` (``{name: owner}``), ``kept`` (state kept aside for
        frozen parameters, by name) and ``stepped`` (whether the first step's ratio check has run:
        loading a checkpoint of an unstepped optimizer, as accelerate does when it wraps one, keeps
        the check). Loads with ``torch.load(..., weights_only=True)``.

        Example:
            >>> import torch, torch.nn as nn, lrgroups
            >>> opt = lrgroups.LayerwiseOptimizer(nn.Linear(2, 2), torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("bias", frozen=True)])
            >>> sd = opt.state_dict()
            >>> sorted(sd), sd["param_groups"][0]["param_names"], sd["lrgroups"]["frozen"]
            (['lrgroups', 'param_groups', 'state'], ['weight'], {'bias': 'rule'})
        """
        return super().state_dict()

    @property
    def _settings(self) -> list[dict[str, Any]]:
        """Each parameter's settings as a checkpoint records them (the inner optimizer's weight decay
        where no rule set one)."""
        return [checkpoint.settings(slot.row, self._planned_wds[slot.group]) for slot in self._slots]

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint by parameter name: this wrapper's own (layout, frozen set with owners,
        kept-aside state and per-parameter state restored), one that went through
        ``torch.distributed.checkpoint`` (no ``"lrgroups"`` key: state and group hyperparameters
        restored, frozen set kept), or a bare torch optimizer's over the same model (per-parameter
        state moved onto this layout by name, or by position over all or over the trainable
        parameters; the group hyperparameters stay the rules'). State is cast as torch casts it;
        torch's load hooks run. Group hyperparameters missing from a saved group (DCP drops those
        of empty groups) keep their current values.

        Raises:
            CheckpointMismatchError: the checkpoint does not fit (other parameters, other rules,
                a state tensor whose shape does not fit its parameter, ...), listing every
                difference; nothing is changed then, nor when the load fails half-way.
        """
        per_parameter = {  # state whose shape follows its parameter (not L-BFGS's flat history)
            slot.row.name
            for inner in self._inners
            if not isinstance(inner.optimizer, DERIVED_STATE)
            for slot in self._slots
            if inner.start <= slot.group < inner.stop
        }
        frozen, kept, torch_part = checkpoint.translate(state_dict, self._slots, self._settings, self.param_groups,
                                                        per_parameter)
        saved_frozen = [(slot, slot.frozen_by, slot.kept) for slot in self._slots]
        saved_state, saved_groups = dict(self.state), self.param_groups
        state_object = self.state
        try:
            for slot in self._slots:
                target = frozen.get(slot.row.name)
                if (slot.frozen_by is None) != (target is None):
                    self.state.pop(slot.param, None)
                    slot.param.requires_grad_(target is None)
                    if target is not None:
                        slot.param.grad = None
                slot.frozen_by = target
                slot.kept = None
            self._sync(range(len(self.param_groups)))
            super().load_state_dict(torch_part)
        except Exception:
            for slot, frozen_by, slot_kept in saved_frozen:
                slot.frozen_by, slot.kept = frozen_by, slot_kept
                slot.param.requires_grad_(frozen_by is None)
            state_object.clear()
            state_object.update(saved_state)
            torch.optim.Optimizer.__setstate__(self, {"state": state_object, "param_groups": saved_groups})
            self._sync(range(len(self.param_groups)))
            self._relink()
            raise
        for name, state in kept.items():
            slot = self._index[name]
            slot.kept = cast_like_torch(slot.param, state, self.param_groups[slot.group])
        saved = state_dict.get("lrgroups")
        if saved is not None and "mode" in saved:  # the mode its schedule-free inner optimizers were in
            self._mode = saved["mode"]
        if checkpoint.has_stepped(state_dict):  # a checkpoint of a run past its first step: nothing left to check
            self._end_ratio_check()


def _check_arguments(model: Any, optimizer_cls: Any, norm_stats: str, lr: Any) -> None:
    """The wrapper's own argument checks, before anything is read from the model."""
    if optimizer_cls is None:
        raise TypeError("LayerwiseOptimizer needs optimizer_cls: an optimizer class, a factory or a dict of them")
    if norm_stats not in _NORM_POLICIES:
        raise ValueError(f"norm_stats must be one of {', '.join(map(repr, _NORM_POLICIES))}, got {norm_stats!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"LayerwiseOptimizer needs the model (an nn.Module), got {type(model).__name__}: its rules and "
            "depths come from the module tree. With the Hugging Face Trainer pass it in the kwargs: "
            "optimizer_cls_and_kwargs=(LayerwiseOptimizer, {'model': model, 'optimizer_cls': torch.optim.AdamW, "
            "'lr': ...}) (the Trainer then calls LayerwiseOptimizer(model, optimizer_cls=..., lr=...))"
        )
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")  # torch's own check, before lr is read


def _managed(model: nn.Module, select: str | Selector | None, coarse: bool, example_input: Any,
             tied: str | None) -> list[ParamInfo]:
    """The parameters the wrapper manages, described: all of the model's, or those ``select`` picks
    (depths renumbered within them)."""
    infos = describe_nonempty(model, coarse, example_input=example_input, tied=tied)
    if select is None:
        return infos
    selector = select if isinstance(select, Selector) else Selector(pattern=select)
    infos = [info for info in infos if selector.matches(info)]
    if not infos:
        raise ValueError(f"select={selector.criteria()} matches no parameter of the model")
    return renumber(infos)  # depths count within what this optimizer manages


def _frozen_at_build(info: ParamInfo, row: ParamPlan) -> str | None:
    """Who froze a parameter when the wrapper is built: nobody, the model (``requires_grad``) or a rule."""
    if not row.frozen:
        return None
    return MODEL_OWNER if not info.param.requires_grad else RULE_OWNER


def _plan_rows(infos: list[ParamInfo], wanted: dict, lr: Any, base_lr: dict, base_wd: dict,
               rules: Sequence[Rule]) -> list[ParamPlan]:
    """The plan rows, also for inner optimizers without a base lr: one whose default is torch's
    ``required`` marker or missing (timm's SGDP) needs an absolute lr by rule for every parameter
    routed to it; one that computes its own lr (:func:`lrgroups.inner.computes_own_lr`: Adafactor's
    relative step) takes no lr from any rule, and its rows' lr is ``None``. Which rows get an lr
    from the base is read by planning twice, with two different placeholder base lrs."""
    names = list(wanted) if None not in wanted else None

    def run(placeholder: float) -> list[ParamPlan]:
        lrs = {name: placeholder if value is None else float(value) for name, value in base_lr.items()}
        return plan_params(infos, lr=lrs if names else lrs[None], weight_decay=base_wd if names else base_wd[None],
                           rules=rules, optimizers=names)

    rows = run(1.0)
    missing = [name for name, value in base_lr.items() if value is None]
    if not missing:
        return rows
    other = run(2.0)
    own = set()
    for name in missing:
        factory, kwargs = wanted[name]
        label = factory_name(factory) + ("" if name is None else f" ({name!r})")
        routed = [(a, b) for a, b in zip(rows, other, strict=True) if a.optimizer == name]
        if computes_own_lr(factory, kwargs, lr):
            own.add(name)
            touched = [a.name for a, b in routed if (a.lr, b.lr) != (1.0, 2.0)]
            if touched:
                raise ValueError(
                    f"{label} computes its own lr at every step when it has none (lr=None: Adafactor's relative "
                    f"step), so no rule can set or scale it, but the rules do for {first_names(touched)}: pass "
                    "lr=... (the optimizer then steps with the rules' lrs; Adafactor's relative step is off) or drop "
                    "the rules' lr, lr_mult and layer decay")
        else:
            unset = [a.name for a, b in routed if a.lr != b.lr]
            if unset:
                raise ValueError(
                    f"{label} has no default lr: pass lr=..., or give every parameter an lr by rule "
                    f"(Rule(..., lr=...)); no rule sets one for {first_names(unset)}")
    return [replace(row, lr=None) if row.optimizer in own else row for row in rows]


def _user_stacklevel() -> int:
    """The ``stacklevel`` of ``warnings.warn`` called here that points at the first frame outside
    torch and lrgroups (the user's ``opt.step()`` or ``scaler.step(opt)``)."""
    import os
    import sys

    skip = tuple(os.path.dirname(module.__file__) + os.sep for module in (torch, sys.modules[__package__]))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    return level


def _add_layout(optimizer: LayerwiseOptimizer, state_dict: dict[str, Any]) -> None:
    """State-dict post-hook (registered first): lrgroups' layout in its own key (:func:`lrgroups.checkpoint.layout`)."""
    state_dict["lrgroups"] = checkpoint.layout(optimizer._slots, optimizer._settings,
                                               stepped=optimizer._ratio_check is None, mode=optimizer._mode)
