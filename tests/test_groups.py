"""lrgroups.groups: the pure step from a plan to torch param groups."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from strategies import module_trees, rule_lists

import lrgroups


def _set_grads(params, step):
    generator = torch.Generator().manual_seed(step)
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator) if param.requires_grad else None


@pytest.mark.parametrize("foreach", [False, True])
@given(st.data())
def test_param_groups_given_to_a_bare_adamw_train_bitwise_like_the_wrapper(foreach, data):
    """For any module tree and rule list: a bare torch.optim.AdamW over lrgroups.param_groups(...)
    (the rule-frozen parameters' requires_grad set by hand, since the pure function changes nothing)
    trains bitwise like LayerwiseOptimizer over a copy of the same model with the same rules: same
    groups, same lr and weight decay per group, same parameters after every step."""
    tree = data.draw(module_trees())
    rules = data.draw(rule_lists(max(lrgroups.param_depths(tree).values())))
    reference = copy.deepcopy(tree)
    requires_grad = [p.requires_grad for p in reference.parameters()]
    groups = lrgroups.param_groups(reference, lr=1e-2, weight_decay=0.1, rules=rules)
    assert [p.requires_grad for p in reference.parameters()] == requires_grad  # pure: nothing changed
    opt = lrgroups.LayerwiseOptimizer(tree, torch.optim.AdamW, lr=1e-2, weight_decay=0.1, rules=rules, foreach=foreach)
    by_name = dict(reference.named_parameters())
    for row in opt.plan:
        by_name[row.name].requires_grad_(not row.frozen)
    bare = torch.optim.AdamW(groups or [{"params": []}], foreach=foreach)
    trained = [g for g in opt.param_groups if g["params"]]
    assert [(g["lr"], g["weight_decay"], g["name"], len(g["params"])) for g in bare.param_groups if g["params"]] == [
        (g["lr"], g["weight_decay"], g["name"], len(g["params"])) for g in trained]
    for step in range(3):
        _set_grads(list(tree.parameters()), step)
        _set_grads(list(reference.parameters()), step)
        opt.step()
        bare.step()
    for (name, a), b in zip(tree.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_param_groups_leave_weight_decay_to_the_optimizer_and_carry_options():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    groups = lrgroups.param_groups(model, lr=0.1, rules=[lrgroups.Rule("1.*", options={"momentum": 0.9})])
    assert [sorted(k for k in g if k != "params") for g in groups] == [["lr", "name"], ["lr", "momentum", "name"]]
    sgd = torch.optim.SGD(groups, weight_decay=0.01)
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.01, 0.01] and sgd.param_groups[1]["momentum"] == 0.9


def test_param_groups_refuse_routing_to_named_optimizers():
    with pytest.raises(ValueError, match="one optimizer was given"):
        lrgroups.param_groups(nn.Linear(2, 2), lr=0.1, rules=[lrgroups.Rule("bias", inner="adamw")])
