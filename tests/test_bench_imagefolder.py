"""Any ImageFolder directory as a task: one folder split by the pools, or train/val/test subfolders;
built in a temp dir from skimage's shipped textures, used from a TOML config end to end."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from benchmarks.__main__ import main
from benchmarks.cells import key_environment
from benchmarks.config import ConfigError, load_suite, suite_from_toml
from benchmarks.data import FolderDataset, folder_root, imagefolder_raw, raw_dataset
from benchmarks.sources import SourceModel, cell_data
from benchmarks.store import read_runs
from benchmarks.training import resolve_device

TEXTURES = ("brick", "grass", "gravel")


def _write_crops(root: Path, per_class: dict[str, range]) -> None:
    """64x64 crops of each texture (8 x 8 grid, crop i), saved as PNG into root/<texture>/."""
    for name in TEXTURES:
        image = getattr(skimage.data, name)()
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in per_class[name]:
            row, col = divmod(i, 8)
            Image.fromarray(image[row * 64:(row + 1) * 64, col * 64:(col + 1) * 64]).save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("imagefolder")
    _write_crops(base / "single", {name: range(64) for name in TEXTURES})
    for split, crops in (("train", range(0, 40)), ("val", range(40, 48)), ("test", range(48, 64))):
        _write_crops(base / "split" / split, {name: crops for name in TEXTURES})
    return {"single": base / "single", "split": base / "split"}


CONFIG = """
name = "textures"
[[experiments]]
name = "tex"
backbone = "resnet_tiny"
seeds = [0]
lr_factors = [1.0]
source = {kind = "pretrain", dataset = "imagefolder:single", classes = [0, 1, 2], train_pool = [20, 50], test_pool = [0, 10], steps = 20, warmup_steps = 2}
budget = {steps = 4, batch_size = 6, eval_every = 2, warmup_steps = 1}

[[experiments.targets]]
name = "flipped"
dataset = "imagefolder:single"
classes = [0, 1, 2]
shots = 4
val_shots = 4
train_pool = [50, 64]
test_pool = [0, 10]
label_map = [2, 0, 1]

[[experiments.targets]]
name = "split"
dataset = "imagefolder:split"
classes = [0, 1, 2]
shots = 4
val_shots = 4
train_pool = [0, 0]
test_pool = [0, 0]

[[experiments.strategies]]
name = "full"
recipe = "full"
lr = 3e-3

