"""LayerwiseOptimizer: group layout, equivalence with the bare optimizer, protocol compatibility."""

from __future__ import annotations

import contextlib
import copy

import pytest
import timm
import timm.optim
import timm.scheduler
import torch
import torch.nn as nn
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from strategies import module_trees, rule_lists
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import lrgroups

OPTIMIZERS = {
    "adamw": (torch.optim.AdamW, {}),
    "adamw_foreach": (torch.optim.AdamW, {"foreach": True}),
    "adam_foreach": (torch.optim.Adam, {"foreach": True}),
    "adam_single": (torch.optim.Adam, {"foreach": False}),
    "sgd_nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "sgd_momentum": (torch.optim.SGD, {"momentum": 0.9}),
}


def _tree_and_rules(data):
    tree = data.draw(module_trees())
    max_depth = max(lrgroups.param_depths(tree).values())
    return tree, data.draw(rule_lists(max_depth))


@given(st.data())
def test_every_trainable_parameter_in_exactly_one_group(data):
    """Every trainable parameter is in exactly one param group, frozen ones in none, tied weights
    appear once, and explain() agrees with param_groups (group index, lr, weight decay)."""
    tree, rules = _tree_and_rules(data)
    opt = lrgroups.LayerwiseOptimizer(tree, torch.optim.SGD, lr=1e-3, weight_decay=0.05, rules=rules)
    in_groups = [id(p) for group in opt.param_groups for p in group["params"]]
    assert len(in_groups) == len(set(in_groups))
    unique = {id(p): p for p in tree.parameters()}
    trainable = {i for i, p in unique.items() if p.requires_grad}
    assert set(in_groups) == trainable
    table = opt.explain()
    assert len(table) == len(unique)
    params = dict(tree.named_parameters())
    for row in table.itertuples():
        param = params[row.name]
        assert row.frozen == (not param.requires_grad)
        if row.frozen:
            assert row.group == -1
            continue
        group = opt.param_groups[row.group]
        assert any(p is param for p in group["params"])
        assert (group["lr"], group["weight_decay"]) == (row.lr, row.weight_decay)


@given(st.data())
def test_groups_are_distinct_settings(data):
    """Parameters with equal settings share one group: the group count equals the number of distinct
    (lr, weight_decay) pairs the rules produce (frozen parameters included, so unfreezing never
    needs a new group)."""
    tree, rules = _tree_and_rules(data)
    opt = lrgroups.LayerwiseOptimizer(tree, torch.optim.SGD, lr=1e-3, weight_decay=0.05, rules=rules)
    table = opt.explain()
    assert len(opt.param_groups) == len(set(zip(table.lr, table.weight_decay, strict=True)))


def _set_grads(params, step):
    generator = torch.Generator().manual_seed(step)
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator) if param.requires_grad else None


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@given(st.data())
def test_bitwise_equal_to_bare_optimizer(name, data):
    """Same per-parameter settings => N steps of LayerwiseOptimizer give bitwise the same parameters
    as the bare inner optimizer built from hand-written groups (one group per tensor, settings read
    from the plan)."""
    tree, rules = _tree_and_rules(data)
    factory, kwargs = OPTIMIZERS[name]
    reference_tree = copy.deepcopy(tree)
    opt = lrgroups.LayerwiseOptimizer(tree, factory, lr=1e-2, weight_decay=0.1, rules=rules, **kwargs)
    by_name = dict(reference_tree.named_parameters())
    hand_written = [
        {"params": [by_name[row.name]], "lr": row.lr, "weight_decay": row.weight_decay}
        for row in opt.plan
        if not row.frozen
    ] or [{"params": []}]
    for row in opt.plan:
        by_name[row.name].requires_grad_(not row.frozen)
    bare = factory(hand_written, lr=1e-2, **kwargs)
    for step in range(3):
        _set_grads(list(tree.parameters()), step)
        _set_grads(list(reference_tree.parameters()), step)
        opt.step()
        bare.step()
    for (name_a, a), (name_b, b) in zip(tree.named_parameters(), reference_tree.named_parameters(), strict=True):
        assert name_a == name_b
        assert torch.equal(a, b), name_a


def test_resnet18_classic_discriminative_setup():
    """The README's first example: torchvision resnet18, new 10-class fc, features 1e-5, head 1e-3,
    Adam; then unfreezing layer4 adds exactly layer4's parameters to the features group."""
    model = torchvision.models.resnet18(num_classes=10)
    opt = lrgroups.LayerwiseOptimizer(
        model, torch.optim.Adam, lr=1e-5,
        rules=[lrgroups.head(lr=1e-3), lrgroups.Rule("layer4.*", frozen=True)],
    )
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 1e-3]
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in model.fc.parameters()}
    assert not any(p.requires_grad for p in model.layer4.parameters())
    changed = opt.unfreeze("layer4.*")
    assert changed == [n for n, _ in model.named_parameters() if n.startswith("layer4.")]
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters())) - 2
    assert len(opt.param_groups) == 2


