"""Issue 27, the optimizer core: schedule-free inner optimizers (train/eval), stale gradients of
parameters thawed the torch way, inner optimizers that keep their state elsewhere (timm's
Lookahead), torch's ``required`` lr marker and Adafactor's relative step, SparseAdam with a tensor lr."""

from __future__ import annotations

import copy
import io
import time
import warnings

import pytest
import schedulefree
import timm.optim
import torch
import torch.nn as nn
import transformers.optimization

import lrgroups


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def _backward(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    model(torch.randn(5, 3, generator=generator)).pow(2).sum().backward()


# ------------------------------------------------------------------ item 17: required lr, Adafactor's relative step
def test_required_lr_marker_says_there_is_no_default_lr_and_rules_can_give_every_lr():
    """timm's SGDP declares ``lr=required`` (torch's marker): without an lr the error says that it has
    no default lr and names the parameters no rule gives one (not ``float() ... _RequiredParameter``);
    when rules give every parameter an absolute lr, the wrapper builds and steps bitwise as the bare
    SGDP with those lrs."""
    with pytest.raises(ValueError, match=r"SGDP has no default lr: pass lr=.*no rule sets one for 0.weight"):
        lrgroups.LayerwiseOptimizer(_model(), timm.optim.SGDP)
    with pytest.raises(ValueError, match=r"SGDP has no default lr.*no rule sets one for 2.weight, 2.bias$"):
        lrgroups.LayerwiseOptimizer(_model(), timm.optim.SGDP, rules=[lrgroups.Rule("0.*", lr=0.1)])
    model, reference = _model(), _model()
    opt = lrgroups.LayerwiseOptimizer(model, timm.optim.SGDP, momentum=0.9,
                                      rules=[lrgroups.Rule("*", lr=0.1), lrgroups.Rule("0.*", lr=0.01)])
    bare = timm.optim.SGDP([{"params": list(reference[0].parameters()), "lr": 0.01},
                            {"params": list(reference[2].parameters()), "lr": 0.1}], momentum=0.9)
    for step in range(3):
        for m, o in ((model, opt), (reference, bare)):
            o.zero_grad()
            _backward(m, step)
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters(), strict=True))
    with pytest.raises(ValueError, match="per_group needs a base lr"):
        opt.per_group(1.0)


@pytest.mark.parametrize("adafactor", [timm.optim.Adafactor, transformers.optimization.Adafactor],
                         ids=["timm", "transformers"])
def test_adafactor_relative_step_is_wrapped_and_lr_rules_are_refused(adafactor):
    """Adafactor with ``lr=None`` computes its own lr at every step (relative step): the wrapper
    builds it without an lr (groups carry none, ``explain()`` shows ``None``), steps bitwise as the
    bare optimizer with weight-decay rules and frozen parameters, and refuses any rule that would set
    or scale an lr (it could not apply), naming the parameters."""
    with pytest.raises(ValueError, match=r"computes its own lr.*rules do for 0.weight, 0.bias: pass lr="):
        lrgroups.LayerwiseOptimizer(_model(), adafactor, rules=[lrgroups.layer_decay(0.5)])
    with pytest.raises(ValueError, match=r"computes its own lr.*rules do for 2.bias"):
        lrgroups.LayerwiseOptimizer(_model(), adafactor, rules=[lrgroups.Rule("2.bias", lr_mult=2.0)])
    model, reference = _model(), _model()
    opt = lrgroups.LayerwiseOptimizer(model, adafactor, weight_decay=0.1,
                                      rules=[lrgroups.no_weight_decay(), lrgroups.Rule("0.bias", frozen=True)])
    assert opt.explain()["lr"].isna().all() and all(group["lr"] is None for group in opt.param_groups)
    bare = adafactor([{"params": [reference[0].weight, reference[2].weight]},
                      {"params": [reference[2].bias], "weight_decay": 0.0}], weight_decay=0.1)
    reference[0].bias.requires_grad_(False)
    for step in range(3):
        for m, o in ((model, opt), (reference, bare)):
            o.zero_grad()
            _backward(m, step)
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters(), strict=True))
    assert opt.summary()["current_lr"].notna().all() or adafactor is transformers.optimization.Adafactor
    # with an lr the rules apply as for any optimizer
    lrgroups.LayerwiseOptimizer(_model(), adafactor, lr=1e-3, rules=[lrgroups.layer_decay(0.5)],
                                **({"relative_step": False} if adafactor is transformers.optimization.Adafactor else {}))


