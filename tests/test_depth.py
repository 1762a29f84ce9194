"""Depth assignment: timm group_matcher, the generic fallback, wrappers, and that depth is structural."""

from __future__ import annotations

import timm
import torch.nn as nn
import torchvision
from hypothesis import given
from hypothesis import strategies as st

from lrgroups.depth import find_head, generic_depths, param_depths, timm_depths
from strategies import module_trees


def test_generic_resnet18_matches_timm_layout():
    """torchvision's resnet18 gets the layout timm's group_matcher gives timm's resnet18: stem 0,
    one depth per residual block, the classifier at the top; coarse gives one depth per stage."""
    tv = param_depths(torchvision.models.resnet18())
    tm = timm_depths(timm.create_model("resnet18"))
    assert tv == tm
    coarse = param_depths(torchvision.models.resnet18(), coarse=True)
    assert coarse["conv1.weight"] == 0 and coarse["layer1.1.bn2.bias"] == 1 and coarse["layer4.0.conv1.weight"] == 4
    assert coarse["fc.weight"] == 5


def test_generic_mlp_one_depth_per_linear_norm_joins_previous():
    mlp = nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    assert generic_depths(mlp) == {
        "0.weight": 0, "0.bias": 0, "1.weight": 0, "1.bias": 0,
        "3.weight": 1, "3.bias": 1, "4.weight": 2, "4.bias": 2,
    }


def test_generic_custom_module_with_backbone_and_head():
    """A user module holding a torchvision backbone and a new head: the backbone's blocks are
    descended into, the head comes last."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torchvision.models.resnet18()
            self.backbone.fc = nn.Identity()
            self.head = nn.Linear(512, 3)

    depths = generic_depths(Net())
    assert depths["backbone.conv1.weight"] == 0
    assert depths["backbone.layer4.1.bn2.bias"] == 8
    assert depths["head.weight"] == 9


def test_timm_vit_depths_and_head():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=4)
    depths = param_depths(model)
    assert depths["cls_token"] == 0 and depths["blocks.0.attn.qkv.weight"] == 1
    assert depths["head.weight"] == max(depths.values()) == 4
    assert find_head(model) is model.head


@given(module_trees(), st.randoms())
def test_depth_is_structural(tree, random):
    """Freezing any subset of parameters changes no parameter's depth (fine or coarse)."""
    before = (param_depths(tree), param_depths(tree, coarse=True))
    for param in tree.parameters():
        param.requires_grad_(random.random() < 0.5)
    assert (param_depths(tree), param_depths(tree, coarse=True)) == before


@given(module_trees())
def test_depths_cover_every_parameter_and_are_dense(tree):
    """Every named parameter gets a depth; depths are 0..max with no gaps; the final layer registered
    (the classifier in these trees) sits at the top."""
    depths = param_depths(tree)
    assert list(depths) == [name for name, _ in tree.named_parameters()]
    assert sorted(set(depths.values())) == list(range(max(depths.values()) + 1))
    last = list(depths)[-1]
    assert depths[last] == max(depths.values())