def test_wrapped_models_have_bare_names_and_depths():
    """torch.compile and DataParallel wrappers are looked through: same names, depths, settings; the
    wrapper's own names (``_orig_mod.``, ``module.``) are aliases, so rules may use them."""
    from dataclasses import replace

    model = torchvision.models.resnet18(num_classes=3)
    bare = lrgroups.plan(model, lr=1e-3, rules=[lrgroups.layer_decay(0.5)])
    for wrapped, prefix in ((torch.compile(model), "_orig_mod."), (nn.DataParallel(model), "module.")):
        rows = lrgroups.plan(wrapped, lr=1e-3, rules=[lrgroups.layer_decay(0.5)])
        assert [replace(row, aliases=()) for row in rows] == bare
        assert all(row.aliases == (prefix + row.name,) for row in rows)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": float("nan")}, "lr must be finite"),
        ({"lr": -1.0}, "lr must be finite"),
        ({"lr": float("inf")}, "lr must be finite"),
        ({"lr": 1e-3, "weight_decay": -0.1}, "weight_decay must be finite"),
        ({"lr": 1e-3, "rules": [lrgroups.Rule("layer9.*", lr=1.0)]}, "closest names: layer4"),
        ({"lr": 1e-3, "rules": [lrgroups.Rule("fc.*", lr_mult=float("nan"))]}, "fc.weight"),
        ({"lr": 1e-3, "momentum": -1.0}, "could not build SGD"),
    ],
)
def test_bad_input_raises_before_anything_changes(kwargs, message):
    """Bad input raises one ValueError naming the cause, and the model is left as it was."""
    model = torchvision.models.resnet18(num_classes=3)
    model.layer1.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=message):
        lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, rules=[lrgroups.Rule("layer2.*", frozen=True),
                                                                   *kwargs.get("rules", [])],
                                    **{k: v for k, v in kwargs.items() if k != "rules"})
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_model_without_parameters_raises():
    with pytest.raises(ValueError, match="has no parameters"):
        lrgroups.LayerwiseOptimizer(nn.ReLU(), torch.optim.SGD, lr=0.1)


def test_optimizer_instance_is_rejected_with_hint():
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="not an instance"):
        lrgroups.LayerwiseOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.1), lr=0.1)


def test_weight_decay_on_optimizer_without_it_raises():
    with pytest.raises(ValueError, match="no weight_decay option"):
        lrgroups.LayerwiseOptimizer(nn.Linear(2, 2), torch.optim.LBFGS, lr=0.1, weight_decay=0.1)


def _mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def test_is_a_torch_optimizer_and_accepted_by_torch_and_timm_schedulers_and_grad_scaler():
    """isinstance holds; torch LR schedulers, a timm scheduler and GradScaler drive it."""
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-2, rules=[lrgroups.layer_decay(0.5)])
    assert isinstance(opt, torch.optim.Optimizer)
    schedulers = [
        torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.9**step),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10),
    ]
    timm_scheduler = timm.scheduler.CosineLRScheduler(opt, t_initial=10)
    scaler = torch.amp.GradScaler("cpu")
    for step in range(3):
        loss = model(torch.randn(5, 4)).pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        for scheduler in schedulers:
            scheduler.step()
        timm_scheduler.step(step + 1)
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] / lrs[-1] == pytest.approx(0.25)


@pytest.mark.parametrize("factory", [timm.optim.Lion, timm.optim.Lamb, timm.optim.Adan, torch.optim.RMSprop])
def test_timm_and_other_inner_optimizers_step(factory):
    """timm.optim optimizers follow the param-group protocol and run under the wrapper; frozen
    parameters stay bitwise unchanged."""
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, factory, lr=1e-2, weight_decay=0.01,
                                      rules=[lrgroups.layer_decay(0.5), lrgroups.Rule("0.*", frozen=True)])
    frozen = model[0].weight.detach().clone()
    moving = model[4].weight.detach().clone()
    for _ in range(2):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(model[0].weight, frozen)
    assert not torch.equal(model[4].weight, moving)


def test_callable_factory_and_kwargs_pass_through():
    """A callable (param_groups, **kw) -> Optimizer works, and optimizer kwargs reach it."""
    seen = {}

    def factory(groups, **kwargs):
        seen.update(kwargs)
        return torch.optim.SGD(groups, **kwargs)

    opt = lrgroups.LayerwiseOptimizer(_mlp(), factory, lr=0.1, momentum=0.5)
    assert seen == {"lr": 0.1, "momentum": 0.5}
    assert opt.param_groups[0]["momentum"] == 0.5


