"""A suite as a TOML config file (``benchmarks.config``): same cells as the built-in suite, clear
errors, and a config suite end to end through the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.config import ConfigError, load_suite, suite_from_toml
from benchmarks.runner import key_environment
from benchmarks.store import read_runs
from benchmarks.suites import SUITES
from benchmarks.training import resolve_device

SMOKE_TOML = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "smoke.toml"

TINY = """
name = "tiny"
[[experiments]]
name = "e1"
backbone = "resnet_tiny"
seeds = [0]
keep_source_head = true
bn = "train"
lr_factors = [1.0]
source = {kind = "pretrain", dataset = "animal", classes = [0, 1, 2, 3, 4], train_pool = [200, 240], test_pool = [0, 20], steps = 30, warmup_steps = 5, min_accuracy = 0.3}
budget = {steps = 4, batch_size = 10, eval_every = 2, warmup_steps = 1}

[[experiments.targets]]
name = "perm"
dataset = "animal"
classes = [0, 1, 2, 3, 4]
shots = 4
val_shots = 4
train_pool = [800, 1000]
test_pool = [0, 20]
label_map = [1, 2, 3, 4, 0]

[[experiments.strategies]]
name = "head"
recipe = "surgical"
lr = 0.01
kwargs = {block = "head"}

[[experiments.strategies]]
kind = "pixel"
"""


def test_smoke_config_has_the_builtin_smoke_cells() -> None:
    environment = key_environment(resolve_device("cpu", threads=1))
    from_config = load_suite(SMOKE_TOML)
    assert [c.key(environment) for c in from_config.cells()] == [c.key(environment) for c in SUITES["smoke"].cells()]
    assert from_config.hypotheses == SUITES["smoke"].hypotheses


@pytest.mark.parametrize("change, message", [
    (("[[experiments]]\n", "[[experiments]]\ncolour = 1\n"), "unknown keys ['colour']"),
    (('backbone = "resnet_tiny"', 'backbone = "resnet_huge"'), "unknown backbone 'resnet_huge'"),
    (('recipe = "surgical"', 'recipe = "magic"'), "unknown recipe 'magic'"),
    (('kind = "pixel"', 'kind = "oracle"'), "unknown strategy kind 'oracle'"),
    (("kwargs = {block = \"head\"}", "kwargs = {blok = \"head\"}"), "recipe 'surgical' rejects kwargs"),
    (("steps = 4,", "stepz = 4,"), "experiments[0] (e1).budget: unknown keys ['stepz']"),
    (('dataset = "animal"\nclasses', 'dataset = "cifar"\nclasses'), "unknown dataset 'cifar'"),
])
def test_config_errors_name_what_is_wrong(change, message) -> None:
    text = TINY.replace(*change)
    assert text != TINY
    with pytest.raises(ConfigError, match=re.escape(message)):
        suite_from_toml(text)


def test_lr_factors_set_the_grid() -> None:
    suite = suite_from_toml(TINY.replace("lr_factors = [1.0]", "lr_factors = [0.5, 2.0]"))
    assert [(c.strategy.name, c.lr) for c in suite.cells()] == [("head", 0.005), ("head", 0.02), ("pixel", 0.1),
                                                                ("pixel", 1.0), ("pixel", 10.0)]


@pytest.mark.slow
def test_config_suite_runs_end_to_end(tmp_path: Path, capsys) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    records = read_runs(out / "runs.jsonl")
    assert [r["status"] for r in records] == ["ok"] * len(load_suite(config).cells())
    assert (out / "summary.md").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace('recipe = "surgical"', 'recipe = "magic"'))
    assert main(["run", "--config", str(bad), "--out", str(out)]) == 2
    assert "unknown recipe 'magic'" in capsys.readouterr().err
