"""Memory: after one step, the wrapper's optimizer state holds exactly the bytes the bare inner
optimizer holds for the trainable parameters (frozen ones hold none), and the wrapper keeps no copy
of any parameter: its groups hold the model's own tensors, and every tensor reachable from it is a
model parameter or optimizer state. The timed part is the first step (it allocates the state),
interleaved with the bare optimizer's first step."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn as nn

import lrgroups

from .harness import Interleaved, Variant, measure, scaled
from .workloads import DEVICE, OPTIMIZERS, bare_like, model_for, wrapped

MODEL = "vit_small_patch16_224"
FROZEN = "blocks.[0-5].*"  # half the blocks frozen


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        value.nbytes for state in opt.state.values() for value in state.values() if isinstance(value, torch.Tensor)
    )


def expected_state_bytes(optimizer: str, trainable: list[torch.Tensor], step_nbytes: int) -> int:
    """What the inner optimizer needs by construction: AdamW keeps exp_avg and exp_avg_sq (two
    tensors the size of the parameter) and a step scalar per parameter; SGD with momentum one
    momentum buffer."""
    param_bytes = sum(p.nbytes for p in trainable)
    if optimizer.startswith("adamw"):
        return 2 * param_bytes + step_nbytes * len(trainable)
    return param_bytes


def reachable_tensors(root: Any) -> dict[int, torch.Tensor]:
    """Tensors reachable from ``root`` through containers, dataclasses and lrgroups/torch.optim
    objects (modules are not entered: they hold the model's own tensors)."""
    found: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            found[id(obj)] = obj
        elif isinstance(obj, nn.Module):
            continue
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            stack.extend(getattr(obj, f.name) for f in dataclasses.fields(obj))
        elif type(obj).__module__.startswith(("lrgroups", "torch.optim")) and hasattr(obj, "__dict__"):
            stack.append(vars(obj))
    return found


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_state_memory(benchmark, optimizer: str) -> None:
    benchmark.group = "memory"
    model = model_for(MODEL)
    cls, kwargs = OPTIMIZERS[optimizer]
    params = dict(model.named_parameters())
    opt = wrapped(model, optimizer, lrgroups.Rule(FROZEN, frozen=True))
    bare = bare_like(opt, cls, kwargs)
    frozen = [p for name, p in params.items() if opt.is_frozen(name)]
    trainable = [p for name, p in params.items() if not opt.is_frozen(name)]

    def fresh(o: torch.optim.Optimizer) -> Variant:
        return Variant(o.step, setup=o.state.clear)

    timer = Interleaved({"bare": fresh(bare), "wrapped": fresh(opt)}, device=DEVICE, warmup=1)
    measure(benchmark, timer, scaled(5, 3), baseline="bare", budget_s=10.0, min_rounds=3)

    step_nbytes = max((s["step"].nbytes for s in opt.state.values() if isinstance(s.get("step"), torch.Tensor)), default=0)
    model_ids = {id(p) for p in params.values()}
    model_ptrs = {p.data_ptr() for p in params.values()}
    state_ids = {id(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)}
    group_params = [p for g in opt.param_groups for p in g["params"]]
    reachable = reachable_tensors(opt)
    other = [t for i, t in reachable.items() if i not in model_ids and i not in state_ids]
    record = {
        "section": "memory",
        "model": MODEL,
        "optimizer": optimizer,
        "frozen_pattern": FROZEN,
        "trainable_tensors": len(trainable),
        "frozen_tensors": len(frozen),
        "trainable_param_bytes": sum(p.nbytes for p in trainable),
        "frozen_param_bytes": sum(p.nbytes for p in frozen),
        "state_bytes": state_bytes(opt),
        "bare_state_bytes": state_bytes(bare),
        "expected_state_bytes": expected_state_bytes(optimizer, trainable, step_nbytes),
        "frozen_with_state": sum(1 for p in frozen if p in opt.state and opt.state[p]),
        "group_params_are_model_params": all(id(p) in model_ids for p in group_params),
        "group_params_share_model_storage": all(p.data_ptr() in model_ptrs for p in group_params),
        "group_params_are_trainable_params": {id(p) for p in group_params} == {id(p) for p in trainable},
        "state_aliases_params": sum(
            1 for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.numel() > 1 and v.data_ptr() in model_ptrs
        ),
        "other_tensors": len(other),
        "other_tensor_bytes": sum(t.nbytes for t in other),
    }
    benchmark.extra_info.update(record)
    assert record["state_bytes"] == record["bare_state_bytes"] == record["expected_state_bytes"]
    assert record["frozen_with_state"] == 0
    assert record["group_params_are_model_params"] and record["group_params_share_model_storage"]
    assert record["group_params_are_trainable_params"]
    assert record["state_aliases_params"] == 0
    assert record["other_tensor_bytes"] == 0, [tuple(t.shape) for t in other][:10]