def test_empty_groups_work_with_fused_and_foreach_adamw():
    """Groups whose parameters are all frozen are empty; torch accepts them with fused and foreach."""
    for kwargs in ({"fused": True}, {"foreach": True}):
        model = _mlp()
        opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-2, rules=[lrgroups.layer_decay(0.5), lrgroups.Rule("0.*", frozen=True)], **kwargs)
        assert opt.param_groups[0]["params"] == []
        model(torch.randn(5, 4)).sum().backward()
        opt.step()


def test_flattening_scheduler_warns_and_per_group_keeps_ratios():
    """OneCycleLR with one max_lr flattens the rules' ratios: a loud warning; max_lr=opt.per_group()
    keeps them and stays silent."""
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    with pytest.warns(UserWarning, match="ratios"):
        opt.step()
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.per_group(0.1), total_steps=10)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] / lrs[2] == pytest.approx(0.25)


def test_timm_warmup_from_a_shared_absolute_lr_warns():
    """timm schedulers' warmup_lr_init is one absolute lr for all groups (timm expects lr_scale):
    it flattens the ratios at the start of warm-up, which is reported; warmup_lr_init=0 keeps them."""
    opt = lrgroups.LayerwiseOptimizer(_mlp(), torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])
    timm.scheduler.CosineLRScheduler(opt, t_initial=10, warmup_t=2, warmup_lr_init=1e-4)
    with pytest.warns(UserWarning, match="ratios"):
        opt.step()


def test_add_param_group_is_refused():
    opt = lrgroups.LayerwiseOptimizer(_mlp(), torch.optim.SGD, lr=0.1)
    with pytest.raises(TypeError, match="unfreeze"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})


def test_summary_counts_per_group():
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5), lrgroups.Rule("0.*", frozen=True)])
    table = opt.summary()
    assert table["tensors"].tolist() == [2, 2, 2]
    assert table["frozen_tensors"].tolist() == [2, 0, 0]
    assert table["trainable_numel"].tolist() == [0, 72, 18]


def test_step_hooks_run_once_in_torch_order_with_the_wrapper_and_closure_passes_through():
    """Global and local step hooks run once per step, in torch's order (global pre, local pre,
    local post, global post), each receiving the wrapper (not the inner optimizer); a closure
    reaches the inner optimizer and its loss is returned."""
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    calls = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global pre", o))),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global post", o))),
        opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o))),
        opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o))),
    ]

    def closure():
        opt.zero_grad()
        loss = model(torch.randn(3, 4)).pow(2).mean()
        loss.backward()
        return loss

    try:
        loss = opt.step(closure)
    finally:
        for handle in handles:
            handle.remove()
    assert isinstance(loss, torch.Tensor)
    assert calls == [("global pre", opt), ("pre", opt), ("post", opt), ("global post", opt)]


def test_grad_scaler_with_fused_inner_optimizer():
    """GradScaler's fused path (grad_scale/found_inf set on the optimizer, deleted after the step)
    works through the wrapper and matches the bare fused optimizer bitwise."""
    results = []
    for wrap in (True, False):
        torch.manual_seed(0)
        model = _mlp()
        if wrap:
            opt = lrgroups.LayerwiseOptimizer(model, torch.optim.Adam, lr=1e-2, fused=True)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
        scaler = torch.amp.GradScaler("cpu")
        for step in range(3):
            generator = torch.Generator().manual_seed(step)
            scaler.scale(model(torch.randn(5, 4, generator=generator)).pow(2).mean()).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
        results.append([p.detach().clone() for p in model.parameters()])
        assert not hasattr(getattr(opt, "inner", opt), "grad_scale")
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


# ---------------------------------------------------------------- issue 10: a genuine torch optimizer
def _two_layer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _train(model, opt, steps=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        model(torch.randn(6, model[0].in_features, generator=generator)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def test_defaults_are_the_inner_optimizers():
    """What the user does not pass is the inner optimizer's default: AdamW trains with its
    weight decay 0.01 (Muon's 0.1), bitwise as AdamW(model.parameters()) does, and the groups say
    so; explain() shows the value in force."""
    model, reference = _two_layer(), _two_layer()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3)
    bare = torch.optim.AdamW(reference.parameters(), lr=1e-3)
    assert opt.param_groups[0]["weight_decay"] == 0.01 == opt.defaults["weight_decay"]
    assert set(opt.explain().weight_decay) == {0.01}
    _train(model, opt)
    _train(reference, bare)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters(), strict=True))
    muon = lrgroups.LayerwiseOptimizer(nn.Linear(3, 3, bias=False), torch.optim.Muon, lr=1e-3)
    assert muon.param_groups[0]["weight_decay"] == 0.1
    sgd = lrgroups.LayerwiseOptimizer(_two_layer(), torch.optim.SGD)  # lr too: SGD's default 1e-3
    assert sgd.param_groups[0]["lr"] == 1e-3


