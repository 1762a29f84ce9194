"""Running a part of a suite (benchmarks.parts): ``run --experiment/--target/--seeds`` selects
cells, preparations are made only for the cells that run (also under ``--max-cells``), and
``--dry-run`` estimates the time from measured step costs."""

from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks.executors
import benchmarks.runner
from benchmarks.__main__ import main
from benchmarks.catalog import SUITES
from benchmarks.parts import Part, parse_seeds
from benchmarks.runner import preparations, run_suite

SMOKE = SUITES["smoke"]


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """The preparations and cells a run hands to its executor, instead of computing them."""
    seen: dict[str, list] = {"prepared": [], "cells": []}

    def prepare_job(preparation):
        seen["prepared"].append(preparation.label)
        return {"label": preparation.label}

    def cell_job(job):
        index, cell = job
        seen["cells"].append(cell)
        return index, {"status": "failed", "error": "stub", "wall_seconds": 0.0}

    monkeypatch.setattr(benchmarks.executors, "prepare_job", prepare_job)
    monkeypatch.setattr(benchmarks.executors, "cell_job", cell_job)
    monkeypatch.setattr(benchmarks.runner, "weights_record", lambda name: None)
    return seen


def test_parse_seeds_takes_lists_and_ranges() -> None:
    assert parse_seeds("0,1") == (0, 1)
    assert parse_seeds("3-5,0,4") == (3, 4, 5, 0)
    for bad in ("a", "2-1", "0,,1"):
        with pytest.raises(ValueError, match="seed"):
            parse_seeds(bad)


def test_unknown_names_and_seeds_list_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown experiments nope; known: q1_surgical, q3_lp_ft"):
        Part(experiments=("nope",)).check(SMOKE)
    with pytest.raises(ValueError, match="unknown targets animal10 .*known: label_permutation"):
        Part(experiments=("q1_surgical",), targets=("animal10",)).check(SMOKE)
    with pytest.raises(ValueError, match="unknown seeds 7 .*known: 0, 1"):
        Part(seeds=(7,)).check(SMOKE)


def test_preparations_for_cells_are_only_what_those_cells_need() -> None:
    """Only the experiments of the cells, the source models of their seeds, and probes only for
    cells that use one (then every seed's source: the probes are fitted for every seed at once)."""
    q1 = Part(experiments=("q1_surgical",), seeds=(0,)).select(SMOKE.cells())
    waves = preparations(SMOKE.experiments, q1)
    assert [[p.label for p in wave] for wave in waves] == [["source q1_surgical (source seed 0)"]]
    q3_ft = [c for c in SMOKE.cells() if c.experiment.name == "q3_lp_ft" and c.strategy.name == "top_ft"]
    assert [p.kind for wave in preparations(SMOKE.experiments, q3_ft) for p in wave] == ["features", "features"]
    everything = preparations(SMOKE.experiments, SMOKE.cells())
    assert [[p.label for p in w] for w in everything] == [[p.label for p in w] for w in preparations(SMOKE.experiments)]


def test_a_part_runs_only_its_cells_and_prepares_only_for_them(tmp_path: Path, jobs) -> None:
    part = Part(experiments=("q1_surgical",), seeds=(1,))
    outcome = run_suite(SMOKE, tmp_path, tmp_path / "cache", progress=False, guards=False, part=part)
    assert {(c.experiment.name, c.seed) for c in jobs["cells"]} == {("q1_surgical", 1)}
    assert len(jobs["cells"]) == len(part.select(SMOKE.cells())) == outcome.failed
    assert jobs["prepared"] == ["source q1_surgical (source seed 1)"]


def test_max_cells_prepares_only_for_the_cells_it_runs(tmp_path: Path, jobs) -> None:
    """``--max-cells 1`` used to build every experiment's sources, features and probes first."""
    run_suite(SMOKE, tmp_path, tmp_path / "cache", progress=False, guards=False, max_cells=1)
    first = SMOKE.cells()[0]
    assert jobs["cells"] == [first]
    assert jobs["prepared"] == [f"source {first.experiment.name} (source seed {first.seed})"]


