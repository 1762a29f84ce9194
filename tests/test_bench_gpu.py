"""The GPU suite without a GPU: it dry-runs, its sizing is right, and its CUDA code paths (bf16
autocast, channels_last, a whole EfficientNet-Lite fed images, probes on the model's device) run on
the CPU through a Device that asks for them."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.caches import ensure
from benchmarks.catalog import SUITES
from benchmarks.cells import run_cell
from benchmarks.runner import preparations
from benchmarks.sizing import MIN_SEEDS, seeds_that_fit, size_suite, time_one_step
from benchmarks.suites import PROBE_CS, WISE_ALPHAS, Budget, Cell, Suite
from benchmarks.training import Device

CPU_AS_GPU = Device("cpu", "cpu with bf16 autocast", 2, autocast=True, channels_last=True)


def _tiny(experiment_name: str = "g_lp_ft_lite0_full"):
    experiment = SUITES["gpu"].experiment(experiment_name)
    target = dataclasses.replace(experiment.targets[0], shots=2, val_shots=2, test_pool=(0, 3))
    return dataclasses.replace(experiment, targets=(target,), seeds=(0, 1), image_size=32,
                               budget=Budget(steps=2, batch_size=10, eval_every=1, warmup_steps=1))


def test_gpu_suite_dry_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--suite", "gpu", "--dry-run", "--out", str(tmp_path / "gpu")]) == 0
    listing = capsys.readouterr().out
    assert "g_lp_ft_lite2_full" in listing and "g_surgical_lite0_full" in listing and "sized at run time" in listing
    assert not (tmp_path / "gpu").exists()


def test_gpu_suite_without_cuda_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a CUDA device (made so on a machine that has one), `--device cuda` stops before
    writing anything, with exit code 2."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["run", "--suite", "gpu", "--device", "cuda", "--out", str(tmp_path / "gpu")]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not (tmp_path / "gpu").exists()


def test_gpu_suite_experiments_are_native_resolution_whole_networks() -> None:
    sizes = {e.backbone: e.image_size for e in SUITES["gpu"].experiments}
    assert sizes == {"lite0_full": 224, "lite2_full": 260}
    assert SUITES["gpu"].time_budget_s is not None


def test_seeds_that_fit() -> None:
    seeds = {"a": tuple(range(8)), "b": tuple(range(4))}
    # per seed: (0.01 * 100 + 0.02 * 100) * 1.5 = 4.5 s
    assert seeds_that_fit({"a": 0.01, "b": 0.02}, {"a": 100, "b": 100}, seeds, budget_s=14.0) == {
        "a": (0, 1, 2), "b": (0, 1, 2)}
    assert seeds_that_fit({"a": 0.01, "b": 0.02}, {"a": 100, "b": 100}, seeds, budget_s=1000) == seeds
    tight = seeds_that_fit({"a": 1.0, "b": 1.0}, {"a": 100, "b": 100}, seeds, budget_s=1.0)
    assert all(len(s) == MIN_SEEDS for s in tight.values())


def test_timed_step_and_sizing_on_cpu_with_autocast_and_channels_last() -> None:
    experiment = _tiny()
    seconds = time_one_step(experiment, CPU_AS_GPU)
    assert 0 < seconds < 30
    suite = Suite("tiny-gpu", "test", (experiment,), time_budget_s=1e6)
    sized, info = size_suite(suite, CPU_AS_GPU)
    assert sized.experiments[0].seeds == (0, 1) and info["seeds"] == {experiment.name: 2}


@pytest.mark.parametrize("strategy", ["ft", "lp_ft", "linear_probe"])
def test_a_whole_lite0_cell_runs_with_bf16_autocast_and_channels_last(strategy: str, tmp_path: Path) -> None:
    experiment = _tiny()
    cell = Cell(experiment, experiment.targets[0], experiment.strategy(strategy), 0, experiment.strategy(strategy).grid[1])
    for wave in preparations((experiment,)):  # the probes LP-FT and the linear probe read
        for preparation in wave:
            ensure(preparation, tmp_path, {}, CPU_AS_GPU)
    record = run_cell(cell, CPU_AS_GPU, tmp_path, {})
    for field in ("test_accuracy", "ood_accuracy"):
        assert 0 <= record[field] <= 1 and math.isfinite(record[field])
    if strategy == "lp_ft":
        assert set(record["variants"]) == {f"lp_ft+wise_{a}" for a in WISE_ALPHAS}
        assert record["probe_C"] in PROBE_CS and record["probe_train_ce"] > 0


def test_the_surgical_experiment_starts_from_lite0_trained_on_the_clean_source(tmp_path: Path) -> None:
    """Lee et al.'s clean-source stage: the surgical cells fine-tune the ImageNet Lite0 that was first
    trained on clean Animal-MNIST (an ``adapt`` source, one per source seed, gated), with its head kept,
    and measure forgetting of that clean source."""
    full = SUITES["gpu"].experiment("g_surgical_lite0_full")
    assert full.source.kind == "adapt" and full.keep_source_head and full.track_forgetting
    assert len(full.source_seeds) == 2 and full.source.min_accuracy > 0
    source = dataclasses.replace(full.source, steps=2, batch_size=8, train_pool=(300, 302), test_pool=(0, 2))
    experiment = dataclasses.replace(_tiny("g_surgical_lite0_full"), source=source,
                                     budget=Budget(steps=2, batch_size=10, eval_every=1, warmup_steps=1,
                                                   forgetting_every=1))
    waves = preparations((experiment,))
    assert [p.kind for p in waves[0]] == ["source", "source"]
    meta = ensure(waves[0][0], tmp_path, {}, CPU_AS_GPU)
    assert meta["built_now"] and 0 <= meta["source_accuracy"] <= 1
    ensure(waves[0][1], tmp_path, {}, CPU_AS_GPU)
    strategy = experiment.strategy("surgical_first")
    record = run_cell(Cell(experiment, experiment.targets[0], strategy, 0, strategy.grid[1]), CPU_AS_GPU, tmp_path, {})
    assert record["source_model"]["source_seed"] == experiment.source_seeds[0]
    assert math.isfinite(record["retention_precise_bn"]) and len(record["curve"]["retention_precise_bn"]) == 3
