"""Recipes: each strategy sets up what its paper describes, on a timm model and a plain module."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from sklearn.linear_model import LogisticRegression

from lrgroups import recipes


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=3, embed_dim=32, num_heads=2, num_classes=3)


def _train(tuning, model, steps, metric=lambda step: 0.5):
    stops = []
    for step in range(steps):
        model(torch.randn(2, 3, 16, 16)).sum().backward()
        tuning.optimizer.step()
        tuning.optimizer.zero_grad()
        tuning.after_step()
        decision = tuning.observe(metric(step))
        stops.append(decision is not None and decision.stop)
    return stops


def _trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_linear_probe_trains_only_the_head():
    model = _vit()
    recipes.linear_probe().build(model, torch.optim.AdamW, lr=1e-3)
    assert _trainable(model) == {"head.weight", "head.bias"}


def test_discriminative_puts_backbone_at_ratio_of_head_lr():
    model = _vit()
    tuning = recipes.discriminative(0.01).build(model, torch.optim.Adam, lr=1e-3)
    table = tuning.optimizer.explain().set_index("name")
    assert table.loc["head.weight", "lr"] == 1e-3
    assert table.loc["blocks.0.attn.qkv.weight", "lr"] == pytest.approx(1e-5)


def test_layer_decay_between_spans_the_ratio_on_any_depth():
    """The end-point form gives depth 0 exactly first_ratio x the head lr on a 3- or 12-block ViT."""
    for depth in (3, 12):
        model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=depth, embed_dim=32, num_heads=2)
        table = recipes.layer_decay_between(0.01).build(model, torch.optim.AdamW, lr=1e-3).optimizer.explain()
        assert table.lr.min() == pytest.approx(1e-5) and table.lr.max() == pytest.approx(1e-3)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _probe_data(n=90, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    features = torch.randn(n, d, generator=g, dtype=torch.float64) + labels[:, None].double()
    return features, labels


# ---------------------------------------------------------------- closed-form probe
def test_fit_linear_probe_equals_scikit_learn_multinomial_logistic_regression():
    features, labels = _probe_data()
    weight, bias = recipes.fit_linear_probe(features, labels, C=0.3)
    reference = LogisticRegression(C=0.3, max_iter=1000).fit(features.numpy(), labels.numpy())
    assert weight.shape == (3, 6) and bias.shape == (3,) and weight.dtype == torch.float64
    assert np.array_equal(weight.numpy(), reference.coef_) and np.array_equal(bias.numpy(), reference.intercept_)


def test_fit_linear_probe_binary_gives_a_two_logit_head_with_sklearn_probabilities():
    features, labels = _probe_data(k=2)
    weight, bias = recipes.fit_linear_probe(features, labels)
    reference = LogisticRegression(max_iter=1000).fit(features.numpy(), labels.numpy())
    probabilities = torch.softmax(features @ weight.T + bias, dim=1).numpy()
    assert weight.shape == (2, 6)
    np.testing.assert_allclose(probabilities, reference.predict_proba(features.numpy()), rtol=1e-12, atol=1e-12)


def test_fit_linear_probe_rejects_bad_input():
    features, labels = _probe_data()
    with pytest.raises(ValueError, match="missing \\[3\\]"):
        recipes.fit_linear_probe(features, labels, num_classes=4)
    with pytest.raises(ValueError, match="features \\(N, D\\) and labels \\(N,\\)"):
        recipes.fit_linear_probe(features, labels[:-1])
    with pytest.raises(ValueError, match="integer class indices"):
        recipes.fit_linear_probe(features, labels.double())
    with pytest.raises(ValueError, match="finite"):
        recipes.fit_linear_probe(features * float("nan"), labels)
    with pytest.raises(ValueError, match="C must be > 0"):
        recipes.fit_linear_probe(features, labels, C=0)


def test_set_linear_head_writes_the_probe_and_checks_shapes():
    head = nn.Linear(6, 3)
    weight, bias = recipes.fit_linear_probe(*_probe_data())
    recipes.set_linear_head(head, weight, bias)
    assert torch.equal(head.weight, weight.float()) and torch.equal(head.bias, bias.float())
    with pytest.raises(ValueError, match="does not fit the head"):
        recipes.set_linear_head(nn.Linear(6, 4), weight, bias)
    with pytest.raises(TypeError, match="nn.Linear with a bias"):
        recipes.set_linear_head(nn.Linear(6, 3, bias=False), weight, bias)


def test_head_features_are_the_heads_inputs_in_eval_mode():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    x = torch.randn(7, 4)
    features = recipes.head_features(model, x, batch_size=3)
    assert torch.allclose(features, model[0](x).detach()) and model.training and model[1].training


# ---------------------------------------------------------------- LP-FT
def test_lp_ft_fits_the_head_in_closed_form_then_fine_tunes_everything_at_the_smaller_lr():
    """LP-FT as published: the head equals the converged probe on the head's inputs before any step,
    and every parameter trains at ft_lr_mult x lr."""
    model, x = _mlp(), torch.randn(60, 4)
    labels = torch.arange(60) % 3
    expected = recipes.fit_linear_probe(recipes.head_features(model, x), labels, C=0.5)
    tuning = recipes.lp_ft(ft_lr_mult=0.1, C=0.5).build(
        model, torch.optim.SGD, lr=1e-2, probe=lambda m: (recipes.head_features(m, x), labels))
    assert torch.equal(model[6].weight, expected[0]) and torch.equal(model[6].bias, expected[1])
    table = tuning.optimizer.explain()
    assert not table.frozen.any() and table.lr.eq(1e-2 * 0.1).all()


def test_lp_ft_takes_features_or_a_fitted_head_and_needs_one_of_them():
    features, labels = recipes.head_features(_mlp(), torch.randn(30, 4)), torch.arange(30) % 3
    model = _mlp()
    recipes.lp_ft().build(model, torch.optim.SGD, lr=0.1, probe=(features, labels))
    assert torch.equal(model[6].weight, recipes.fit_linear_probe(features, labels)[0])
    model = _mlp()
    before = model[6].weight.detach().clone()
    recipes.lp_ft().build(model, torch.optim.SGD, lr=0.1, probe="fitted")
    assert torch.equal(model[6].weight, before)
    with pytest.raises(ValueError, match="starts from a linear probe"):
        recipes.lp_ft().build(_mlp(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="fits no probe"):
        recipes.full().build(_mlp(), torch.optim.SGD, lr=0.1, probe="fitted")
    with pytest.raises(ValueError, match="ft_lr_mult and C must be > 0"):
        recipes.lp_ft(ft_lr_mult=0)


def test_lp_ft_fine_tunes_at_the_given_lr_by_default():
    """The authors sweep LP-FT's fine-tuning stage over FT's own lrs: by default it runs at lr itself."""
    tuning = recipes.lp_ft().build(_mlp(), torch.optim.SGD, lr=0.1, probe="fitted")
    assert tuning.optimizer.explain().lr.eq(0.1).all()


def test_lp_ft_keeps_parameters_frozen_before_build_frozen():
    model = _mlp()
    model[0].weight.requires_grad_(False)
    tuning = recipes.lp_ft().build(model, torch.optim.SGD, lr=0.1, probe="fitted")
    _train_mlp(tuning, model, 3)
    assert not model[0].weight.requires_grad and tuning.optimizer.is_frozen("0.weight")


def _train_mlp(tuning, model, steps, metric=lambda step: 0.5):
    stops = []
    for step in range(steps):
        model(torch.randn(5, 4)).square().mean().backward()
        tuning.optimizer.step()
        tuning.optimizer.zero_grad()
        tuning.after_step()
        decision = tuning.observe(metric(step))
        stops.append(decision is not None and decision.stop)
    return stops


# ---------------------------------------------------------------- unfreezing schedules
def test_gradual_unfreezing_trains_everything_after_its_last_stage():
    """After the last stage every parameter trains and keeps changing until the end of the budget."""
    model = _mlp()
    tuning = recipes.gradual_unfreezing().build(model, torch.optim.SGD, lr=0.1, steps_per_epoch=2)
    _train_mlp(tuning, model, 8)  # 4 depths: stages at epochs 1, 2, 3
    assert tuning.unfreezing.stages_remaining == 0
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _train_mlp(tuning, model, 4)
    assert all(p.requires_grad and not torch.equal(before[name], p) for name, p in model.named_parameters())


def test_gradual_unfreezing_spread_over_a_fraction_of_the_budget():
    model = _mlp()
    tuning = recipes.gradual_unfreezing(unfreeze_fraction=0.5).build(model, torch.optim.SGD, lr=0.1, total_steps=12)
    _train_mlp(tuning, model, 5)
    assert tuning.unfreezing.stages_remaining == 1
    _train_mlp(tuning, model, 1)
    assert tuning.unfreezing.stages_remaining == 0 and [h["step"] for h in tuning.unfreezing.history] == [2, 4, 6]
    with pytest.raises(ValueError, match="needs total_steps"):
        recipes.gradual_unfreezing(unfreeze_fraction=0.5).build(_mlp(), torch.optim.SGD, lr=0.1)


def test_unfreezing_recipes_never_thaw_what_the_user_froze():
    """Parameters frozen before build (a whole stage, or part of one) stay frozen through every stage."""
    model = _mlp()
    model[0].weight.requires_grad_(False)
    for p in model[2].parameters():
        p.requires_grad_(False)
    tuning = recipes.gradual_unfreezing().build(model, torch.optim.SGD, lr=0.1, steps_per_epoch=1)
    _train_mlp(tuning, model, 5)
    assert tuning.unfreezing.stages_remaining == 0
    assert _trainable(model) == {"0.bias", "4.weight", "4.bias", "6.weight", "6.bias"}


def test_plateau_unfreezing_advances_then_stops_and_restores():
    """A flat validation metric advances a stage every `patience` checks; once no stage remains the
    next plateau stops training (and restores the best weights)."""
    model = _vit()
    tuning = recipes.plateau_unfreezing(patience=1, depths_per_stage=2, fallback_fraction=None).build(
        model, torch.optim.AdamW, lr=1e-3)
    stages = tuning.unfreezing.stages_remaining
    stops = _train(tuning, model, stages + 3)
    assert tuning.unfreezing.stages_remaining == 0
    assert stops.index(True) == stages + 1


def test_plateau_unfreezing_without_plateau_still_unfreezes_everything_by_the_fallback_fraction():
    """Improving metrics never plateau: the fallback still unfreezes every stage by half the budget,
    so the recipe differs from surgical_last (which trains only the last block and head)."""
    model = _mlp()
    tuning = recipes.plateau_unfreezing(patience=2, depths_per_stage=2).build(model, torch.optim.SGD, lr=0.1, total_steps=20)
    assert tuning.unfreezing.stages_remaining == 1
    stops = _train_mlp(tuning, model, 10, metric=lambda step: step)
    assert tuning.unfreezing.stages_remaining == 0 and not any(stops)
    assert _trainable(model) == {name for name, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="fallback_fraction"):
        recipes.plateau_unfreezing(fallback_fraction=0)


# ---------------------------------------------------------------- surgical
@pytest.mark.parametrize("block, stages", [("first", {"conv1", "bn1", "layer1"}), ("middle", {"layer2", "layer3"}),
                                           ("last", {"layer4"}), ("head", set())])
@pytest.mark.parametrize("train_head", [True, False])
def test_surgical_trains_one_block_and_the_head_if_asked(block, stages, train_head):
    if block == "head" and not train_head:
        with pytest.raises(ValueError, match="trains nothing"):
            recipes.surgical(block, train_head=train_head)
        return
    model = timm.create_model("resnet10t", num_classes=3)
    recipes.surgical(block, train_head=train_head).build(model, torch.optim.SGD, lr=0.1)
    trainable = _trainable(model)
    assert ({"fc.weight", "fc.bias"} <= trainable) == train_head
    assert {name.split(".")[0] for name in trainable - {"fc.weight", "fc.bias"}} == stages


def test_surgical_keeps_the_source_head_and_fails_on_a_model_without_a_middle():
    model = _mlp()
    head = model[6].weight.detach().clone()
    tuning = recipes.surgical("last", train_head=False).build(model, torch.optim.SGD, lr=0.1)
    _train_mlp(tuning, model, 2)
    assert torch.equal(model[6].weight, head) and tuning.optimizer.explain().query("not frozen").name.tolist() == ["4.weight", "4.bias"]
    with pytest.raises(ValueError, match="middle block matches no parameter"):
        recipes.surgical("middle").build(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="block must be one of"):
        recipes.surgical("second")


def test_recipes_registry_builds_every_strategy_on_a_plain_module():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    for name, make in recipes.RECIPES.items():
        probe = "fitted" if name == "lp_ft" else None
        tuning = make().build(model, torch.optim.AdamW, lr=1e-3, total_steps=10, steps_per_epoch=5, probe=probe)
        assert tuning.optimizer.param_groups, name
        for param in model.parameters():
            param.requires_grad_(True)


def test_a_recipe_with_early_stopping_but_no_restore_builds():
    """Recipe.build and the framework callbacks build their stopper the same way
    (EarlyStopping.from_settings): settings without restore_best never fail because a model exists."""
    import torch.nn as nn

    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    tuning = recipes.Recipe("mine", early_stopping={"patience": 3}).build(model, torch.optim.SGD, lr=0.1)
    assert tuning.early_stopping.plateau.patience == 3 and tuning.early_stopping.model is None
    restoring = recipes.Recipe("mine", early_stopping={"patience": 3, "restore_best": True})
    assert restoring.build(model, torch.optim.SGD, lr=0.1).early_stopping.model is model