def test_tensor_lr_stays_a_tensor_and_foreach_with_tensor_lr_is_refused_as_torch_does():
    opt = lrgroups.LayerwiseOptimizer(_two_layer(), torch.optim.Adam, lr=torch.tensor(0.01),
                                      rules=[lrgroups.Rule("2.*", lr_mult=0.5)])
    assert all(isinstance(group["lr"], torch.Tensor) for group in opt.param_groups)
    assert [float(group["lr"]) for group in opt.param_groups] == pytest.approx([0.01, 0.005])
    with pytest.raises(ValueError, match="lr as a Tensor is not supported"):
        lrgroups.LayerwiseOptimizer(_two_layer(), torch.optim.Adam, lr=torch.tensor(0.01), foreach=True)


def _with_complex_extra():
    model = nn.Linear(3, 3)
    model.register_parameter("extra", nn.Parameter(torch.zeros(2, dtype=torch.complex64)))
    return model


@pytest.mark.parametrize(
    "model, factory, frozen, message",
    [
        (nn.Linear(3, 3), torch.optim.Muon, "bias", "Muon only supports 2D parameters"),
        (_with_complex_extra(), torch.optim.SparseAdam, "extra", "does not support complex"),
    ],
)
def test_frozen_parameters_pass_the_inner_constructors_validation_at_build(model, factory, frozen, message):
    """A parameter the rules freeze still goes through the inner optimizer's constructor, so an
    invalid one (here the only invalid one) fails when the wrapper is built, not when it is
    unfrozen and stepped."""
    with pytest.raises(ValueError, match=message):
        lrgroups.LayerwiseOptimizer(model, factory, lr=1e-3, rules=[lrgroups.Rule(frozen, frozen=True)])


