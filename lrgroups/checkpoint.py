"""Optimizer checkpoints by parameter name: the format of a LayerwiseOptimizer checkpoint, written,
validated and read onto a layout.

A :class:`~lrgroups.LayerwiseOptimizer` state dict is torch's (``state``, ``param_groups`` with
``param_names``) plus one extra key, ``"lrgroups"``, holding what torch's layout cannot say: every
parameter's name and settings (frozen ones included), who froze what, and the state kept aside
for frozen parameters (:func:`layout` writes it). This module reads such a dict, or a bare torch
optimizer's, into per-name state and translates it onto an optimizer's layout (:func:`translate`),
checking that it fits the parameters (pure functions: no optimizer is changed here; the
optimizer's ``load_state_dict`` applies the result as one transaction).

The layout is read from *slots*: one :class:`lrgroups.groups.Slot` per parameter, in plan order
(its plan row, parameter, group index, who froze it now and the state kept aside while frozen).

Example:
    >>> import torch
    >>> from lrgroups.checkpoint import names_by_group
    >>> names_by_group({"state": {}, "param_groups": [{"params": [0, 1], "param_names": ["a", "b"]}]}, [])
    [['a', 'b']]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import torch

from ._util import SHOWN, first_names

if TYPE_CHECKING:
    from .groups import Slot
    from .rules import ParamPlan

__all__ = [
    "CheckpointMismatchError",
    "FORMAT",
    "cast_like_torch",
    "has_stepped",
    "layout",
    "layout_problems",
    "names_by_group",
    "settings",
    "shape_problems",
    "state_by_name",
    "translate",
]

#: The format tag of the ``"lrgroups"`` key of a LayerwiseOptimizer state dict.
FORMAT = "lrgroups.LayerwiseOptimizer/2"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit this model and rule set; the message lists every difference."""


def names_by_group(state_dict: Mapping[str, Any], positional: Sequence[Sequence[str]]) -> list[list[str]]:
    """The parameter names of each saved group: its ``param_names``, else its ``params`` when they
    are names already (``torch.distributed.checkpoint`` writes fully qualified names), else the
    integer ids mapped onto ``positional`` (candidate name orders; the first whose length equals
    the saved parameter count is used: e.g. every parameter of the model, then the trainable ones).

    Raises:
        CheckpointMismatchError: integer ids and no candidate with as many names.
    """
    groups = state_dict["param_groups"]
    if all("param_names" in group or all(isinstance(p, str) for p in group["params"]) for group in groups):
        return [list(group.get("param_names", group["params"])) for group in groups]
    count = sum(len(group["params"]) for group in groups)
    order = next((names for names in positional if len(names) == count), None)
    if order is None:
        sizes = " or ".join(str(len(names)) for names in positional)
        raise CheckpointMismatchError(
            f"the checkpoint's param groups hold {count} parameters without names; this optimizer maps "
            f"unnamed parameters by position onto {sizes} parameters (save with named parameters, or "
            "build the optimizer over the same parameters)"
        )
    names, start = [], 0
    for group in groups:
        names.append(list(order[start : start + len(group["params"])]))
        start += len(group["params"])
    return names


