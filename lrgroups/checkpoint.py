"""Optimizer checkpoints by parameter name: reading torch-layout state dicts onto a layout.

A :class:`~lrgroups.LayerwiseOptimizer` state dict is torch's (``state``, ``param_groups`` with
``param_names``) plus one extra key, ``"lrgroups"``, holding what torch's layout cannot say: every
parameter's name and settings (frozen ones included), who froze what, and the state kept aside
for frozen parameters. This module reads such a dict, or a bare torch optimizer's, into per-name
state (pure functions, no optimizer is changed here) and checks that it fits the parameters.

Example:
    >>> import torch
    >>> from lrgroups.checkpoint import names_by_group
    >>> names_by_group({"state": {}, "param_groups": [{"params": [0, 1], "param_names": ["a", "b"]}]}, [])
    [['a', 'b']]
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

__all__ = ["CheckpointMismatchError", "names_by_group", "state_by_name", "shape_problems", "cast_like_torch"]

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
        for group, group_names in zip(state_dict["param_groups"], names)
        for key, name in zip(group["params"], group_names)
    }
    return {key_to_name[key]: value for key, value in state_dict["state"].items() if key in key_to_name}


def _fits(value: torch.Size, param: torch.Size) -> bool:
    """A state tensor fits its parameter when it has the parameter's shape, or is a reduction of it:
    the same number of dims each equal or 1 (Adafactor's row/column factors), or fewer dims that
    appear in order among the parameter's (timm's factored second moments). Scalars always fit."""
    if len(value) == 0 or value == param:
        return True
    if len(value) == len(param):
        return all(v in (p, 1) for v, p in zip(value, param))
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