def test_options_by_rule_split_groups_merge_on_whole_settings_and_show_in_explain():
    """Rule options reach the groups; parameters whose whole settings (lr, weight decay, options)
    are equal share one group; explain() shows each parameter's options; a later rule's value
    replaces an earlier one key by key."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, rules=[
        lrgroups.Rule("[01].*", options={"betas": (0.9, 0.95), "eps": 1e-6}),
        lrgroups.Rule("1.bias", options={"eps": 1e-5}),
    ])
    assert [(g["betas"], g["eps"], g["param_names"]) for g in opt.param_groups] == [
        ((0.9, 0.95), 1e-6, ["0.weight", "0.bias", "1.weight"]),
        ((0.9, 0.95), 1e-5, ["1.bias"]),
        ((0.9, 0.999), 1e-8, ["2.weight", "2.bias"]),
    ]
    assert opt.explain().set_index("name").loc["1.bias", "options"] == {"betas": (0.9, 0.95), "eps": 1e-5}


def _muon_adamw(model, **kwargs):
    return lrgroups.LayerwiseOptimizer(
        model, {"adamw": torch.optim.AdamW, "muon": (torch.optim.Muon, {"lr": 0.02})}, lr=1e-3,
        rules=[lrgroups.Rule(ndim=2, inner="muon"), lrgroups.head(inner="adamw")], **kwargs)


def _mlp3():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def test_muon_for_hidden_weights_adamw_for_the_rest_in_one_optimizer():
    """Rules route 2-D hidden weights to Muon and biases, norms and the head to AdamW; the wrapper
    is one Optimizer whose param_groups is the concatenation (one scheduler drives both), and its
    steps equal Muon and AdamW built by hand over the same split and stepped together."""
    model, reference = _mlp3(), _mlp3()
    opt = _muon_adamw(model)
    routed = dict(zip(opt.explain().name, opt.explain().optimizer, strict=True))
    assert routed == {"0.weight": "muon", "0.bias": "adamw", "1.weight": "adamw", "1.bias": "adamw",
                      "3.weight": "muon", "3.bias": "adamw", "5.weight": "adamw", "5.bias": "adamw"}
    assert opt.param_groups == opt.inners["adamw"].param_groups + opt.inners["muon"].param_groups
    params = dict(reference.named_parameters())
    muon = torch.optim.Muon([params["0.weight"], params["3.weight"]], lr=0.02)
    adamw = torch.optim.AdamW([p for n, p in params.items() if n not in ("0.weight", "3.weight")], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    hand = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (muon, adamw)]
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        x = torch.randn(6, 4, generator=generator)
        model(x).pow(2).mean().backward()
        reference(x).pow(2).mean().backward()
        for stepped in (opt, muon, adamw):
            stepped.step()
            stepped.zero_grad()
        for schedule in (scheduler, *hand):
            schedule.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters(), strict=True))
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in adamw.param_groups + muon.param_groups]


def test_muon_adamw_freeze_unfreeze_and_resume_across_both():
    """freeze/unfreeze route each parameter back to its own inner optimizer (unfreeze(ndim=1)
    never hands a 1-D tensor to Muon); a state dict saved mid-run resumes bitwise."""
    model = _mlp3()
    opt = _muon_adamw(model)
    opt.freeze("0.*")
    _train(model, opt, steps=2)
    assert opt.unfreeze(ndim=1) == ["0.bias"]
    assert [n for g in opt.inners["muon"].param_groups for n in g["param_names"]] == ["3.weight"]
    opt.unfreeze("0.*")
    _train(model, opt, steps=2, seed=1)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, steps=2, seed=2)
    fresh = _mlp3()
    fresh.load_state_dict(saved_model)
    resumed = _muon_adamw(fresh)
    resumed.load_state_dict(saved_opt)
    _train(fresh, resumed, steps=2, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True))


def test_routing_to_an_unknown_optimizer_or_with_one_optimizer_fails_clearly():
    with pytest.raises(ValueError, match=r"unknown optimizer\(s\) \['lion'\]"):
        lrgroups.LayerwiseOptimizer(_mlp3(), {"adamw": torch.optim.AdamW}, lr=1e-3, rules=[lrgroups.Rule(ndim=2, inner="lion")])
    with pytest.raises(ValueError, match="pass a dict of optimizers"):
        lrgroups.LayerwiseOptimizer(_mlp3(), torch.optim.AdamW, lr=1e-3, rules=[lrgroups.Rule(ndim=2, inner="muon")])


def test_lbfgs_membership_change_after_stepping_is_refused_naming_it():
    """L-BFGS keeps flat history over all its parameters: freezing or unfreezing after it stepped
    raises an error naming it (not an assertion from inside torch); before the first step it works."""
    model = _two_layer()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.LBFGS, lr=0.1, rules=[lrgroups.Rule("0.*", frozen=True)])
    opt.unfreeze("0.bias")

    def closure():
        opt.zero_grad()
        loss = model(torch.ones(3, 4)).pow(2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    opt.step(closure)
    with pytest.raises(RuntimeError, match="LBFGS derives its state"):
        opt.unfreeze("0.*")
    with pytest.raises(RuntimeError, match="LBFGS derives its state"):
        opt.freeze("2.*")
    opt.step(closure)


def test_two_wrappers_on_disjoint_parts_of_one_model_both_train():
    """select= limits a wrapper to its parameters; it never changes requires_grad of others, so
    a Muon wrapper over the 2-D weights and an AdamW wrapper over the rest both train."""
    model = _mlp3()
    muon = lrgroups.LayerwiseOptimizer(model, torch.optim.Muon, lr=0.02, select=lrgroups.Selector(ndim=2, pattern="[03].*"))
    adamw = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, select=lrgroups.Selector(where=lambda p: not (p.ndim == 2 and p.name[0] in "03")))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert all(p.requires_grad for p in model.parameters())
    for _ in range(2):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        for stepped in (muon, adamw):
            stepped.step()
            stepped.zero_grad()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    adamw.freeze("5.*")
    assert muon.explain().name.tolist() == ["0.weight", "3.weight"]
    assert model[0].weight.requires_grad and not model[5].weight.requires_grad


# ---------------------------------------------------------------- issue 11: who froze what
def test_frozen_by_records_model_rule_and_owner_and_unfreeze_owner_thaws_only_its_own():
    model = _mlp3()
    model[5].requires_grad_(False)  # frozen by the user before building
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, rules=[lrgroups.Rule("0.*", frozen=True)])
    opt.freeze("3.*", owner="schedule")
    opt.freeze("1.*")
    table = opt.explain().set_index("name")
    assert table.frozen_by.to_dict() == {
        "0.weight": "rule", "0.bias": "rule", "1.weight": "user", "1.bias": "user",
        "3.weight": "schedule", "3.bias": "schedule", "5.weight": "model", "5.bias": "model",
    }
    assert opt.freeze("5.*", owner="schedule") == [] and opt.frozen_by("5.weight") == "model"
    assert opt.unfreeze(owner="schedule", pattern="*") == ["3.weight", "3.bias"]
    assert opt.unfreeze("*", owner="nobody") == []
    assert opt.unfreeze("5.*") == ["5.weight", "5.bias"]  # an explicit unfreeze thaws anything
    assert opt.frozen_by("5.weight") is None and model[5].weight.requires_grad
    with pytest.raises(ValueError, match="owner must be a non-empty string"):
        opt.freeze("0.*", owner="")


# ---------------------------------------------------------------- issue 11: frozen norms
class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2, affine=False)

    def forward(self, x):
        return self.bn(self.conv(x))


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(_Block(), nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, affine=False), nn.Flatten(), nn.Linear(8 * 8 * 2, 2))


def _stats_move(model, module):
    before = (module.running_mean.clone(), int(module.num_batches_tracked))
    model.train()
    model(torch.randn(4, 2, 8, 8))
    return not torch.equal(module.running_mean, before[0]) or int(module.num_batches_tracked) != before[1]


def test_norm_without_parameters_follows_its_block():
    """A BatchNorm2d(affine=False) in a frozen block keeps its statistics under model.train();
    in a block that trains they move. In a plain Sequential it follows the layer before it."""
    model = _bn_model()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("0.*", frozen=True)])
    assert not _stats_move(model, model[0].bn)
    assert _stats_move(model, model[2])
    opt.freeze("1.*")
    assert not _stats_move(model, model[2])
    opt.unfreeze("0.*")
    assert _stats_move(model, model[0].bn)


def test_norm_hooks_are_owned_removable_and_not_seen_by_a_second_optimizer_or_a_copy():
    """close() (or leaving a with block, or the optimizer being garbage-collected) removes the
    hooks; a newer optimizer over the same model decides alone; a deepcopy of the model runs its
    norms normally."""
    import gc

    model = _bn_model()
    with lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("0.*", frozen=True)]):
        assert not _stats_move(model, model[0].bn)
        copied = copy.deepcopy(model)
        assert _stats_move(copied, copied[0].bn)
    assert _stats_move(model, model[0].bn)
    assert not model[0].bn._forward_pre_hooks

    model.requires_grad_(True)  # the closed optimizer's rule left them frozen: "before building" norms keep their mode
    first = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("0.*", frozen=True)])
    assert not _stats_move(model, model[0].bn)
    second = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("0.*", frozen=False)])
    assert _stats_move(model, model[0].bn)
    del first, second
    gc.collect()
    assert not model[0].bn._forward_pre_hooks


def test_closing_the_newest_optimizer_hands_its_norm_layers_back_to_the_previous_one():
    """Two optimizers over one model: the newest decides a norm layer's mode; closing it hands the
    decision back to the one before (which froze the block), as removing a hook uncovers the one
    registered before it. No module-global owner map is involved."""
    model = _bn_model()
    first = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("0.*", frozen=True)])
    model.requires_grad_(True)
    second = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    assert _stats_move(model, model[0].bn)  # the newest trains the block: statistics move
    second.close()
    assert not _stats_move(model, model[0].bn)  # the first one, which froze the block, decides again
    first.close()
    assert _stats_move(model, model[0].bn) and not model[0].bn._forward_pre_hooks


def test_unfreezing_under_an_optimizer_that_creates_state_in_its_constructor():
    """Adagrad creates its state when built: a parameter unfrozen later gets the state Adagrad's
    constructor gives it (not a KeyError at the next step), and then steps as under bare Adagrad."""
    model, reference = _two_layer(), _two_layer()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.Adagrad, lr=0.1, initial_accumulator_value=0.5,
                                      rules=[lrgroups.Rule("0.*", frozen=True)])
    assert model[0].weight not in opt.state
    opt.unfreeze("0.*")
    assert torch.equal(opt.state[model[0].weight]["sum"], torch.full((8, 4), 0.5))
    bare = torch.optim.Adagrad(reference.parameters(), lr=0.1, initial_accumulator_value=0.5)
    _train(model, opt, steps=2)
    _train(reference, bare, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters(), strict=True))


def test_unfreezing_never_applies_a_stale_gradient():
    """allenai/rslearn#217: a gradient a frozen parameter holds (from before its freeze, or collected
    because requires_grad was set outside the wrapper) is dropped when it is unfrozen: its first step
    after unfreezing uses only gradients computed after it; the outside change is warned about."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("0.*", frozen=True)])
    model[0].weight.requires_grad_(True)  # outside the wrapper
    model(torch.randn(4, 3)).sum().backward()
    with pytest.warns(UserWarning, match="0.weight is frozen but requires_grad=True"):
        opt.step()
    opt.zero_grad()
    assert model[0].weight.grad is None  # zero_grad clears frozen parameters too (issue 27 item 8)
    model(torch.randn(4, 3)).sum().backward()  # a gradient collected while frozen
    with pytest.warns(UserWarning, match=r"outside the optimizer: 0.weight is frozen but requires_grad=True"):
        opt.unfreeze("0.*")
    before = model[0].weight.detach().clone()
    opt.step()  # no new backward: nothing to apply
    assert torch.equal(model[0].weight, before)