# ------------------------------------------------------------------ item 8: stale gradients of parameters thawed the torch way
@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_clears_frozen_parameters_and_step_warns_once_naming_them(set_to_none):
    """allenai/rslearn#217, newcomer finding 7: a parameter frozen by a rule and made trainable the
    torch way (``requires_grad_(True)``) collects gradients; ``zero_grad`` clears them as it clears
    the trainable ones (``None`` or zeros, as ``set_to_none`` says), the next ``step`` warns once,
    naming the parameter and ``opt.unfreeze``, at the user's line, and the frozen parameter does not
    move. Freezing the torch way (``requires_grad_(False)`` on a trainable one) is warned too."""
    model = _model()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("0.*", frozen=True)])
    model[0].weight.requires_grad_(True)  # the torch way, outside the optimizer
    before = model[0].weight.detach().clone()
    _backward(model, 0)
    with pytest.warns(UserWarning, match=r"0.weight is frozen but requires_grad=True.*opt.unfreeze\('0.weight'\)") as seen:
        opt.step()
    assert seen[0].filename == __file__
    opt.zero_grad(set_to_none=set_to_none)
    grad = model[0].weight.grad
    assert grad is None if set_to_none else torch.equal(grad, torch.zeros_like(grad))
    assert torch.equal(model[0].weight, before)
    _backward(model, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same disagreement is said once
        opt.step()
    model[2].bias.requires_grad_(False)
    with (pytest.warns(UserWarning, match=r"0.weight is frozen but requires_grad=True"),  # a new disagreement: all said again
          pytest.warns(UserWarning, match=r"2.bias is trainable but requires_grad=False.*opt.freeze\('2.bias'\)")):
        opt.step()


def test_the_step_check_costs_little_next_to_a_step():
    """The check ``step`` makes (frozen set against ``requires_grad``) is a scan over the parameter
    list; on a resnet50 (161 tensors, half frozen) it costs under 5% of an SGD step's time."""
    import torchvision

    model = torchvision.models.resnet50()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9,
                                      rules=[lrgroups.Rule("layer[12].*", frozen=True)])
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()

    def best(call, repeat=20):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return min(times)

    check = best(lambda: any(p.requires_grad for p in opt._frozen)
                 or not all(p.requires_grad for g in opt.param_groups for p in g["params"]))
    assert check < 0.05 * best(opt.step)


# ------------------------------------------------------------------ item 15: inner optimizers that keep their state elsewhere
def _lookahead(groups, **kwargs):
    return timm.optim.Lookahead(torch.optim.AdamW(groups, **kwargs), k=2)


def _train(model, opt, steps, scheduler=None, start=0):
    for step in range(start, start + steps):
        opt.zero_grad()
        _backward(model, step)
        opt.step()
        if scheduler is not None:
            scheduler.step()


def test_lookahead_state_is_the_wrappers_and_a_resume_continues_bitwise():
    """timm's Lookahead keeps its moments and slow weights in its base optimizer: through the wrapper
    they are in ``state_dict()['state']`` (torch's layout, by name), freezing drops them, and a resume
    (save after an unfreeze, ``torch.load(weights_only=True)``, fresh model and wrapper, the LR
    scheduler's state too) continues bitwise like the uninterrupted run."""

    def build(model):
        opt = lrgroups.LayerwiseOptimizer(model, _lookahead, lr=1e-2, weight_decay=0.1,
                                          rules=[lrgroups.no_weight_decay(), lrgroups.Rule("0.*", frozen=True)])
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    model = _model()
    opt, scheduler = build(model)
    _train(model, opt, 3, scheduler)
    opt.unfreeze("0.*")
    _train(model, opt, 2, scheduler, start=3)
    saved = opt.state_dict()
    assert {"exp_avg", "exp_avg_sq", "lookahead_slow_buff"} <= set(saved["state"][0])
    assert len(saved["state"]) == 4 and saved["param_groups"][0]["lookahead_step"] == 5
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": saved, "sched": scheduler.state_dict()}, buffer)
    _train(model, opt, 4, scheduler, start=5)

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = _model(seed=1)
    resumed.load_state_dict(checkpoint["model"])
    opt2, scheduler2 = build(resumed)
    opt2.load_state_dict(checkpoint["opt"])
    scheduler2.load_state_dict(checkpoint["sched"])
    _train(resumed, opt2, 4, scheduler2, start=5)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters(), strict=True))
    # the base optimizer steps the loaded groups (the scheduler's lr reaches it) and shares the state
    base = opt2.inner._base_optimizer
    assert base.param_groups[0] is opt2.param_groups[0] and base.state is opt2.state
    opt2.freeze("2.*")
    assert resumed[2].weight not in base.state


