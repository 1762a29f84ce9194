"""The benchmark suite end to end: the smoke suite through the CLI's ``main(argv)`` into a tmp dir.

One module fixture runs it the way an interrupted, partly failing suite runs: first ``--max-cells 1``
(an interruption), then a re-run in which one recipe raises (its cells are recorded as failed, the
rest run), then a clean re-run (only the failed cells are computed). The tests check what each run
left behind.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from benchmarks import sources
from benchmarks.__main__ import main
from benchmarks.backbones import GPU_BACKBONES, GPU_IMAGE_SIZE
from benchmarks.data import SOURCE_TARGET_PAIRS
from benchmarks.report import write_reports
from benchmarks.runner import key_environment, run_suite
from benchmarks.store import read_runs, sha256_file
from benchmarks.suites import SUITES, Suite
from benchmarks.training import resolve_device
from lrgroups import recipes

pytestmark = pytest.mark.slow

FAILING_RECIPE = "linear_probe"
TIMING_FIELDS = {"curve", "seconds_to_95", "train_seconds", "wall_seconds", "peak_memory_mb", "peak_memory_growth_mb",
                 "started_at", "finished_at", "invocation", "source_model"}


def _run(out: Path, *extra: str) -> int:
    return main(["run", "--suite", "smoke", "--out", str(out), *extra])


def _broken_recipe(**kwargs):
    raise RuntimeError("deliberately broken recipe")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("smoke")
    assert _run(out, "--max-cells", "1") == 0
    interrupted = read_runs(out / "runs.jsonl")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(recipes.RECIPES, FAILING_RECIPE, _broken_recipe)
        failing_exit = _run(out, "--no-progress")
    with_failures = read_runs(out / "runs.jsonl")
    summary_with_failures = (out / "summary.md").read_text()
    final_exit = _run(out, "--no-progress")
    return SimpleNamespace(out=out, interrupted=interrupted, with_failures=with_failures, failing_exit=failing_exit,
                           summary_with_failures=summary_with_failures, final_exit=final_exit,
                           final=read_runs(out / "runs.jsonl"), cells=SUITES["smoke"].cells())


def test_interrupted_run_keeps_its_one_cell_and_resuming_does_not_recompute_it(smoke) -> None:
    """--max-cells 1 leaves exactly one finished cell; the re-runs reuse it (same invocation id, same
    start time) and compute every other cell; the last re-run computes only the cells that had failed."""
    assert [record["status"] for record in smoke.interrupted] == ["ok"]
    first = smoke.interrupted[0]
    final = {record["key"]: record for record in smoke.final}
    assert final[first["key"]]["invocation"] == first["invocation"]
    assert final[first["key"]]["started_at"] == first["started_at"]
    assert len(final) == len(smoke.cells) and all(record["status"] == "ok" for record in final.values())
    assert smoke.final_exit == 0
    per_invocation = Counter(record["invocation"] for record in smoke.final)
    failed_before = sum(record["status"] == "failed" for record in smoke.with_failures)
    assert sorted(per_invocation.values()) == sorted([1, len(smoke.cells) - 1 - failed_before, failed_before])


def test_failing_cell_is_recorded_with_its_error_and_the_suite_goes_on(smoke) -> None:
    failed = [record for record in smoke.with_failures if record["status"] == "failed"]
    assert failed and all(record["strategy"] == FAILING_RECIPE for record in failed)
    for record in failed:
        assert record["error"] == "RuntimeError: deliberately broken recipe"
        assert "Traceback" in record["traceback"] and "_broken_recipe" in record["traceback"]
    others = [record for record in smoke.with_failures if record["strategy"] != FAILING_RECIPE]
    assert len(others) == len(smoke.cells) - len(failed) and all(r["status"] == "ok" for r in others)
    assert smoke.failing_exit == 1
    assert "## Failed cells" in smoke.summary_with_failures and "deliberately broken recipe" in smoke.summary_with_failures


def test_every_output_file_is_written(smoke) -> None:
    names = {path.name for path in smoke.out.iterdir()}
    tasks = {cell.task.name for cell in smoke.cells}
    expected = {"runs.jsonl", "summary.csv", "summary.md", "environment.json", "cache"}
    expected |= {f"{kind}_{task}.png" for kind in ("pareto", "curves") for task in tasks}
    assert names == expected  # nothing half-written left behind (no .partial/)
    for png in smoke.out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    cached = Counter(path.suffix for path in (smoke.out / "cache").iterdir())
    pretrained = {(cell.backbone, cell.task.source) for cell in smoke.cells if cell.grid.pretraining is not None}
    assert cached == {".pt": len(pretrained), ".json": len(pretrained)}


def _in_unit_interval(value: float) -> bool:
    return math.isfinite(value) and -1e-9 <= value <= 1 + 1e-9


def test_every_metric_is_finite_and_in_range(smoke) -> None:
    for record in smoke.final:
        steps = record["config"]["budget"]["steps"]
        for field in ("final_target_accuracy", "final_val_accuracy", "best_val_accuracy", "auc",
                      "source_accuracy_before", "source_accuracy_after"):
            assert _in_unit_interval(record[field]), (field, record[field])
        assert all(_in_unit_interval(value) for value in record["curve"]["val_accuracy"])
        assert record["curve"]["step"][0] == 0 and record["curve"]["step"] == sorted(set(record["curve"]["step"]))
        for field in ("retention", "retention_source_bn_stats"):
            assert record[field] >= 0 and math.isfinite(record[field])
        if record["backbone"] == "vit_cpu":  # no BatchNorm: nothing to put back
            assert record["retention_source_bn_stats"] == record["retention"]
        assert math.isclose(record["backward_transfer"], record["source_accuracy_after"] - record["source_accuracy_before"])
        assert 0 <= record["steps_to_95"] <= steps and 0 <= record["seconds_to_95"] <= record["train_seconds"]
        assert record["cka"] and all(_in_unit_interval(value) for value in record["cka"].values())
        assert record["weight_distance"]
        assert all(math.isfinite(value) and value >= 0 for value in record["weight_distance"].values())
        assert record["wall_seconds"] > 0 and record["peak_memory_mb"] > 0 and record["memory_measure"]
        assert record["source_ok"] is True and isinstance(record["stopped_early"], bool)
        assert record["steps_done"] <= steps and record["environment"]["cpu_threads"] == 2


def test_strategies_leave_their_marks(smoke) -> None:
    """A linear probe moves no backbone weight and keeps features and source accuracy; full
    fine-tuning moves every stage."""
    for record in smoke.final:
        if record["strategy"] == "linear_probe":
            assert all(value == 0 for value in record["weight_distance"].values())
            assert all(value == pytest.approx(1) for value in record["cka"].values())
            assert record["retention"] == pytest.approx(1)
        if record["strategy"] == "full":
            assert all(value > 0 for value in record["weight_distance"].values())


def test_summary_environment_and_report_command(smoke) -> None:
    summary = pd.read_csv(smoke.out / "summary.csv")
    assert len(summary) == len({(c.task.name, c.backbone, c.strategy.name) for c in smoke.cells})
    assert (summary["n"] == 1).all() and summary["final_target_accuracy"].between(0, 1).all()
    markdown = (smoke.out / "summary.md").read_text()
    assert f"python -m benchmarks run --suite smoke --out {smoke.out}" in markdown
    assert ("| backbone | strategy | target acc | retention | retention, source BN stats | BWT | AUC | steps to 95% | n |"
            in markdown)
    assert "**" in markdown and "Failed cells" not in markdown
    environment = json.loads((smoke.out / "environment.json").read_text())
    assert environment["cpu_threads"] == 2 and environment["device"] == "cpu"
    assert {"torch", "timm", "lrgroups"} <= set(environment["versions"])
    assert environment["command"] == f"python -m benchmarks run --suite smoke --out {smoke.out} --no-progress"
    assert {"date", "git", "device_name"} <= set(environment)
    (smoke.out / "summary.md").unlink()
    (smoke.out / "summary.csv").unlink()
    assert main(["report", "--suite", "smoke", "--out", str(smoke.out)]) == 0
    assert (smoke.out / "summary.md").read_text() == markdown
    assert pd.read_csv(smoke.out / "summary.csv").equals(summary)


def test_dry_run_lists_cells_and_their_status(smoke, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(smoke.out, "--dry-run") == 0
    listing = capsys.readouterr().out
    for cell in smoke.cells:
        assert f"{cell.key(key_environment(resolve_device('cpu')))}  done" in listing
    assert _run(tmp_path / "fresh", "--dry-run") == 0
    listing = capsys.readouterr().out
    assert f"{len(smoke.cells)} pending" in listing and not (tmp_path / "fresh").exists()


def test_same_cells_give_the_same_numbers(smoke, tmp_path: Path) -> None:
    """Recomputing cells in a fresh output directory reproduces every number but the timings."""
    assert _run(tmp_path, "--cache", str(smoke.out / "cache"), "--max-cells", "2", "--no-progress") == 0
    final = {record["key"]: record for record in smoke.final}
    for record in read_runs(tmp_path / "runs.jsonl"):
        previous = final[record["key"]]
        assert record["curve"]["val_accuracy"] == previous["curve"]["val_accuracy"]
        assert {k: v for k, v in record.items() if k not in TIMING_FIELDS} == {
            k: v for k, v in previous.items() if k not in TIMING_FIELDS}


def test_a_corrupt_cached_source_backbone_is_rebuilt(smoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(smoke.out / "cache", cache)
    weights = sorted(cache.glob("convnext_cpu--*.pt"))[0]
    weights.write_bytes(weights.read_bytes()[:-8] + b"garbage!")
    monkeypatch.setattr(sources, "_SOURCE_STATES", {})
    assert _run(tmp_path / "out", "--cache", str(cache), "--max-cells", "1", "--no-progress") == 0
    record = read_runs(tmp_path / "out" / "runs.jsonl")[0]
    assert record["source_model"]["built_now"] is True
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert meta["sha256"] == sha256_file(weights) == record["source_model"]["sha256"]
    assert meta["recipe"]["pretraining"]["steps"] == SUITES["smoke"].grids[0].pretraining.steps


def test_a_source_below_its_required_accuracy_flags_the_cell(smoke, tmp_path: Path) -> None:
    grid = SUITES["smoke"].grids[0]
    strict = dataclasses.replace(grid, backbones=grid.backbones[:1], strategies=grid.strategies[:1],
                                 pretraining=dataclasses.replace(grid.pretraining, min_accuracy=1.01))
    outcome = run_suite(Suite("strict", "test", (strict,)), tmp_path, tmp_path / "cache", resolve_device("cpu"),
                        progress=False, report=write_reports)
    assert outcome.computed == 1 and outcome.failed == 0
    record = read_runs(tmp_path / "runs.jsonl")[0]
    assert record["source_ok"] is False and record["source_model"]["min_accuracy"] == 1.01
    assert "⚠" in (tmp_path / "summary.md").read_text()


def test_perf_is_forwarded_to_the_perf_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.perf.run as perf_run

    calls = []
    monkeypatch.setattr(perf_run, "main", lambda argv=None: calls.append(argv) or 3)
    assert main(["perf", "--quick", "-k", "step"]) == 3
    assert calls == [["--quick", "-k", "step"]]


def test_suites_are_well_formed() -> None:
    """Unique cells; quick covers four timm families; full covers every pair; gpu is real-size at 224 px."""
    environment = key_environment(resolve_device("cpu"))
    for suite in SUITES.values():
        keys = [cell.key(environment) for cell in suite.cells()]
        assert len(keys) == len(set(keys)), suite.name
        for grid in suite.grids:
            for strategy in grid.strategies:
                assert strategy.build_recipe().name == strategy.name
    quick_models = {cell.backbone for cell in SUITES["quick"].cells()}
    assert {"resnet_cpu", "convnext_cpu", "vit_cpu", "efficientnet_lite0"} <= quick_models
    assert {task.name for task in SUITES["full"].grids[0].tasks} == set(SOURCE_TARGET_PAIRS)
    assert set(SUITES["smoke"].grids[0].seeds) == {0}
    gpu = SUITES["gpu"].grids[0]
    assert set(gpu.backbones) == set(GPU_BACKBONES) and gpu.budget.image_size == GPU_IMAGE_SIZE


def test_gpu_suite_dry_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--suite", "gpu", "--dry-run", "--out", str(tmp_path / "gpu")]) == 0
    listing = capsys.readouterr().out
    assert "resnet50" in listing and "vit_small_patch16_224" in listing and "efficientnet_lite0" in listing