def test_run_refuses_an_unknown_experiment_before_writing(tmp_path: Path, capsys) -> None:
    assert main(["run", "--suite", "smoke", "--out", str(tmp_path / "o"), "--experiment", "nope"]) == 2
    assert "unknown experiments nope; known: q1_surgical, q3_lp_ft" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_run_passes_the_part_to_the_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(suite, out, cache_dir, **kwargs):
        calls.append(kwargs["part"])
        return benchmarks.runner.Outcome()

    monkeypatch.setattr(benchmarks.runner, "run_suite", fake)
    assert main(["run", "--suite", "smoke", "--out", str(tmp_path), "--no-progress", "--experiment", "q3_lp_ft",
                 "--target", "animal10", "--seeds", "1"]) == 0
    assert calls == [Part(("q3_lp_ft",), ("animal10",), (1,))]


def test_dry_run_estimates_from_a_timed_step_and_warns_at_hours(tmp_path: Path, monkeypatch, capsys) -> None:
    """``--dry-run`` prints an estimate with its basis; one timed step of 100 s makes it hours."""
    import benchmarks.sizing

    monkeypatch.setattr(benchmarks.sizing, "time_one_step", lambda experiment, device, **kwargs: 0.001)
    assert main(["run", "--suite", "smoke", "--out", str(tmp_path), "--dry-run", "--experiment", "q1_surgical",
                 "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "part: experiments q1_surgical; seeds 0" in out and "q3_lp_ft" not in out.split("hypotheses:")[0]
    assert "estimate: about 0 s" in out and "cells at one timed training step" in out and "WARNING" not in out
    assert "1 source pretrainings" in out
    monkeypatch.setattr(benchmarks.sizing, "time_one_step", lambda experiment, device, **kwargs: 100.0)
    assert main(["run", "--suite", "smoke", "--out", str(tmp_path), "--dry-run", "--experiment", "q1_surgical"]) == 0
    assert "WARNING: this run takes hours" in capsys.readouterr().out


def test_dry_run_prefers_the_measured_time_of_finished_cells(tmp_path: Path, monkeypatch, capsys) -> None:
    """A finished cell's wall time prices the pending cells of its experiment and strategy."""
    import dataclasses
    import json

    import benchmarks.sizing

    monkeypatch.setattr(benchmarks.sizing, "time_one_step", lambda experiment, device, **kwargs: 0.0)  # the other strategies
    cell = next(c for c in SMOKE.cells() if c.strategy.name == "surgical_first")
    record = {"key": "x", "experiment": cell.experiment.name, "target": cell.target.name, "strategy": "surgical_first",
              "seed": cell.seed, "lr": cell.lr, "status": "ok", "wall_seconds": 2000.0,
              "config": {"budget": dataclasses.asdict(cell.experiment.budget)}}
    (tmp_path / "runs.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "cache").mkdir()
    for source_seed in (0, 1):  # cached sources: nothing to time
        from benchmarks.cells import key_environment
        from benchmarks.sources import SourceModel
        from benchmarks.training import resolve_device

        path = SourceModel(cell.experiment, source_seed).path(
            tmp_path / "cache", key_environment(resolve_device("cpu", threads=1)))
        path.write_bytes(b"")
    assert main(["run", "--suite", "smoke", "--out", str(tmp_path), "--dry-run", "--experiment", "q1_surgical",
                 "--target", "label_permutation", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    n = len([c for c in SMOKE.cells() if c.strategy.name == "surgical_first"])
    assert f"{n} cells at the median wall time of finished cells" in out
    assert f"about {n * 2000 / 3600:.1f} h of computing" in out and "WARNING" in out


def test_a_small_timed_batch_scales_to_the_batch_size(monkeypatch) -> None:
    """time_one_step(batch=b) times b images and scales linearly to the experiment's batch size (the
    dry run's cheap estimate): for a step whose cost is proportional to its images, the estimate at 2
    images equals the step timed at the full batch size."""
    import benchmarks.sizing as sizing
    from benchmarks.training import resolve_device

    experiment = SUITES["smoke"].experiments[0]
    clock = {"now": 0.0}
    sizes: list[int] = []

    def step(model, optimizer, images, labels, device):  # 10 ms per image, on a fake clock
        sizes.append(len(images))
        clock["now"] += 0.01 * len(images)

    monkeypatch.setattr(sizing, "train_step", step)
    monkeypatch.setattr(sizing.time, "perf_counter", lambda: clock["now"])
    device = resolve_device("cpu", threads=1)
    full = sizing.time_one_step(experiment, device, repeats=1)
    small = sizing.time_one_step(experiment, device, repeats=1, batch=2)
    assert experiment.budget.batch_size > 2 and sizes[-1] == 2 and sizes[0] == experiment.budget.batch_size
    assert full == pytest.approx(0.01 * experiment.budget.batch_size) and small == pytest.approx(full)
