"""Any timm model as a backbone (``timm:<name>``): weights from the local cache only, a clear error
naming the model and the fetch command when absent; a random-init tiny timm model end to end; weights
from a local checkpoint file (its hash in the cell keys and records); a timm architecture the suite
pretrains on a source task."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from benchmarks import backbones
from benchmarks.__main__ import main
from benchmarks.backbones import MissingWeightsError, create_timm, fetch_command, weights_available
from benchmarks.config import ConfigError, suite_from_toml
from benchmarks.store import read_runs

CONFIG = """
name = "timm_tiny"
[[experiments]]
name = "t"
backbone = "timm:test_resnet"
image_size = 32
seeds = [0]
lr_factors = [1.0]
budget = {steps = 2, batch_size = 10, eval_every = 1, warmup_steps = 1}

[[experiments.targets]]
name = "animal3"
dataset = "animal"
classes = [0, 1, 2]
shots = 4
val_shots = 4
train_pool = [100, 110]
test_pool = [0, 10]

[[experiments.strategies]]
kind = "scratch"
lr = 1e-3

[[experiments.strategies]]
kind = "pixel"
"""


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch_hub"))
    yield
    torch.hub.set_dir(old)


def test_uncached_weights_name_the_model_and_the_fetch_command(empty_caches) -> None:
    with pytest.raises(MissingWeightsError) as error:
        create_timm("convnext_tiny.fb_in22k", pretrained=True)
    assert "'convnext_tiny.fb_in22k'" in str(error.value)
    assert fetch_command("convnext_tiny.fb_in22k") in str(error.value)
    assert "timm.create_model('convnext_tiny.fb_in22k', pretrained=True)" in str(error.value)


def test_cached_weights_are_loaded_from_the_local_file(tmp_path, monkeypatch) -> None:
    torch.manual_seed(1)
    reference = create_timm("test_resnet", pretrained=False)
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    monkeypatch.setattr(backbones, "timm_weights_file", lambda name: str(path))
    loaded = create_timm("test_resnet", pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), loaded.state_dict().values(), strict=True))


def test_unknown_timm_model_and_an_adapt_source_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="timm has no model 'no_such_net'"):
        suite_from_toml(CONFIG.replace("timm:test_resnet", "timm:no_such_net"))
    adapt = 'source = {kind = "adapt", dataset = "animal", classes = [0, 1], train_pool = [0, 10], test_pool = [10, 20]}'
    with pytest.raises(ConfigError, match="an? adapt source does not fit backbone 'timm:test_resnet'"):
        suite_from_toml(CONFIG.replace('image_size = 32', f'image_size = 32\n{adapt}'))


FINETUNE = """
[[experiments.strategies]]
name = "ft"
recipe = "full"
lr = 1e-3
"""


def test_dry_run_marks_cells_whose_weights_are_missing(empty_caches, tmp_path, monkeypatch, capsys) -> None:
    """Only cells that start from the pretrained weights need them: scratch and pixel stay pending."""
    config = tmp_path / "timm.toml"
    config.write_text(CONFIG + FINETUNE)
    command = ["run", "--config", str(config), "--dry-run", "--out", str(tmp_path / "out")]
    assert main(command) == 0
    listing = capsys.readouterr().out
    rows = [re.match(r" *\d+  [0-9a-f]{16}  (.+?)  +t +animal3 +(\S+)", line) for line in listing.splitlines()]
    statuses = {row[2]: row[1] for row in rows if row}
    assert statuses == {"scratch": "pending", "pixel": "pending", "ft": "missing weights"}
    assert "1 missing weights, 4 pending" in listing and fetch_command("test_resnet") in listing
    assert not weights_available(suite_from_toml(CONFIG).experiments[0])
    monkeypatch.setattr(backbones, "timm_weights_file", lambda name: str(tmp_path / "weights.pth"))
    assert main(command) == 0
    assert "5 pending" in capsys.readouterr().out


def test_random_init_timm_backbone_runs_end_to_end(tmp_path: Path) -> None:
    config = tmp_path / "timm.toml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    records = read_runs(out / "runs.jsonl")
    assert sum(r["phase"] == "grid" for r in records) == 4 and all(r["status"] == "ok" for r in records)
    scratch = next(r for r in records if r["strategy"] == "scratch")
    assert scratch["source_model"] == {"kind": "random_init"}


def test_the_standard_protocol_on_timm_backbones_dry_runs_and_fails_clearly_without_weights(
        empty_caches, tmp_path, capsys) -> None:
    """benchmarks/configs/standard_timm.toml (four timm families, the standard suite's protocol) loads;
    its dry run marks every pretrained cell as missing weights and names each fetch command; a run
    fails before writing anything, naming every model whose weights are missing."""
    from benchmarks.backbones import family
    from benchmarks.config import load_suite

    config = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "standard_timm.toml"
    suite = load_suite(config)
    assert {family(e.backbone) for e in suite.experiments} == {"resnet", "convnext", "vision_transformer",
                                                              "efficientnet"}
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--dry-run", "--out", str(out)]) == 0
    listing = capsys.readouterr().out
    assert "416 missing weights, 192 pending" in listing
    assert main(["run", "--config", str(config), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    for experiment in suite.experiments:
        assert fetch_command(experiment.backbone[len("timm:"):]) in error
    assert not out.exists()


# --- A local checkpoint file; a timm architecture the suite pretrains -------------------------------

CHECKPOINT_MODEL = "test_resnet.r160_in1k"


def _checkpoint_config(weights: str, extra: str = "") -> str:
    return (CONFIG.replace('backbone = "timm:test_resnet"', f'backbone = "timm:{CHECKPOINT_MODEL}"\n'
                                                           f'weights = "{weights}"{extra}')
            + FINETUNE)


def _save_checkpoint(path: Path, seed: int) -> dict[str, torch.Tensor]:
    """A random-init test_resnet.r160_in1k (1000 classes) saved as ``path`` (safetensors or torch)."""
    import safetensors.torch
    import timm

    torch.manual_seed(seed)
    state = timm.create_model(CHECKPOINT_MODEL, pretrained=False).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.mark.slow
def test_a_local_checkpoint_runs_end_to_end_and_its_hash_keys_and_records_every_cell(
        empty_caches, tmp_path, capsys) -> None:
    """A timm backbone whose weights are a checkpoint file beside the config (nothing in the HF
    cache): the file loads into the model (classifier replaced for the target), its SHA-256 is in
    every cell key (another file: other keys; no weights key in a config that sets none) and is what
    every run record names, and the dry run does not call its weights missing."""
    from benchmarks.config import load_suite
    from benchmarks.sources import source_backbone
    from benchmarks.store import sha256_file

    weights = tmp_path / "ckpt" / "model.safetensors"
    state = _save_checkpoint(weights, seed=3)
    config = tmp_path / "own.toml"
    config.write_text(_checkpoint_config("ckpt/model.safetensors"))
    experiment = load_suite(config).experiments[0]
    sha = sha256_file(weights)
    assert experiment.weights == f"sha256:{sha}" and experiment.weights.path == str(weights.resolve())
    model, meta = source_backbone(experiment, True, tmp_path / "cache", {})
    assert meta == {"kind": "weights_file"}
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    cells = load_suite(config).cells()
    assert all(cell.config()["weights"] == f"sha256:{sha}" for cell in cells)
    other = tmp_path / "ckpt" / "other.pth"  # a torch state dict file: loads too, keys differ
    _save_checkpoint(other, seed=4)
    config.write_text(_checkpoint_config("ckpt/other.pth"))
    assert not {c.key({}) for c in cells} & {c.key({}) for c in load_suite(config).cells()}
    assert all("weights" not in cell.config() for cell in suite_from_toml(CONFIG).cells())

    config.write_text(_checkpoint_config("ckpt/model.safetensors"))
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--dry-run", "--out", str(out)]) == 0
    assert "missing weights" not in capsys.readouterr().out
    assert main(["run", "--config", str(config), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    records = read_runs(out / "runs.jsonl")
    assert records and all(r["status"] == "ok" for r in records)
    assert all(r["weights"] == {"file": "model.safetensors", "revision": None, "sha256": sha} for r in records)
    assert next(r for r in records if r["strategy"] == "ft")["source_model"] == {"kind": "weights_file"}


def test_a_missing_or_misplaced_weights_file_is_a_config_error(tmp_path) -> None:
    from benchmarks.config import load_suite

    config = tmp_path / "own.toml"
    config.write_text(_checkpoint_config("ckpt/missing.safetensors"))
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "ckpt" / "missing.safetensors"))):
        load_suite(config)
    _save_checkpoint(tmp_path / "ckpt" / "model.pth", seed=0)
    pretrain = ('\nsource = {kind = "pretrain", dataset = "animal", classes = [0, 1], steps = 1, '
                'train_pool = [200, 220], test_pool = [0, 10]}')
    config.write_text(_checkpoint_config("ckpt/model.pth", pretrain))
    with pytest.raises(ConfigError, match="weights: a weights file is what the backbone starts from"):
        load_suite(config)
    config.write_text(CONFIG.replace('image_size = 32', 'image_size = 32\nweights = "ckpt/model.pth"')
                      .replace("timm:test_resnet", "resnet_tiny"))
    with pytest.raises(ConfigError, match="only a timm:<model name> backbone takes a weights file"):
        load_suite(config)


def test_a_checkpoint_that_does_not_fit_lists_what_differs(tmp_path) -> None:
    from benchmarks.backbones import weights_file

    path = tmp_path / "convnext.pth"
    torch.save(create_timm("test_convnext", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match="(?s)does not fit timm model 'test_resnet'.*Missing key"):
        create_timm("test_resnet", True, 3, weights_file(path))


PRETRAIN = """
name = "timm_pretrain"
[[experiments]]
name = "p"
backbone = "timm:{model}"
image_size = {size}
seeds = [0]
lr_factors = [1.0]
source = {{kind = "pretrain", dataset = "animal", classes = [3, 4, 5], steps = 3, batch_size = 8, train_pool = [200, 240], test_pool = [0, 10]}}
budget = {{steps = 2, batch_size = 6, eval_every = 1, warmup_steps = 1}}

[[experiments.targets]]
name = "animal3"
dataset = "animal"
classes = [0, 1, 2]
shots = 3
val_shots = 3
train_pool = [100, 110]
test_pool = [0, 6]

[[experiments.strategies]]
name = "ft"
recipe = "full"
lr = 1e-3

[[experiments.strategies]]
kind = "scratch"
lr = 1e-3
"""


@pytest.mark.slow
@pytest.mark.parametrize("model, size", [("test_resnet", 32), ("test_vit", 160)])
def test_the_suite_pretrains_a_timm_architecture_on_a_source_task(model, size, empty_caches, tmp_path) -> None:
    """source = {kind = "pretrain"} with a timm backbone (no weights anywhere): the suite trains
    timm.create_model(name, pretrained=False, num_classes=3) on the 28 px grayscale source, resized to
    the experiment's image size and repeated into the model's 3 channels; the fine-tuning cells start
    from that source model (its record, no cached-weights record) and run."""
    from benchmarks.config import load_suite
    from benchmarks.sources import backbone_inputs, source_splits

    config = tmp_path / "pretrain.toml"
    config.write_text(PRETRAIN.format(model=model, size=size))
    experiment = load_suite(config).experiments[0]
    test, _ = source_splits(experiment)
    inputs = backbone_inputs(experiment, test.pixels)
    assert tuple(test.pixels.shape[1:]) == (1, 28, 28) and tuple(inputs.shape[1:]) == (3, size, size)
    assert torch.equal(inputs[:, 0], inputs[:, 1]) and torch.equal(inputs[:, 1], inputs[:, 2])
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    records = read_runs(out / "runs.jsonl")
    assert records and all(r["status"] == "ok" for r in records)
    assert all(r["weights"] is None for r in records)
    finetuned = next(r for r in records if r["strategy"] == "ft")
    assert finetuned["source_model"]["config"]["kind"] == "source"
    assert finetuned["source_model"]["config"]["backbone"] == f"timm:{model}"
    assert list((out / "cache").glob("source-animal-*.pt"))