# ------------------------------------------------------------------ item 1: schedule-free inner optimizers



def _sf_pair(seed=0):
    """A wrapper over two schedule-free inner optimizers (AdamW for biases, SGD for weights) and the
    bare optimizers over the same parameters."""
    model, reference = _model(seed), _model(seed)
    opt = lrgroups.LayerwiseOptimizer(
        model, {"adamw": (schedulefree.AdamWScheduleFree, {"lr": 1e-2}),
                "sgd": (schedulefree.SGDScheduleFree, {"lr": 0.1, "momentum": 0.9})},
        rules=[lrgroups.Rule(ndim=2, inner="sgd")])
    bare = [schedulefree.AdamWScheduleFree([reference[0].bias, reference[2].bias], lr=1e-2),
            schedulefree.SGDScheduleFree([reference[0].weight, reference[2].weight], lr=0.1, momentum=0.9)]
    return model, opt, reference, bare


def test_train_and_eval_reach_every_schedule_free_inner_optimizer():
    """accelerate#4159, kohya-ss/sd-scripts#1667: ``opt.train()``/``opt.eval()`` switch every inner
    optimizer that has a mode switch: steps and the switch to the averaged weights are bitwise the
    bare schedule-free optimizers'; without ``train()`` the inner optimizer refuses to step, as bare."""
    model, opt, reference, bare = _sf_pair()
    with pytest.raises(Exception, match="not in train mode"):
        _backward(model, 0)
        opt.step()
    opt.zero_grad()
    opt.train()
    for o in bare:
        o.train()
    for step in range(3):
        opt.zero_grad()
        _backward(model, step)
        opt.step()
        for o in bare:
            o.zero_grad()
        _backward(reference, step)
        for o in bare:
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters(), strict=True))
    opt.eval()
    for o in bare:
        o.eval()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters(), strict=True))
    assert not any(group["train_mode"] for group in opt.param_groups)