def test_differentiable_steps_are_refused_at_build():
    with pytest.raises(ValueError, match=r"SGD\(differentiable=True\) is not supported"):
        lrgroups.LayerwiseOptimizer(nn.Linear(2, 2), torch.optim.SGD, lr=0.1, differentiable=True)


def test_summary_shows_group_names_options_and_the_current_lr():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("1.*", lr=0.2,
                                                                                            options={"momentum": 0.9})])
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    table = opt.summary()
    assert table.current_lr.tolist() == [0.05, 0.1] and table.lr.tolist() == [0.1, 0.2]
    assert table.name.tolist() == [g["name"] for g in opt.param_groups]
    assert table.options.tolist() == [{}, {"momentum": 0.9}]
    assert opt.explain().frozen_by.tolist() == [None] * 4


def test_importing_lrgroups_does_not_import_pandas():
    import subprocess
    import sys

    code = "import sys, lrgroups; assert 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rule_options_the_inner_optimizer_would_ignore_are_refused():
    """torch optimizers ignore unknown group keys; a rule's options must be options of its inner
    optimizer (the error names the accepted ones)."""
    with pytest.raises(ValueError, match=r"rule options \['momentum'\] are not options of AdamW.*amsgrad, betas"):
        lrgroups.LayerwiseOptimizer(nn.Linear(2, 2), torch.optim.AdamW, lr=1e-3,
                                    rules=[lrgroups.Rule("bias", options={"momentum": 0.9})])
    opt = lrgroups.LayerwiseOptimizer(nn.Linear(2, 2), torch.optim.AdamW, lr=1e-3,
                                      rules=[lrgroups.Rule("bias", options={"betas": (0.8, 0.9)})])
    assert opt.param_groups[-1]["betas"] == (0.8, 0.9)