def state_by_name(state_dict: Mapping[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """Per-parameter state keyed by parameter name (``names`` from :func:`names_by_group`)."""
    key_to_name = {
        key: name
        for group, group_names in zip(state_dict["param_groups"], names, strict=True)
        for key, name in zip(group["params"], group_names, strict=True)
    }
    return {key_to_name[key]: value for key, value in state_dict["state"].items() if key in key_to_name}


def _fits(value: torch.Size, param: torch.Size) -> bool:
    """A state tensor fits its parameter when it has the parameter's shape, or is a reduction of it:
    the same number of dims each equal or 1 (Adafactor's row/column factors), or fewer dims that
    appear in order among the parameter's (timm's factored second moments). Scalars always fit."""
    if len(value) == 0 or value == param:
        return True
    if len(value) == len(param):
        return all(v in (p, 1) for v, p in zip(value, param, strict=True))
    if len(value) > len(param):
        return False
    remaining = iter(param)
    return all(any(v == p for p in remaining) for v in value)


def shape_problems(states: Mapping[str, Any], params: Mapping[str, torch.Tensor]) -> list[str]:
    """One line per state tensor whose shape does not fit its parameter (see ``_fits``)."""
    problems = []
    for name, state in states.items():
        shape = params[name].shape
        for key, value in (state.items() if isinstance(state, Mapping) else ()):
            if isinstance(value, torch.Tensor) and not _fits(value.shape, shape):
                problems.append(
                    f"{name}: state {key!r} has shape {tuple(value.shape)}, the parameter {tuple(shape)}"
                )
    return problems


def cast_like_torch(param: torch.Tensor, value: Any, group: Mapping[str, Any], key: str | None = None) -> Any:
    """``value`` cast the way ``torch.optim.Optimizer.load_state_dict`` casts loaded state
    (``Optimizer._process_value_according_to_param_policy``): ``step`` stays as saved unless the
    group is fused or capturable (then float32 on the parameter's device); other tensors move to
    the parameter's device, and to its dtype when it is floating point; containers are rebuilt."""
    if isinstance(value, torch.Tensor):
        if key == "step":
            if group.get("fused", False) or group.get("capturable", False):
                return value.to(dtype=torch.float32, device=param.device)
            return value
        if param.is_floating_point():
            return value.to(dtype=param.dtype, device=param.device)
        return value.to(device=param.device)
    if isinstance(value, dict):
        return {k: cast_like_torch(param, v, group, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cast_like_torch(param, v, group) for v in value)
    return value


# ---------------------------------------------------------------- the "lrgroups" key: write, validate, translate
def settings(row: ParamPlan, weight_decay: Any = None) -> dict[str, Any]:
    """The settings of one parameter as a checkpoint records them.

    Args:
        row: its :class:`~lrgroups.ParamPlan`.
        weight_decay: the weight decay its group starts with, used where no rule set one (the inner
            optimizer's default; ``None`` when it has none).

    Returns:
        ``{"optimizer", "lr", "weight_decay", "options"}``.
    """
    decay = row.weight_decay if row.weight_decay is not None else weight_decay
    return {"optimizer": row.optimizer, "lr": row.lr, "weight_decay": decay, "options": dict(row.options)}


def layout(slots: Sequence[Slot], slot_settings: Sequence[Mapping[str, Any]], *, stepped: bool,
           mode: str | None = None) -> dict[str, Any]:
    """The ``"lrgroups"`` entry of a state dict (see ``LayerwiseOptimizer.state_dict``).

    Args:
        slots: one per parameter, in plan order (see the module docstring).
        slot_settings: :func:`settings` of each slot.
        stepped: whether the first step's ratio check has run.
        mode: the last mode switch forwarded to the inner optimizers (``"train"``, ``"eval"``;
            ``None``: none yet), for schedule-free optimizers.

    Returns:
        ``format``, ``names``, ``settings``, ``groups``, ``frozen`` (``{name: owner}``),
        ``planned_frozen``, ``kept`` (``{name: state}``), ``stepped`` and, once a mode was switched,
        ``mode``: plain values and tensors.
    """
    return {
        "format": FORMAT,
        "names": [slot.row.name for slot in slots],
        "settings": [dict(entry) for entry in slot_settings],
        "groups": [slot.group for slot in slots],
        "frozen": {slot.row.name: slot.frozen_by for slot in slots if slot.frozen_by is not None},
        "planned_frozen": [slot.row.name for slot in slots if slot.row.frozen],
        "kept": {slot.row.name: slot.kept for slot in slots if slot.kept is not None},
        "stepped": stepped,
        **({} if mode is None else {"mode": mode}),
    }


def has_stepped(state_dict: Mapping[str, Any]) -> bool:
    """Whether a checkpoint comes from an optimizer past its first step: its lrgroups layout says so;
    a torch-layout one (no layout) when it holds any per-parameter state.

    Args:
        state_dict: the checkpoint.

    Returns:
        Whether the optimizer that saved it had stepped.

    Example:
        >>> has_stepped({"state": {}, "param_groups": []}), has_stepped({"state": {0: {}}, "param_groups": []})
        (False, True)
    """
    saved = state_dict.get("lrgroups")
    if saved is not None and "stepped" in saved:
        return bool(saved["stepped"])
    return saved is not None or bool(state_dict["state"])


def layout_problems(saved: Mapping[str, Any], slots: Sequence[Slot],
                    slot_settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every way a saved layout differs from the one of ``slots``, each a line naming the first
    parameters concerned and how many more.

    Args:
        saved: the ``"lrgroups"`` entry of a checkpoint.
        slots: the loading optimizer's slots (see the module docstring).
        slot_settings: :func:`settings` of each slot.

    Returns:
        The problems (empty: the layouts agree).
    """
    if saved.get("format") != FORMAT:
        return [f"not a LayerwiseOptimizer checkpoint (format {saved.get('format')!r}, expected {FORMAT!r})"]
    problems = []
    names = [slot.row.name for slot in slots]
    saved_names, own_names = set(saved["names"]), set(names)
    missing = [n for n in names if n not in saved_names]
    unexpected = [n for n in saved["names"] if n not in own_names]
    if missing:
        problems.append(f"parameters missing from the checkpoint: {first_names(missing)}")
    if unexpected:
        problems.append(f"parameters in the checkpoint but not in the model: {first_names(unexpected)}")
    if missing or unexpected:
        return problems
    if saved["names"] != names:
        problems.append("parameters are in a different order")
    differing = [f"{slot.row.name}: rules give {ours}, checkpoint has {theirs}"
                 for slot, ours, theirs in zip(slots, slot_settings, saved["settings"], strict=True) if dict(ours) != theirs]
    problems += differing[:SHOWN]
    if len(differing) > SHOWN:
        problems.append(f"... and {len(differing) - SHOWN} more parameters whose settings differ")
    if list(saved["groups"]) != [slot.group for slot in slots]:
        problems.append("group layout differs (the rules produce different groups)")
    if "planned_frozen" in saved:  # what the rules (and requires_grad at build) froze, not the frozen set now
        before = set(saved["planned_frozen"])
        ours = {slot.row.name for slot in slots if slot.row.frozen}
        newly = [n for n in names if n in ours - before]
        thawed = [n for n in names if n in before - ours]
        if thawed:
            problems.append(f"frozen at build in the checkpoint (its rules or the model), trainable under these "
                            f"rules: {first_names(thawed)}")
        if newly:
            problems.append(f"frozen at build by these rules (or the model), trainable in the checkpoint: "
                            f"{first_names(newly)}")
    return problems


def translate(
    state_dict: Mapping[str, Any],
    slots: Sequence[Slot],
    slot_settings: Sequence[Mapping[str, Any]],
    param_groups: Sequence[Mapping[str, Any]],
    per_parameter: Iterable[str],
) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """A checkpoint translated onto the layout of ``slots``: this format's, one that went through
    ``torch.distributed.checkpoint`` (no ``"lrgroups"`` key), or a bare torch optimizer's.

    Args:
        state_dict: the checkpoint.
        slots: the loading optimizer's slots (see the module docstring).
        slot_settings: :func:`settings` of each slot.
        param_groups: the loading optimizer's ``param_groups`` (their hyperparameters are kept
            where the checkpoint's groups do not map onto them one to one).
        per_parameter: the names whose state has the shape of their parameter (not L-BFGS's flat
            history), whose shapes are checked.

    Returns:
        ``(frozen, kept, torch_part)``: the frozen set ``{name: owner}``, the kept-aside state
        ``{name: state}`` and a torch-layout state dict for this layout (integer ids in plan order
        of the trainable parameters, ``param_names`` in every group).

    Raises:
        CheckpointMismatchError: it does not fit, listing every difference; nothing is changed.
    """
    if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
        raise CheckpointMismatchError("not an optimizer state dict: it needs 'state' and 'param_groups'")
    names = [slot.row.name for slot in slots]
    params = {slot.row.name: slot.param for slot in slots}
    group_slots: list[list[Slot]] = [[] for _ in param_groups]
    for slot in slots:
        group_slots[slot.group].append(slot)
    per_parameter = set(per_parameter)
    saved = state_dict.get("lrgroups")
    problems: list[str] = []
    if saved is not None:
        problems = layout_problems(saved, slots, slot_settings)
        if problems:
            raise CheckpointMismatchError("checkpoint does not fit this model/rules:\n  " + "\n  ".join(problems))
        frozen = dict(saved["frozen"])
        kept = dict(saved["kept"])
    else:
        frozen = {slot.row.name: slot.frozen_by for slot in slots if slot.frozen_by is not None}
        kept = {}
    trainable = [name for name in names if name not in frozen]
    saved_names = names_by_group(state_dict, [names, trainable])
    unexpected = sorted({n for group in saved_names for n in group} - set(names))
    if unexpected:
        raise CheckpointMismatchError(f"parameters in the checkpoint but not in the model: {first_names(unexpected)}")
    by_name = state_by_name(state_dict, saved_names)
    if saved is not None:
        implied = [name for group in saved_names for name in group]
        expected = [slot.row.name for g in group_slots for slot in g if slot.row.name not in frozen]
        if sorted(implied) != sorted(expected):
            problems.append("the checkpoint's param groups do not hold the trainable parameters its frozen set implies")
    else:
        kept = {name: state for name, state in by_name.items() if name in frozen}
    problems += shape_problems({n: s for n, s in by_name.items() if n in per_parameter}, params)
    problems += shape_problems({n: s for n, s in kept.items() if n in per_parameter}, params)
    if problems:
        shown = problems[: 2 * SHOWN] + ([f"... and {len(problems) - 2 * SHOWN} more"]
                                         if len(problems) > 2 * SHOWN else [])
        raise CheckpointMismatchError("checkpoint does not fit this model/rules:\n  " + "\n  ".join(shown))
    same_layout = len(saved_names) == len(param_groups) and all(
        set(group) <= {slot.row.name for slot in members} for group, members in zip(saved_names, group_slots, strict=True)
    )
    groups, state, next_id = [], {}, 0
    for g, members in enumerate(group_slots):
        hyper = {k: v for k, v in param_groups[g].items() if k not in ("params", "param_names")}
        if same_layout:
            hyper.update({k: v for k, v in state_dict["param_groups"][g].items() if k not in ("params", "param_names")})
        trained = [slot.row.name for slot in members if slot.row.name not in frozen]
        ids = list(range(next_id, next_id + len(trained)))
        next_id += len(trained)
        state.update({i: by_name[name] for i, name in zip(ids, trained, strict=True) if name in by_name})
        groups.append({**hyper, "params": ids, "param_names": trained})
    others = {key: value for key, value in state_dict.items() if key not in ("state", "param_groups")}
    return frozen, kept, {**others, "state": state, "param_groups": groups}