[[experiments.strategies]]
kind = "pixel"
"""


def test_imagefolder_loads_grayscale_28px_with_split_positions(folders) -> None:
    images, labels, splits = imagefolder_raw(str(folders["single"]))
    assert images.shape == (192, 28, 28) and str(images.dtype) == "torch.uint8" and splits is None
    assert np.bincount(labels.numpy()).tolist() == [64, 64, 64]
    images, labels, splits = imagefolder_raw(str(folders["split"]))
    assert {k: len(v) for k, v in splits.items()} == {"train": 120, "val": 24, "test": 48}


def test_split_folders_give_train_val_test(folders) -> None:
    suite = suite_from_toml(CONFIG, base=folders["single"].parent)
    experiment = suite.experiments[0]
    _, _, splits = imagefolder_raw(str(folders["split"]))
    data = [cell_data(experiment, experiment.targets[1], seed) for seed in (0, 1)]
    assert set(data[0].test.ids) == set(splits["test"])
    assert set(data[0].train.ids) <= set(splits["train"]) and set(data[0].val.ids) <= set(splits["val"])
    assert len(data[0].train.ids) == 12 and not np.array_equal(data[0].train.ids, data[1].train.ids)


def test_split_folders_need_no_pools_and_keep_the_keys_of_targets_that_set_them(folders) -> None:
    """train_pool and test_pool are optional for an ImageFolder with train/test folders (they are not used
    there): left out, the target reads the same images as with them; a target that sets them keeps its cell
    keys (no default enters Cell.config()). A dataset without split folders still needs both."""
    without = CONFIG.replace("val_shots = 4\ntrain_pool = [0, 0]\ntest_pool = [0, 0]\n", "val_shots = 4\n")
    assert without != CONFIG
    suite = suite_from_toml(without, base=folders["single"].parent)
    target = suite.experiments[0].targets[1]
    assert (target.train_pool, target.test_pool) == (None, None)
    pooled = suite_from_toml(CONFIG, base=folders["single"].parent).experiments[0]
    data, reference = (cell_data(e, e.targets[1], 0) for e in (suite.experiments[0], pooled))
    assert np.array_equal(data.train.ids, reference.train.ids) and np.array_equal(data.test.ids, reference.test.ids)
    split_cell = next(c for c in suite_from_toml(CONFIG, base=folders["single"].parent).cells()
                      if c.target.name == "split")
    assert list(split_cell.config()["target"]) == ["name", "dataset", "classes", "shots", "val_shots", "train_pool",
                                                   "test_pool", "shift", "label_map", "ood"]
    assert (split_cell.config()["target"]["train_pool"], split_cell.config()["target"]["test_pool"]) == ((0, 0),
                                                                                                          (0, 0))
    single = CONFIG.replace("train_pool = [50, 64]\ntest_pool = [0, 10]\n", "")
    with pytest.raises(ConfigError, match=re.escape("targets[0]: missing keys ['test_pool', 'train_pool'] (a "
                                                    "dataset without train/test folders is split by its pools)")):
        suite_from_toml(single, base=folders["single"].parent)


def test_missing_folder_is_a_config_error(folders) -> None:
    with pytest.raises(ConfigError, match=r"targets\[1\]: ImageFolder directory .*nowhere.* does not exist"):
        suite_from_toml(CONFIG.replace("imagefolder:split", "imagefolder:nowhere"), base=folders["single"].parent)


@pytest.mark.parametrize("change, message", [
    (("classes = [0, 1, 2]\nshots = 4\nval_shots = 4\ntrain_pool = [50",
      "classes = [0, 3]\nshots = 4\nval_shots = 4\ntrain_pool = [50"),
     "targets[0].classes: [0, 3] must be distinct classes of the dataset: 0-2 (0=brick, 1=grass, 2=gravel)"),
    (("shots = 4\nval_shots = 4\ntrain_pool = [0, 0]", "shots = 41\nval_shots = 4\ntrain_pool = [0, 0]"),
     "targets[1].shots: 41 do not fit into the 40 images of class 0 (brick) in the train folder"),
    (("shots = 4\nval_shots = 4\ntrain_pool = [0, 0]", "shots = 4\nval_shots = 9\ntrain_pool = [0, 0]"),
     "targets[1].val_shots: 9 do not fit into the 8 images of class 0 (brick) in the val folder"),
    (("train_pool = [50, 64]", "train_pool = [60, 64]"),
     "targets[0].train_pool: [60, 64] holds 4 images of class 0 (brick), fewer than shots + val_shots = 8"),
])
def test_classes_and_shots_are_checked_against_the_folders(folders, change, message) -> None:
    text = CONFIG.replace(*change)
    assert text != CONFIG
    with pytest.raises(ConfigError, match=re.escape(message)):
        suite_from_toml(text, base=folders["single"].parent)


def test_keys_and_cache_files_name_the_images_not_where_they_lie(folders, tmp_path) -> None:
    environment = key_environment(resolve_device("cpu", threads=1))
    original = suite_from_toml(CONFIG, base=folders["single"].parent)
    copy = tmp_path / "elsewhere"
    shutil.copytree(folders["single"].parent, copy)
    copied = suite_from_toml(CONFIG, base=copy)
    assert [c.key(environment) for c in copied.cells()] == [c.key(environment) for c in original.cells()]
    dataset = copied.experiments[0].targets[0].dataset
    assert isinstance(dataset, FolderDataset) and re.fullmatch(r"imagefolder:[0-9a-f]{16}", dataset)
    assert folder_root(dataset) == str((copy / "single").resolve())
    assert pickle.loads(pickle.dumps(copied.experiments[0])).targets[0].dataset.root == dataset.root
    assert raw_dataset(dataset)[0].equal(raw_dataset(original.experiments[0].targets[0].dataset)[0])
    source = SourceModel(copied.experiments[0]).path(tmp_path / "cache", environment)
    assert source.parent == tmp_path / "cache" and re.fullmatch(r"source-imagefolder-[0-9a-f]{16}-[0-9a-f]{16}\.pt",
                                                                 source.name)
    image = copy / "single" / "brick" / "0.png"
    pixels = np.array(Image.open(image))
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(image)  # one pixel of one image: other keys for the cells that read it
    changed = suite_from_toml(CONFIG, base=copy)
    assert changed.experiments[0].targets[0].dataset != dataset
    assert changed.experiments[0].targets[1].dataset == copied.experiments[0].targets[1].dataset
    assert not {c.key(environment) for c in changed.cells()} & {c.key(environment) for c in copied.cells()}


@pytest.mark.slow
def test_imagefolder_config_runs_end_to_end(folders, tmp_path) -> None:
    config = folders["single"].parent / "textures.toml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    records = read_runs(out / "runs.jsonl")
    grid = [r for r in records if r["phase"] == "grid"]
    assert len(grid) == len(load_suite(config).cells()) == 8 and all(r["status"] == "ok" for r in records)


# ---------------------------------------------------------------- RGB folders through a timm backbone
PHOTOS = ("astronaut", "coffee", "chelsea")
TIMM_MODEL = "test_resnet.r160_in1k"  # timm's 160 px test network: its pretrained config says (3, 160, 160)

RGB_CONFIG = f"""
name = "photos"
[[experiments]]
name = "photo"
backbone = "timm:{TIMM_MODEL}"
seeds = [0]
lr_factors = [1.0]
budget = {{steps = 2, batch_size = 4, eval_every = 2, warmup_steps = 1}}

