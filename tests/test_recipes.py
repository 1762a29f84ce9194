"""Recipes: each strategy sets up what its paper describes, on a timm model and a plain module."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

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
        stops.append(tuning.after_validation(metric(step)))
    return stops


def _trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_linear_probe_trains_only_the_head():
    model = _vit()
    recipes.linear_probe().build(model, torch.optim.AdamW, lr=1e-3)
    assert _trainable(model) == {"head.weight", "head.bias"}


def test_lp_ft_switches_to_full_fine_tuning_at_the_probe_fraction():
    model = _vit()
    tuning = recipes.lp_ft(0.5).build(model, torch.optim.AdamW, lr=1e-3, total_steps=6)
    _train(tuning, model, 2)
    assert _trainable(model) == {"head.weight", "head.bias"}
    _train(tuning, model, 1)
    assert _trainable(model) == {name for name, _ in model.named_parameters()}


def test_lp_ft_needs_total_steps():
    with pytest.raises(ValueError, match="needs total_steps"):
        recipes.lp_ft().build(_vit(), torch.optim.AdamW, lr=1e-3)


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


@pytest.mark.parametrize("block", ["first", "last"])
def test_surgical_trains_one_stage_plus_head(block):
    model = timm.create_model("resnet10t", num_classes=3)
    recipes.surgical(block).build(model, torch.optim.SGD, lr=0.1)
    stage = "layer1." if block == "first" else "layer4."
    trainable = _trainable(model) - {"fc.weight", "fc.bias"}
    assert trainable and all(name.startswith(stage) or (block == "first" and name.startswith(("conv1", "bn1"))) for name in trainable)
    assert any(name.startswith(stage) for name in trainable)


def test_gradual_unfreezing_one_stage_per_epoch_with_discriminative_rates():
    model = _vit()
    tuning = recipes.gradual_unfreezing(discriminative_gamma=1 / 2.6).build(model, torch.optim.AdamW, lr=1e-3, steps_per_epoch=2)
    before = len(_trainable(model))
    _train(tuning, model, 2)
    assert len(_trainable(model)) > before
    assert tuning.optimizer.explain().lr.min() == pytest.approx(1e-3 / 2.6 ** 4)


def test_plateau_unfreezing_advances_then_stops_and_restores():
    """A flat validation metric advances a stage every `patience` checks; once no stage remains the
    next plateau stops training (and restores the best weights)."""
    model = _vit()
    tuning = recipes.plateau_unfreezing(patience=1, depths_per_stage=2).build(model, torch.optim.AdamW, lr=1e-3)
    stages = tuning.unfreezing.stages_remaining
    stops = _train(tuning, model, stages + 3)
    assert tuning.unfreezing.stages_remaining == 0
    assert stops.index(True) == stages + 1


def test_recipes_registry_builds_every_strategy_on_a_plain_module():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    for name, make in recipes.RECIPES.items():
        tuning = make().build(model, torch.optim.AdamW, lr=1e-3, total_steps=10, steps_per_epoch=5)
        assert tuning.optimizer.param_groups, name
        for param in model.parameters():
            param.requires_grad_(True)
