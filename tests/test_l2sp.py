"""L2SP: decoupled decay toward the starting point, bitwise equal to a hand-written reference loop."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

import lrgroups
from lrgroups import L2SP, recipes

HEAD = ("4.weight", "4.bias")


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 2))


def _data(steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=g) for _ in range(steps)]


def _loss(model, x):
    return model(x).square().mean()


def _reference_l2sp(params, anchors, lrs, alpha, beta):
    """The decoupled L2-SP update written out: p -= lr*alpha*(p - p0) for anchored parameters,
    p *= 1 - lr*beta for the others; parameters without a gradient are skipped."""
    with torch.no_grad():
        for name, p in params.items():
            if p.grad is None:
                continue
            if name in anchors:
                p.add_(p - anchors[name], alpha=-lrs[name] * alpha)
            else:
                p.mul_(1 - lrs[name] * beta)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.0),
])
def test_l2sp_equals_the_reference_loop_bitwise_with_a_scheduler(make):
    """Plain torch optimizer + LR scheduler: the hooked run equals explicit L2-SP before each step,
    with each step's scheduled lr and the pretrained weights as anchors."""
    model, reference = _mlp(), _mlp()
    anchors = {n: p.detach().clone() for n, p in reference.named_parameters() if n not in HEAD}
    opt, ref_opt = make(model.parameters()), make(reference.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, 2, 0.5)
    L2SP(model, opt, alpha=0.3, beta=0.2)
    for x in _data(6):
        _loss(model, x).backward()
        opt.step(), opt.zero_grad(), sched.step()
        _loss(reference, x).backward()
        lr = ref_opt.param_groups[0]["lr"]
        _reference_l2sp(dict(reference.named_parameters()), anchors, dict.fromkeys(anchors | dict.fromkeys(HEAD), lr), 0.3, 0.2)
        ref_opt.step(), ref_opt.zero_grad(), ref_sched.step()
    assert _same(model, reference)
    assert not torch.equal(model[0].weight, anchors["0.weight"])


def test_l2sp_on_layerwise_optimizer_with_a_later_unfreeze_equals_the_reference():
    """LayerwiseOptimizer with layer decay; the first layer frozen until step 3, then unfrozen.
    Reference: plain SGD with the same per-parameter lrs, the first layer without gradient until
    step 3. Its anchor is copied only when it first trains, and is its pretrained value."""
    model, reference = _mlp(), _mlp()
    pretrained = {n: p.detach().clone() for n, p in reference.named_parameters()}
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9,
                                      rules=[lrgroups.layer_decay(0.5), lrgroups.Rule("0.*", frozen=True)])
    l2sp = L2SP(model, opt, alpha=0.5, beta=0.1)
    assert sorted(l2sp.anchors) == ["2.bias", "2.weight"]
    lrs = dict(zip(opt.explain().name, opt.explain().lr, strict=True))
    ref_opt = torch.optim.SGD([{"params": [p], "lr": lrs[n]} for n, p in reference.named_parameters()], momentum=0.9)
    anchors = {n: pretrained[n] for n in pretrained if n not in HEAD}
    for step, x in enumerate(_data(6)):
        if step == 3:
            opt.unfreeze("0.*")
        _loss(model, x).backward()
        opt.step(), opt.zero_grad()
        _loss(reference, x).backward()
        if step < 3:
            reference[0].weight.grad = reference[0].bias.grad = None
        _reference_l2sp(dict(reference.named_parameters()), anchors, lrs, 0.5, 0.1)
        ref_opt.step(), ref_opt.zero_grad()
    assert _same(model, reference)
    assert torch.equal(l2sp.anchors["0.weight"], pretrained["0.weight"])


def test_anchor_selector_and_remove():
    model = _mlp()
    start = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    l2sp = L2SP(model, opt, alpha=1.0, anchor="*")  # every parameter, head included, pulled fully back
    assert sorted(l2sp.anchors) == sorted(n for n, _ in model.named_parameters())
    _loss(model, _data(1)[0]).backward()
    opt.zero_grad(set_to_none=False)  # zero gradients: SGD leaves p as is, only L2-SP acts
    with torch.no_grad():  # move away from the start; the decoupled step with lr*alpha = 1 returns to it
        for p in model.parameters():
            p.add_(1.0)
    opt.step()
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(model.parameters(), start.parameters(), strict=True))
    l2sp.remove()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    opt.step()
    assert torch.allclose(model[0].weight, start[0].weight + 1.0)


def test_bad_input_fails_clearly():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        L2SP(model, opt, alpha=-1.0)
    with pytest.raises(ValueError, match="matches no parameter"):
        L2SP(model, opt, alpha=0.1, anchor="backbone.*")
    with pytest.raises(ValueError, match="not the model's"):
        L2SP(_mlp(), opt, alpha=0.1)
    with pytest.warns(UserWarning, match="weight_decay > 0"):
        L2SP(model, torch.optim.AdamW(model.parameters()), alpha=0.1)
    with pytest.raises(ValueError, match="beta must be"):
        recipes.l2_sp(beta=float("nan"))


@given(st.integers(1, 4))
def test_resumed_l2sp_continues_bitwise(stop_at):
    """Saving the anchors (and optimizer) at any step and loading them into a fresh model, optimizer
    and L2SP gives bitwise the parameters of the uninterrupted run."""
    data = _data(5)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    l2sp = L2SP(model, opt, alpha=0.4, beta=0.1)
    for step, x in enumerate(data):
        if step == stop_at:
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "l2sp": l2sp.state_dict()}, buffer)
        _loss(model, x).backward()
        opt.step(), opt.zero_grad()
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _mlp(seed=5)
    resumed.load_state_dict(saved["model"])
    resumed_opt = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    resumed_opt.load_state_dict(saved["opt"])
    L2SP(resumed, resumed_opt, alpha=0.4, beta=0.1).load_state_dict(saved["l2sp"])
    for x in data[stop_at:]:
        _loss(resumed, x).backward()
        resumed_opt.step(), resumed_opt.zero_grad()
    assert _same(model, resumed)
    with pytest.raises(ValueError, match="not anchored here: 4.weight"):
        l2sp.load_state_dict({"anchors": {"4.weight": torch.zeros(2, 5)}})


def test_l2_sp_recipe_builds_l2sp_and_replaces_weight_decay():
    model = _mlp()
    tuning = recipes.l2_sp(alpha=0.2, beta=0.05).build(model, torch.optim.AdamW, lr=0.01)
    assert set(tuning.optimizer.explain().weight_decay) == {0.0}
    assert (tuning.l2sp.alpha, tuning.l2sp.beta) == (0.2, 0.05) and sorted(tuning.l2sp.anchors) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert tuning.state_dict()["l2sp"]["anchors"].keys() == tuning.l2sp.anchors.keys()
    with pytest.raises(ValueError, match="pass weight_decay=0"):
        recipes.l2_sp().build(_mlp(), torch.optim.AdamW, lr=0.01, weight_decay=0.05)


def test_parameters_without_gradient_are_untouched_and_cost_no_anchor():
    """As torch's optimizers do, L2-SP skips a parameter whose .grad is None (frozen by the user but
    still in the optimizer): bitwise unchanged, no anchor copied."""
    model = _mlp()
    model[0].requires_grad_(False)
    before = model[0].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    l2sp = L2SP(model, opt, alpha=0.5, beta=0.5)
    for x in _data(3):
        _loss(model, x).backward()
        opt.step(), opt.zero_grad()
    assert torch.equal(model[0].weight, before) and sorted(l2sp.anchors) == ["2.bias", "2.weight"]
