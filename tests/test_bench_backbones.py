"""Tests for benchmarks.backbones: the tiny ResNet, the offline ImageNet EfficientNet-Lite0 and its split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks import backbones, data

BELL_COTE, PALACE, MONASTERY, STUPA = 442, 698, 663, 832
DAISY, BEE = 985, 309
TABBY, TIGER_CAT, EGYPTIAN_CAT = 281, 282, 285
ESPRESSO = 967


def test_resnet_tiny_is_small_and_staged() -> None:
    torch.manual_seed(0)
    model = backbones.create_resnet_tiny(num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 1, 28, 28)).shape == (3, 5)
    assert sum(p.numel() for p in model.parameters()) < 100_000
    assert model.pretrained_cfg["mean"] == (0.5,)


def test_lite0_top_on_cached_lower_outputs_equals_the_whole_model() -> None:
    model = backbones.create_lite(pretrained=True)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        whole = model(images)
        split = backbones.Lite0Top(model)(backbones.lite0_lower(model)(images))
    assert torch.allclose(whole, split, atol=1e-5)
    top = backbones.Lite0Top(model)
    top.reset_classifier(7)
    assert top.get_classifier().out_features == 7
    random_init = backbones.create_lite(pretrained=False)
    assert not torch.equal(random_init.conv_head.weight, model.conv_head.weight)
    assert torch.equal(random_init.conv_head.weight, backbones.create_lite(pretrained=False).conv_head.weight)


def test_map_state_dict_by_order_renames_and_checks() -> None:
    source = {"_a.weight": torch.zeros(2, 3), "_a.bias": torch.ones(2)}
    target = {"a.weight": torch.empty(2, 3), "a.bias": torch.empty(2)}
    mapped = backbones.map_state_dict_by_order(source, target)
    assert list(mapped) == ["a.weight", "a.bias"] and torch.equal(mapped["a.bias"], torch.ones(2))
    with pytest.raises(ValueError, match=r"#1: _a.bias \(2,\) vs a.bias \(3,\)"):
        backbones.map_state_dict_by_order(source, {"a.weight": torch.empty(2, 3), "a.bias": torch.empty(3)})
    with pytest.raises(ValueError, match="#0: _a.weight"):
        backbones.map_state_dict_by_order(source, {"a.bias": torch.empty(2, 3), "a.weight": torch.empty(2)})
    with pytest.raises(ValueError, match="2 entries, target has 1"):
        backbones.map_state_dict_by_order(source, {"a.weight": torch.empty(2, 3)})


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return backbones.load_efficientnet_lite("lite0")


@pytest.fixture(scope="module")
def photo_probabilities(lite0: nn.Module) -> dict[str, torch.Tensor]:
    """Softmax over ImageNet classes for centre crops of four shipped photos at 224 px."""
    names = ("china", "flower", "chelsea", "coffee")
    images = torch.stack([data.center_crop(data.load_photo(name), 224) for name in names])
    with torch.no_grad():
        logits = lite0(data.normalize(images, lite0.pretrained_cfg["mean"], lite0.pretrained_cfg["std"]))
    return dict(zip(names, logits.softmax(-1), strict=True))


def test_lite0_is_timm_in_eval_with_half_mean_std(lite0: nn.Module) -> None:
    assert not lite0.training and lite0.num_classes == 1000
    assert lite0.pretrained_cfg["mean"] == lite0.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    assert len(lite0.state_dict()) == 296


def top5(probabilities: torch.Tensor) -> set[int]:
    return set(probabilities.topk(5).indices.tolist())


def test_lite0_classifies_the_temple(photo_probabilities: dict[str, torch.Tensor]) -> None:
    """china.jpg (a temple by a lake): seen top-5 palace, bell cote, lakeside, monastery, boathouse."""
    probabilities = photo_probabilities["china"]
    assert int(probabilities.argmax()) in {PALACE, BELL_COTE, MONASTERY, STUPA}
    assert {PALACE, BELL_COTE, MONASTERY} <= top5(probabilities)


def test_lite0_classifies_the_flower(photo_probabilities: dict[str, torch.Tensor]) -> None:
    """flower.jpg (a bee on a daisy-like flower): seen top-1 daisy, bee in the top 5."""
    probabilities = photo_probabilities["flower"]
    assert int(probabilities.argmax()) == DAISY
    assert BEE in top5(probabilities)


def test_lite0_classifies_the_cat_and_the_coffee(photo_probabilities: dict[str, torch.Tensor]) -> None:
    """chelsea: cats hold the top 3 (Egyptian, tiger, tabby); coffee: espresso at over 0.9."""
    assert set(photo_probabilities["chelsea"].topk(3).indices.tolist()) == {TABBY, TIGER_CAT, EGYPTIAN_CAT}
    assert float(photo_probabilities["coffee"][ESPRESSO]) > 0.9


def test_lite0_with_a_new_head_keeps_the_backbone(lite0: nn.Module) -> None:
    model = backbones.load_efficientnet_lite("lite0", num_classes=5)
    assert model.get_classifier().out_features == 5 and not model.training
    assert torch.equal(model.conv_head.weight, lite0.conv_head.weight)
    assert torch.equal(model.blocks[3][0].bn1.running_var, lite0.blocks[3][0].bn1.running_var)


def test_lite2_weights_load_and_classify_the_coffee() -> None:
    model = backbones.load_efficientnet_lite("lite2")
    size = backbones.LITE_WEIGHTS["lite2"][3]
    image = data.center_crop(data.load_photo("coffee"), size)[None]
    with torch.no_grad():
        probabilities = model(data.normalize(image, (0.5,) * 3, (0.5,) * 3)).softmax(-1)[0]
    assert int(probabilities.argmax()) == ESPRESSO
    with pytest.raises(KeyError):
        backbones.load_efficientnet_lite("lite9")


def test_one_backbone_registry_answers_every_question_a_suite_asks() -> None:
    """benchmarks.backbones.backbone(name) is the one dispatch on a backbone's name: family, input
    channels and normalisation, which source kinds fit, how it is built; unknown names fail there."""
    from benchmarks.backbones import BACKBONES, Backbone, backbone

    assert set(BACKBONES) == {"resnet_tiny", "convnext_tiny", "vit_tiny", "lite0_top", "lite0_full", "lite2_full"}
    vit = backbone("vit_tiny")
    assert (vit.family, vit.channels, vit.sources, vit.normalization()) == ("ViT", 1, ("pretrain",), ((0.5,), (0.5,)))
    assert vit.input_shape(28) == (1, 28, 28)
    model = vit.create(False, 5)
    assert model.num_classes == 5 and sum(p.numel() for p in model.parameters()) < 100_000
    with pytest.raises(ValueError, match="pretrained by the suite"):
        vit.create(True, 5)
    top = backbone("lite0_top")
    assert top.fed_features and top.sources == ("imagenet",) and top.pretrained_kind == "imagenet"
    with pytest.raises(ValueError, match="cached features"):
        top.input_shape(224)
    assert backbone("lite2_full").sources == ("adapt", "imagenet")
    resnet = backbone("timm:resnet18")
    assert isinstance(resnet, Backbone) and resnet.family == "resnet" and resnet.channels == 3
    assert resnet.normalization() == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert resnet.pretrained_kind == "timm_pretrained" and resnet.input_shape(224) == (3, 224, 224)
    for name in ("resnet_huge", "timm:no_such_model"):
        with pytest.raises(KeyError, match="unknown backbone"):
            backbone(name)


def test_backbone_inputs_normalise_by_the_registry() -> None:
    """Pixels become inputs through the registry: 1 channel at mean = std = 0.5 for the suite's
    architectures, 3 channels with the timm model's own statistics for timm:<name>."""
    import dataclasses

    from benchmarks.catalog import SUITES
    from benchmarks.sources import backbone_inputs

    experiment = next(e for e in SUITES["standard"].experiments if e.backbone == "convnext_tiny")
    pixels = torch.rand(2, 1, 28, 28)
    x = backbone_inputs(experiment, pixels)
    assert x.shape == (2, 1, 32, 32) and torch.allclose(x * 0.5 + 0.5, data.resize(pixels, 32), atol=1e-6)
    timm_experiment = dataclasses.replace(experiment, backbone="timm:resnet18", image_size=28)
    y = backbone_inputs(timm_experiment, pixels)
    assert y.shape == (2, 3, 28, 28)
    assert torch.allclose(y[:, 0] * 0.229 + 0.485, pixels[:, 0], atol=1e-6)
    with pytest.raises(KeyError, match="not fed images"):
        backbone_inputs(dataclasses.replace(experiment, backbone="lite0_top"), pixels)
