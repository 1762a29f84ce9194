"""Any timm model as a backbone (``timm:<name>``): weights from the local cache only, a clear error
naming the model and the fetch command when absent; a random-init tiny timm model end to end."""

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
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), loaded.state_dict().values()))


def test_unknown_timm_model_and_pretrain_source_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="timm has no model 'no_such_net'"):
        suite_from_toml(CONFIG.replace("timm:test_resnet", "timm:no_such_net"))
    with pytest.raises(ConfigError, match="a timm backbone brings its own weights"):
        suite_from_toml(CONFIG.replace('image_size = 32', 'image_size = 32\nsource = {kind = "pretrain"}'))


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
    assert not weights_available("timm:test_resnet") and weights_available("resnet_tiny")
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
