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

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .depth import ParamInfo, describe_nonempty
from .inner import group_dict
from .rules import ParamPlan, Rule, plan_params

# Who froze a parameter (:attr:`Slot.frozen_by`, ``LayerwiseOptimizer.frozen_by(name)``, ``explain()``).
#: Frozen before the wrapper was built (``requires_grad=False``: the user, peft, a framework).
MODEL_OWNER = "model"
#: Frozen by a rule's ``frozen=True``.
RULE_OWNER = "rule"
#: Frozen by ``LayerwiseOptimizer.freeze`` without an ``owner=``.
USER_OWNER = "user"
#: Frozen by a progressive-unfreezing schedule (:class:`~lrgroups.ProgressiveUnfreezing`).
SCHEDULE_OWNER = "schedule"


@dataclass(eq=False)
class Slot:
    """One parameter of a :class:`~lrgroups.LayerwiseOptimizer`: the one record its groups' ``params``
    lists, its checkpoints (:mod:`lrgroups.checkpoint`) and its frozen-norm handling
    (:class:`lrgroups.norms.OwnedNormFreeze`) are read from.

    Attributes:
        info: the parameter's description (:class:`~lrgroups.ParamInfo`; ``info.param`` is the tensor).
        row: its plan row as the rules planned it (``row.frozen`` is what they and ``requires_grad``
            froze at build).
        group: the index of the group the rules gave it in ``param_groups`` (frozen or not).
        frozen_by: who froze it now (:data:`MODEL_OWNER`, :data:`RULE_OWNER`, :data:`USER_OWNER`,
            :data:`SCHEDULE_OWNER` or the owner given to ``freeze``); ``None`` when it trains.
        kept: the optimizer state kept aside by ``freeze(keep_state=True)``, else ``None``.
    """

    info: ParamInfo
    row: ParamPlan
    group: int
    frozen_by: str | None
    kept: dict | None = None

    @property
    def param(self) -> torch.Tensor:
        """The parameter."""
        return self.info.param


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


#: The characters a group name keeps: ASCII that every logger accepts as a metric key (MLflow's
#: ``[A-Za-z0-9_/. -]`` without the space); anything else becomes ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def group_names(rows: Sequence[ParamPlan], settings: Sequence[tuple], groups: Sequence[dict]) -> list[str]:
    """A short, unique, ASCII name per group, by role and depth: ``"head"`` for a group of heads
    only, else ``"depth07"`` (``"depth03-05"`` for a range; zero-padded to the deepest depth, so
    names sort in depth order), then ``"-nowd"`` for a group without weight decay beside groups
    with it, ``<optimizer>-`` first with several inner optimizers, and the differing options (then
    ``-2``, ``-3``, ...) where names would still collide. The planned lr is not in the name (a
    scheduler changes it; the lr is the logged value). Loggers show it: Lightning's
    ``LearningRateMonitor``, the HF callback's ``learning_rate/<name>``; MLflow keeps it as it is.

    Args:
        rows: the plan, one row per parameter.
        settings: the distinct settings, one per group (:func:`group_settings`).
        groups: the built group dicts, whose ``weight_decay`` stands where the settings leave it to
            the optimizer.

    Returns:
        One name per group, in ``settings``' order.

    Example:
        >>> import torch.nn as nn, lrgroups
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> [g["name"] for g in lrgroups.param_groups(model, lr=1e-3, weight_decay=0.05,
        ...                                            rules=[lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()])]
        ['depth0', 'depth0-nowd', 'head', 'head-nowd']
    """
    group_index = {setting: g for g, setting in enumerate(settings)}
    members: dict[int, list[ParamPlan]] = {}
    for row in rows:
        members.setdefault(group_index[row.settings], []).append(row)
    width = len(str(max((row.depth for row in rows), default=0)))
    decays = [groups[g].get("weight_decay", setting[2]) for g, setting in enumerate(settings)]
    any_decay = any(isinstance(wd, (int, float)) and wd != 0 for wd in decays)
    several = len({s[0] for s in settings}) > 1
    names = []
    for g, (optimizer, _, _, options) in enumerate(settings):
        group_rows = members.get(g, [])
        depths = [row.depth for row in group_rows] or [0]
        low, high = min(depths), max(depths)
        if group_rows and all("head" in row.depth_source.split("; ") for row in group_rows):
            name = "head"
        else:
            name = f"depth{low:0{width}d}" if low == high else f"depth{low:0{width}d}-{high:0{width}d}"
        if any_decay and decays[g] == 0:
            name += "-nowd"
        if several:
            name = f"{optimizer}-{name}"
        names.append(name)
    for g, (_, _, _, options) in enumerate(settings):  # still colliding: the options that tell them apart
        if names.count(names[g]) > 1 and options:
            names[g] += "-" + "-".join(f"{key}{value}" for key, value in options)
    names = [_UNSAFE.sub("_", name).strip("_") for name in names]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if names.count(name) == 1 else f"{name}-{seen[name]}")
    return unique


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
    rules' ``options`` (``betas``, ``momentum``, ...) and a short ASCII ``name`` by role and depth
    (:func:`group_names`; torch keeps extra keys; Lightning's ``LearningRateMonitor`` logs it). Parameters that are frozen (``requires_grad``
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
    for setting, indices, name in zip(order, members, names, strict=True):
        trainable = [params[i] for i in indices if not rows[i].frozen]
        if trainable:
            groups.append({**group_dict(trainable, setting), "name": name})
    return groups