def test_accelerates_optimizer_wrapper_switches_the_inner_optimizers():
    """accelerate's ``AcceleratedOptimizer`` (what the HF Trainer holds) forwards ``train()``/``eval()``
    when the optimizer has them (``hasattr(optimizer, "train")``): through it the inner schedule-free
    optimizers switch and step."""
    import accelerate

    model, opt, _, _ = _sf_pair()
    accelerator = accelerate.Accelerator(cpu=True)
    model, prepared = accelerator.prepare(model, opt)
    prepared.train()
    assert all(group["train_mode"] for group in opt.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    _backward(model, 0)
    prepared.step()
    prepared.zero_grad()
    assert not any(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    prepared.eval()
    assert not any(group["train_mode"] for group in opt.param_groups)


def test_schedule_free_unfreezing_is_hot_add_equivalent_and_freezing_keeps_the_averaged_point():
    """A frozen group unfrozen at step k, with eval/train switches between, gives bitwise the
    parameters of a run in which it sat in the optimizer with no gradient until k. A parameter
    frozen in training mode is moved to its averaged point x (bitwise what ``eval()`` gives it) and
    stays there through later switches; ``keep_state=True`` takes it back to y on unfreezing."""

    def run(frozen: bool):
        model = _model()
        opt = lrgroups.LayerwiseOptimizer(model, schedulefree.AdamWScheduleFree, lr=1e-2,
                                          rules=[lrgroups.Rule("0.*", frozen=True)] if frozen else [])
        opt.train()
        for step in range(6):
            if step == 3 and frozen:
                opt.unfreeze("0.*")
            if step == 2:
                opt.eval()
                opt.train()
            opt.zero_grad()
            _backward(model, step)
            if step < 3:
                model[0].weight.grad = model[0].bias.grad = None
            opt.step()
        return model, opt

    (hot, opt), (sat, _) = run(True), run(False)
    assert all(torch.equal(p, q) for p, q in zip(hot.parameters(), sat.parameters(), strict=True))

    reference = copy.deepcopy(opt)  # with copies of the parameters
    reference.eval()  # where eval() takes every parameter: the averaged point x
    x = reference.param_groups[0]["params"][2].detach().clone()  # 2.weight's
    y = hot[2].weight.detach().clone()
    assert not torch.equal(x, y)
    opt.freeze("2.weight", keep_state=True)
    assert torch.equal(hot[2].weight, x)
    opt.eval()
    opt.train()
    assert torch.equal(hot[2].weight, x)
    opt.unfreeze("2.weight")
    torch.testing.assert_close(hot[2].weight, y)  # back at y (one lerp each way: not bitwise)
    assert not torch.equal(hot[2].weight, x)


def test_schedule_free_resume_continues_bitwise():
    """A checkpoint taken in training mode (its z buffers in ``state``, ``train_mode`` in the groups,
    the mode in lrgroups' key) resumes in a fresh model and wrapper bitwise like the uninterrupted
    run, also across an unfreeze before the save and a freeze after the load."""

    def build(model):
        opt = lrgroups.LayerwiseOptimizer(model, schedulefree.AdamWScheduleFree, lr=1e-2,
                                          rules=[lrgroups.Rule("0.*", frozen=True)])
        opt.train()
        return opt

    model = _model()
    opt = build(model)
    _train(model, opt, 2)
    opt.unfreeze("0.*")
    _train(model, opt, 2, start=2)
    saved = opt.state_dict()
    assert "z" in saved["state"][0] and saved["lrgroups"]["mode"] == "train"
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": saved}, buffer)
    opt.freeze("2.bias")
    _train(model, opt, 3, start=4)
    opt.eval()

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = _model(seed=1)
    resumed.load_state_dict(checkpoint["model"])
    opt2 = lrgroups.LayerwiseOptimizer(resumed, schedulefree.AdamWScheduleFree, lr=1e-2,
                                       rules=[lrgroups.Rule("0.*", frozen=True)])
    opt2.load_state_dict(checkpoint["opt"])
    opt2.freeze("2.bias")
    _train(resumed, opt2, 3, start=4)
    opt2.eval()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters(), strict=True))


# ------------------------------------------------------------------ item 19: SparseAdam with a tensor lr
def _tensor_lr_run(mode: str, lr):
    """torch's ``test_tensor_lr`` for SparseAdam: a weight and a bias, five steps, sparse gradients."""
    torch.manual_seed(0)
    weight, bias, inputs = torch.randn(10, 5), torch.randn(10), torch.randn(5)
    model = nn.Linear(5, 10)
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
    params = [model.weight, model.bias]
    opt = (torch.optim.SparseAdam(params, lr=lr) if mode == "bare"
           else lrgroups.LayerwiseOptimizer(model, torch.optim.SparseAdam, lr=lr))
    for _ in range(5):
        opt.zero_grad()
        (model.weight.mv(inputs) + model.bias).pow(2).sum().backward()
        for p in params:
            p.grad = p.grad.to_sparse()
        opt.step()
    return params


def test_sparse_adam_with_a_tensor_lr_is_bitwise_the_bare_optimizer_with_the_same_tensor():
    """Reported: SparseAdam with ``lr=torch.tensor(1e-3)`` drifts from the bare optimizer by 6.5e-8
    (relative) after 5 steps. The wrapper is bitwise the bare SparseAdam given the same tensor lr;
    the drift is torch's own between a float32 tensor lr and the float ``1e-3`` (float32(1e-3) is
    1e-3 * (1 + 4.7e-8)), which torch's ``test_tensor_lr`` compares with a tolerance."""
    wrapped = _tensor_lr_run("wrapper", torch.tensor(1e-3))
    bare = _tensor_lr_run("bare", torch.tensor(1e-3))
    assert all(torch.equal(p, q) for p, q in zip(wrapped, bare, strict=True))
    as_float = _tensor_lr_run("bare", 1e-3)
    drift = max(float(((p - q).abs() / q.abs()).max().detach()) for p, q in zip(bare, as_float, strict=True))
    assert 1e-8 < drift < 1e-6  # the reported size: the bare optimizer's own tensor-vs-float difference