@pytest.mark.parametrize("architecture", ["bert", "gpt2"])
def test_the_readme_muon_recipe_sends_embeddings_and_heads_to_adamw(architecture):
    """DeepSpeed#7641, KellerJordan/Muon#22: only hidden 2-D weights go to Muon; embeddings
    (token, position, type), the head (GPT-2's is tied to the token embedding), biases and norms go to
    AdamW. On a BERT and a GPT-2 built from configs."""
    import transformers
    if architecture == "bert":
        config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, vocab_size=100, num_labels=3)
        model = transformers.BertForSequenceClassification(config)
    else:
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=16,
                                         bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(config)

    def hidden_matrix(p):  # the README's predicate
        return not p.is_head and not isinstance(p.module, nn.Embedding)

    with contextlib.ExitStack() as stack:
        if architecture == "gpt2":  # the tied head is announced (tied="head" is the default it takes)
            stack.enter_context(pytest.warns(lrgroups.depth.TiedWeightsWarning, match="'transformer.wte.weight'"))
        opt = lrgroups.LayerwiseOptimizer(model, {"adamw": torch.optim.AdamW, "muon": (torch.optim.Muon, {"lr": 0.02})},
                                          lr=3e-4, rules=[lrgroups.Rule(ndim=2, where=hidden_matrix, inner="muon")])
    routes = opt.explain().set_index("name").optimizer
    embeddings = {n for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    for name, route in routes.items():
        module = name.rsplit(".", 1)[0]
        if module in embeddings or name.startswith(("classifier", "lm_head")) or model.get_parameter(name).ndim < 2:
            assert route == "adamw", name
        else:
            assert route == "muon", name
    assert (routes == "muon").sum() >= 8  # 4 matrices per block (attention in and out, MLP in and out), 2 blocks


def test_the_ratio_warning_points_at_the_users_line_and_says_what_to_pass():
    """Through GradScaler.step too, the warning points at the line that stepped (not torch's
    grad_scaler.py), names the two groups furthest apart instead of listing every lr, and says what
    to pass to torch's and timm's schedulers."""
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(20)])
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.8)])
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.randn(3, 2)).sum()).backward()
    with pytest.warns(UserWarning, match="no longer keep the ratios") as record:
        scaler.step(opt)
    warning = next(w for w in record if "ratios" in str(w.message))
    assert warning.filename == __file__
    text = str(warning.message)
    assert "over 20 groups" in text and "lr_min=0" in text and "max_lr=opt.per_group(peak_lr)" in text
    assert text.count("now ") == 2 and len(text) < 1200  # two groups named, whatever the group count


@pytest.mark.parametrize("call", ["freeze", "unfreeze", "select", "group_of", "is_frozen", "frozen_by"])
def test_a_selection_or_name_matching_nothing_is_one_public_error_with_the_closest_names(call):
    """freeze, unfreeze and select with a selection, and group_of, is_frozen and frozen_by with a name,
    raise lrgroups.NoMatchError (a ValueError and a KeyError) that says a selection or a name, not a
    "rule", matched nothing, and names the closest parameter names."""
    opt = lrgroups.LayerwiseOptimizer(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), torch.optim.SGD, lr=0.1)
    with pytest.raises(lrgroups.NoMatchError) as error:
        getattr(opt, call)("0.wieght")
    text = str(error.value)
    assert "rule" not in text and ("selection" in text or "name '0.wieght'" in text)
    assert "closest names: 0.weight" in text
    assert isinstance(error.value, KeyError) and isinstance(error.value, ValueError)


# ---------------------------------------------------------------- freeze / unfreeze (moved from test_unfreezing)
REFREEZE_OPTIMIZERS = [
    (torch.optim.AdamW, {"weight_decay": 0.1}),
    (torch.optim.SGD, {"momentum": 0.9, "weight_decay": 0.1}),
    (torch.optim.Adam, {"foreach": True}),
    (timm.optim.Lion, {"weight_decay": 0.1}),
]


