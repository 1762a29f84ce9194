"""A suite as a TOML config file (``benchmarks.config``): same cells as the built-in suite, clear
errors, and a config suite end to end through the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.catalog import SUITES
from benchmarks.cells import key_environment
from benchmarks.config import REFERENCE, ConfigError, load_suite, reference, suite_from_toml
from benchmarks.report import NO_HYPOTHESES
from benchmarks.store import read_runs
from benchmarks.suites import Precondition
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

HYPOTHESIS = """
[[hypotheses]]
name = "h"
mirrors = "a finding"
experiment = "e1"
target = "perm"
metric = "test_accuracy"
better = "head"
worse = "pixel"
min_effect = 0.0
published = "a number"

[[hypotheses.preconditions]]
better = "head"
worse = "pixel"
metric = "val_accuracy"
reason = "why"
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
    (('bn = "train"', 'bn = "freeze"'), "experiments[0] (e1).bn: unknown mode 'freeze'; known: ['frozen', 'train']"),
])
def test_config_errors_name_what_is_wrong(change, message) -> None:
    text = TINY.replace(*change)
    assert text != TINY
    with pytest.raises(ConfigError, match=re.escape(message)):
        suite_from_toml(text)


@pytest.mark.parametrize("change, message", [
    (("classes = [0, 1, 2, 3, 4]\nshots", "classes = [0, 1, 2, 3, 12]\nshots"),
     "experiments[0] (e1).targets[0].classes: [0, 1, 2, 3, 12] must be distinct classes of the dataset: 0-9 "
     "(0=bear, 1=bird,"),
    (("classes = [0, 1, 2, 3, 4], train_pool", "classes = [0, 0], train_pool"),
     "experiments[0] (e1).source.classes: [0, 0] must be distinct classes"),
    (("label_map = [1, 2, 3, 4, 0]", "label_map = [1, 2, 3, 4]"),
     "targets[0].label_map: [1, 2, 3, 4] must have one entry per class (5), a permutation of 0-4"),
    (("label_map = [1, 2, 3, 4, 0]", "label_map = [1, 1, 3, 4, 0]"), "targets[0].label_map: [1, 1, 3, 4, 0] must"),
    (("shots = 4\nval_shots = 4", "shots = 150\nval_shots = 60"),
     "targets[0].train_pool: [800, 1000] holds 200 images of class 0 (bear), fewer than shots + val_shots = 210"),
    (("test_pool = [0, 20]\nlabel_map", "test_pool = [20, 20]\nlabel_map"),
     "targets[0].test_pool: [20, 20] holds no image of class 0 (bear)"),
    (("test_pool = [0, 20], steps", "test_pool = [1000, 1100], steps"),
     "experiments[0] (e1).source.test_pool: [1000, 1100] holds no image of classes [0, 1, 2, 3, 4]"),
    (("label_map = [1, 2, 3, 4, 0]", 'label_map = [1, 2, 3, 4, 0]\nshift = "fog"'),
     "targets[0].shift: unknown corruption 'fog'; known: ['invert',"),
    (('metric = "test_accuracy"', 'metric = "accuracy"'),
     "hypotheses[0] (h).metric: unknown metric 'accuracy'; known: ['test_accuracy',"),
    (('metric = "val_accuracy"', 'metric = "val_acc"'), "hypotheses[0] (h).preconditions[0].metric: unknown metric"),
    (('better = "head"\nworse = "pixel"\nmin', 'better = "heads"\nworse = "pixel"\nmin'),
     "hypotheses[0] (h).better: unknown strategy 'heads'; known: ['head', 'pixel']"),
    (('target = "perm"', 'target = "perms"'), "hypotheses[0] (h).target: experiment 'e1' has no target 'perms'"),
    (('experiment = "e1"', 'experiment = "e2"'),
     "hypotheses[0] (h).experiment: unknown experiment 'e2'; known: ['e1']"),
])
def test_classes_shots_and_hypotheses_are_checked_when_the_config_loads(change, message, tmp_path: Path,
                                                                        capsys) -> None:
    text = (TINY + HYPOTHESIS).replace(*change)
    assert text != TINY + HYPOTHESIS
    with pytest.raises(ConfigError, match=re.escape(message)):
        suite_from_toml(text)
    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert main(["run", "--config", str(config), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_hypotheses_and_their_preconditions_load() -> None:
    hypothesis = suite_from_toml(TINY + HYPOTHESIS).hypotheses[0]
    assert (hypothesis.metric, hypothesis.preconditions) == (
        "test_accuracy", (Precondition("head", "pixel", "val_accuracy", "why"),))


def test_the_committed_key_reference_is_the_generated_one(capsys) -> None:
    """benchmarks/configs/README.md is what `python -m benchmarks config-reference --write` writes."""
    assert REFERENCE.read_text() == reference()
    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out == reference()
    for table, key in (("[[experiments.targets]]", "label_map"), ("[[hypotheses]]", "metric"),
                       ("[[experiments.strategies]]", "recipe"), ("experiments.source", "train_pool")):
        assert f"| `{table}` | `{key}` |" in reference()


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
    assert {r["status"] for r in records} == {"ok"}
    assert sum(r["phase"] == "grid" for r in records) == len(load_suite(config).cells())  # then the guards' cells
    summary = (out / "summary.md").read_text()
    assert NO_HYPOTHESES in summary and "No exploratory comparisons declared." in summary  # TINY states none
    assert "Minimum effects" not in summary and not re.search(r"\|---\|\n\n", summary)  # no header-only table
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace('recipe = "surgical"', 'recipe = "magic"'))
    assert main(["run", "--config", str(bad), "--out", str(out)]) == 2
    assert "unknown recipe 'magic'" in capsys.readouterr().err