[[experiments.targets]]
name = "crops"
dataset = "imagefolder:rgb"
classes = [0, 1, 2]
shots = 4
val_shots = 2
train_pool = [0, 8]
test_pool = [8, 12]

[[experiments.strategies]]
name = "full"
recipe = "full"
lr = 1e-3
"""


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory) -> Path:
    """64x64 RGB crops of three of skimage's colour photos, 12 per class."""
    root = tmp_path_factory.mktemp("rgb") / "rgb"
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        (root / name).mkdir(parents=True)
        for i in range(12):
            row, col = divmod(i, 4)
            Image.fromarray(image[row * 64:(row + 1) * 64, col * 64:(col + 1) * 64]).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> tuple[Path, str]:
    """A Hugging Face hub-layout cache holding timm's test_resnet weights (a random init saved as the
    hub's model.safetensors under models--timm--<name>/snapshots/<revision>/, refs/main naming it),
    built here: nothing is downloaded. Returns the weights file and the revision."""
    import huggingface_hub.constants
    import safetensors.torch
    import timm
    import torch

    torch.manual_seed(0)
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"models--timm--{TIMM_MODEL}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    weights = snapshot / "model.safetensors"
    safetensors.torch.save_file(timm.create_model(TIMM_MODEL, pretrained=False).state_dict(), str(weights))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from benchmarks.backbones import weights_record

    weights_record.cache_clear()
    yield weights, revision
    weights_record.cache_clear()


def test_an_rgb_folder_is_read_in_colour_at_the_experiments_size(rgb_folder) -> None:
    images, labels, _ = imagefolder_raw(str(rgb_folder), 64, 3)
    assert images.shape == (36, 64, 64, 3) and str(images.dtype) == "torch.uint8"
    red, green = images[..., 0].float(), images[..., 1].float()
    assert (red - green).abs().mean() > 5  # colour kept: the channels differ (grayscale would make them equal)
    gray, _, _ = imagefolder_raw(str(rgb_folder))
    assert gray.shape == (36, 28, 28)
    with pytest.raises(ValueError, match="1 \\(grayscale\\) or 3 \\(RGB\\)"):
        imagefolder_raw(str(rgb_folder), 64, 2)


@pytest.mark.slow
def test_rgb_folder_through_a_timm_backbone_at_its_own_size_from_a_hub_cache(rgb_folder, hub_cache, tmp_path) -> None:
    """A 64 px RGB ImageFolder, a timm backbone whose weights come from a hub-layout cache built here:
    the experiment takes the backbone's own input size (160 px, no image_size given), the cells see
    3-channel 160 px images, the run completes, and every cell records the weights it used."""
    from benchmarks.backbones import weights_record
    from benchmarks.sources import backbone_inputs
    from benchmarks.store import sha256_file

    weights, revision = hub_cache
    config = rgb_folder.parent / "photos.toml"
    config.write_text(RGB_CONFIG)
    suite = load_suite(config)
    experiment = suite.experiments[0]
    assert experiment.image_size == 160
    data = cell_data(experiment, experiment.targets[0], 0)
    assert tuple(data.train.pixels.shape[1:]) == (3, 160, 160)
    assert tuple(backbone_inputs(experiment, data.train.pixels).shape[1:]) == (3, 160, 160)
    assert weights_record(experiment) == {"file": "model.safetensors", "revision": revision,
                                          "sha256": sha256_file(weights)}
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    records = read_runs(out / "runs.jsonl")
    assert records and all(r["status"] == "ok" for r in records)
    assert all(r["weights"] == {"file": "model.safetensors", "revision": revision, "sha256": sha256_file(weights)}
               for r in records)