@pytest.mark.parametrize("factory, kwargs", REFREEZE_OPTIMIZERS)
def test_frozen_is_bitwise_untouched_after_refreeze(factory, kwargs):
    """Train everything, then freeze a block: it is bitwise unchanged by later steps for every
    optimizer (no momentum carry-over, no decoupled weight decay), its .grad is None, and it holds
    no optimizer state."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    kwargs = dict(kwargs)  # the parametrize data stays as it is for a second run in this process
    weight_decay = kwargs.pop("weight_decay", 0.0)
    opt = lrgroups.LayerwiseOptimizer(model, factory, lr=1e-2, weight_decay=weight_decay, **kwargs)
    for _ in range(3):
        model(torch.randn(6, 4)).pow(2).mean().backward()
        opt.step()
    assert opt.freeze("0.*") == ["0.weight", "0.bias"]
    snapshot = [p.detach().clone() for p in model[0].parameters()]
    assert all(p.grad is None for p in model[0].parameters())
    assert all(p not in opt.state for p in model[0].parameters())
    for _ in range(3):
        model(torch.randn(6, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(model[0].parameters(), snapshot, strict=True))
    assert all(p.grad is None for p in model[0].parameters())


def test_freeze_keep_state_restores_moments_drop_starts_fresh():
    """freeze(keep_state=True) keeps the optimizer state aside and unfreeze puts it back; the default
    drops it (a later unfreeze starts like a newly added parameter)."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-2)
    model(torch.randn(6, 4)).sum().backward()
    opt.step()
    moment = opt.state[model[0].weight]["exp_avg"].clone()
    opt.freeze("0.weight", keep_state=True)
    opt.freeze("0.bias")
    opt.unfreeze("0.*")
    assert torch.equal(opt.state[model[0].weight]["exp_avg"], moment)
    assert model[0].bias not in opt.state


def test_freeze_unfreeze_report_changes_and_errors():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    assert opt.freeze(depth=0) == ["0.weight", "0.bias"]
    assert opt.freeze(depth=0) == []
    assert opt.is_frozen("0.weight") and not model[0].weight.requires_grad
    with pytest.raises(ValueError, match="closest names: 2.weight"):
        opt.unfreeze("2.wieght")
    assert opt.unfreeze(module_type=nn.Linear) == ["0.weight", "0.bias"]


def test_frozen_batchnorm_statistics_policy():
    """norm_stats='freeze' (default): a BatchNorm whose affine parameters are frozen keeps its
    running statistics even in train mode; once unfrozen they update again. 'update' lets them move."""
    for policy, moves_while_frozen in (("freeze", False), ("update", True)):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
        model(torch.randn(2, 3, 6, 6))
        opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, norm_stats=policy,
                                          rules=[lrgroups.Rule(depth=0, frozen=True)])
        model.train()
        before = model[1].running_mean.clone()
        model(torch.randn(2, 3, 6, 6))
        assert (not torch.equal(model[1].running_mean, before)) == moves_while_frozen
        opt.unfreeze(depth=0)
        model.train()
        before = model[1].running_mean.clone()
        model(torch.randn(2, 3, 6, 6))
        assert not torch.equal(model[1].running_mean, before)


def test_frozen_norm_returns_to_train_mode_after_unfreeze_without_model_train():
    """norm_stats='freeze' switches a frozen BatchNorm to eval for each forward only: once unfrozen it
    updates its statistics again without another model.train() call."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule(depth=0, frozen=True)])
    model.train()
    model(torch.randn(2, 3, 6, 6))
    assert model[1].training
    opt.unfreeze(depth=0)
    before = model[1].running_mean.clone()
    model(torch.randn(2, 3, 6, 6))
    assert not torch.equal(model[1].running_mean, before)


def test_the_optimizer_keyword_is_a_deprecated_name_of_optimizer_cls():
    """optimizer_cls is the class argument's name (positional or keyword); optimizer= still works
    and warns; both, or neither, is a TypeError."""
    model = _mlp3()
    by_keyword = lrgroups.LayerwiseOptimizer(model, optimizer_cls=torch.optim.SGD, lr=0.1)
    with pytest.deprecated_call(match="LayerwiseOptimizer.__init__.optimizer is deprecated, use optimizer_cls"):
        old = lrgroups.LayerwiseOptimizer(model, optimizer=torch.optim.SGD, lr=0.1)
    assert type(old.inner) is type(by_keyword.inner) is torch.optim.SGD
    assert old.state_dict()["param_groups"] == by_keyword.state_dict()["param_groups"]
    with pytest.raises(TypeError, match="give optimizer_cls= only"):
        lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, optimizer=torch.optim.SGD, lr=0.1)
    with pytest.raises(TypeError, match="needs optimizer_cls"):
        lrgroups.LayerwiseOptimizer(model, lr=0.1)
