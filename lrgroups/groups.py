"""From a plan to torch param groups: the one step between lrgroups' rules and a torch optimizer.

Parameters with identical settings (lr, weight decay, options, inner optimizer) share one group, in
order of first appearance in the plan, so foreach and fused kernels stay batched (one group per
tensor, the mmengine way, slows them). :class:`~lrgroups.LayerwiseOptimizer` builds its groups with
:func:`group_settings`; :func:`param_groups` is the same step as a pure function that returns
torch-native group dicts, for any optimizer or factory that takes them (a bare
``torch.optim.AdamW``, the Hugging Face Trainer's ``optimizer_cls_and_kwargs``, DeepSpeed), as
timm's ``param_groups_layer_decay`` does.

Example:
    >>> import torch, torch.nn as nn, lrgroups
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> groups = lrgroups.param_groups(model, lr=1e-3, weight_decay=0.05,
    ...                                rules=[lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()])
    >>> [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups]
    [(0.0005, 0.05, 1), (0.0005, 0.0, 1), (0.001, 0.05, 1), (0.001, 0.0, 1)]
    >>> optimizer = torch.optim.AdamW(groups)  # trains as LayerwiseOptimizer(model, AdamW, ...) does
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from .depth import describe_nonempty
from .rules import ParamPlan, Rule, plan_params


def group_settings(rows: Sequence[ParamPlan], optimizers: Sequence[str | None] = (None,)) -> tuple[list[tuple], list[list[int]]]:
    """(the distinct settings, per group; the plan rows of each group): groups ordered by inner
    optimizer (``optimizers``' order), then by first appearance in the plan."""
    by_optimizer: dict[str | None, list[tuple]] = {name: [] for name in optimizers}
    for row in rows:
        if row.settings not in by_optimizer[row.optimizer]:
            by_optimizer[row.optimizer].append(row.settings)
    order = [setting for name in optimizers for setting in by_optimizer[name]]
    index = {setting: i for i, setting in enumerate(order)}
    members: list[list[int]] = [[] for _ in order]
    for i, row in enumerate(rows):
        members[index[row.settings]].append(i)
    return order, members


def group_names(rows: Sequence[ParamPlan], settings: Sequence[tuple], groups: Sequence[dict]) -> list[str]:
    """A readable, unique name per group ("depth 3–4 · lr 0.001 · wd 0.05"), from its members' depths
    and its settings (``groups``: the built group dicts, whose ``weight_decay`` is shown where the
    settings leave it to the optimizer; "lr own" where the optimizer computes its lr itself); loggers (Lightning's LearningRateMonitor, the HF callback)
    show it."""
    group_index = {setting: g for g, setting in enumerate(settings)}
    depths: dict[int, list[int]] = {}
    for row in rows:
        depths.setdefault(group_index[row.settings], []).append(row.depth)
    several = len({s[0] for s in settings}) > 1
    names = []
    for g, (optimizer, lr, weight_decay, options) in enumerate(settings):
        low, high = min(depths[g]), max(depths[g])
        parts = [f"depth {low}" if low == high else f"depth {low}–{high}", f"lr {lr:.3g}" if lr is not None else "lr own"]
        weight_decay = groups[g].get("weight_decay", weight_decay)  # the inner optimizer's default if unset
        if isinstance(weight_decay, (int, float)):
            parts.append(f"wd {weight_decay:.3g}")
        parts += [f"{key} {value}" for key, value in dict(options).items()]
        if several:
            parts.insert(0, str(optimizer))
        names.append(" · ".join(parts))
    return [name if names.count(name) == 1 else f"{name} · #{g}" for g, name in enumerate(names)]


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float | None = None,
    rules: Sequence[Rule] = (),
    coarse: bool = False,
    example_input: Any = None,
    tied: str | None = None,
) -> list[dict[str, Any]]:
    """torch param groups for ``model`` under ``rules``: a pure function (nothing about the model
    changes), the groups :class:`~lrgroups.LayerwiseOptimizer` would build.

    Every group dict holds ``params`` (the trainable parameters of the group, in plan order), ``lr``,
    ``weight_decay`` where the call or a rule set one (else the optimizer's default applies), the
    rules' ``options`` (``betas``, ``momentum``, ...) and a readable ``name`` (torch keeps extra
    keys; Lightning's ``LearningRateMonitor`` logs it). Parameters that are frozen (``requires_grad``
    False, or a rule's ``frozen=True``) are left out: a bare optimizer cannot take them in later (use
    :class:`~lrgroups.LayerwiseOptimizer` to unfreeze without breaking schedulers), and a rule's
    ``frozen=`` does not change ``requires_grad`` here: a parameter a ``frozen=False`` rule thaws is
    in its group but gets a gradient only once you set ``requires_grad_(True)`` on it.

    Args:
        model: any ``nn.Module`` (DDP, ``torch.compile`` and peft wrappers are looked through).
        lr: the base learning rate, the start of every rule.
        weight_decay: the base weight decay; ``None`` leaves it to the optimizer.
        rules: ordered :class:`~lrgroups.Rule` s, as for :class:`~lrgroups.LayerwiseOptimizer`.
        coarse: stage-wise depths, as for :class:`~lrgroups.LayerwiseOptimizer`.
        example_input: how depths follow the data flow (see :func:`lrgroups.depth.param_layers`).
        tied: where a tied embedding/output tensor goes (see :func:`lrgroups.depth.param_layers`).

    Returns:
        The group dicts, trainable parameters only (a group left empty is dropped).

    Raises:
        ValueError: as :func:`lrgroups.plan` (a rule matching nothing, a negative or non-finite lr,
            ...), and a rule that routes to a named optimizer (``optimizer=``: one optimizer takes
            these groups; use the wrapper with a dict of optimizers).
    """
    infos = describe_nonempty(model, coarse, example_input=example_input, tied=tied)
    rows = plan_params(infos, lr=lr, weight_decay=weight_decay, rules=rules)
    order, members = group_settings(rows)
    params = [info.param for info in infos]
    names = group_names(rows, order, [{} for _ in order])
    groups = []
    for (_, group_lr, group_wd, options), indices, name in zip(order, members, names):
        trainable = [params[i] for i in indices if not rows[i].frozen]
        if not trainable:
            continue
        group: dict[str, Any] = {"params": trainable, "lr": group_lr}
        if group_wd is not None:
            group["weight_decay"] = group_wd
        groups.append({**group, **dict(options), "name": name})
    return groups
