"""lrgroups.inner: reading the optimizer argument, the inner optimizers' defaults, building one."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn

from lrgroups.inner import accepts, base_value, build_inner, check_factory, factory_name, specs, unprofiled_step


def test_specs_read_one_or_several_optimizers_and_refuse_instances():
    assert specs(torch.optim.SGD, {"momentum": 0.9}) == {None: (torch.optim.SGD, {"momentum": 0.9})}
    several = specs({"muon": torch.optim.SGD, "adamw": (torch.optim.AdamW, {"betas": (0.9, 0.95)})}, {})
    assert list(several) == ["muon", "adamw"] and several["adamw"][1] == {"betas": (0.9, 0.95)}
    with pytest.raises(TypeError, match="each its own keyword arguments"):
        specs({"a": torch.optim.SGD}, {"momentum": 0.9})
    with pytest.raises(ValueError, match="at least one"):
        specs({}, {})
    with pytest.raises(TypeError, match="not an instance"):
        check_factory(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    with pytest.raises(TypeError, match="callable"):
        check_factory("adamw")


def test_defaults_are_the_inner_optimizers_own():
    assert base_value("weight_decay", None, torch.optim.AdamW, {}, required=False) == 0.01
    assert base_value("weight_decay", 0.1, torch.optim.AdamW, {}, required=False) == 0.1
    assert base_value("weight_decay", 0.1, torch.optim.AdamW, {"weight_decay": 0.2}, required=False) == 0.2
    assert base_value("lr", None, torch.optim.SGD, {}, required=True) == 1e-3
    with pytest.raises(ValueError, match="has no default lr"):
        base_value("lr", None, lambda groups, lr: torch.optim.SGD(groups, lr=lr), {}, required=True)
    assert accepts(torch.optim.SGD, "nesterov") and not accepts(torch.optim.Adadelta, "nesterov")
    assert accepts(lambda groups, **kw: None, "anything") and factory_name(torch.optim.AdamW) == "AdamW"


def test_build_inner_names_the_factory_and_unprofiled_step_skips_torchs_wrapper():
    param = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"could not build SGD \('fast'\) from 1 param groups"):
        build_inner(torch.optim.SGD, [{"params": [param]}], {"lr": -1.0}, "fast", None, None)
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        build_inner(lambda groups, **kw: object(), [{"params": [param]}], {}, None, 0.1, None)
    optimizer = build_inner(torch.optim.SGD, [{"params": [param]}], {}, None, 0.5, None)
    step = unprofiled_step(optimizer)
    assert "profile" not in getattr(step.func, "__qualname__", "") and inspect.signature(step).parameters
    param.grad = torch.ones(2)
    step()
    assert torch.equal(param.detach(), torch.full((2,), 0.5))
