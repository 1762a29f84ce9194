"""The benchmark command line: ``run`` records its suite in the run folder, ``report`` and
``replicate`` read it back (each folder its own), and ``run`` never defaults into ``results/``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmarks.replicate
import benchmarks.report
import benchmarks.runner
from benchmarks.__main__ import main
from benchmarks.catalog import SUITES
from benchmarks.config import suite_from_toml
from benchmarks.store import SuiteRecord, read_suite_record, write_suite_record

TINY = """
name = "tiny"
[[experiments]]
name = "e1"
backbone = "resnet_tiny"
seeds = [0]
lr_factors = [1.0]
source = {kind = "pretrain", dataset = "animal", classes = [0, 1], train_pool = [200, 240], test_pool = [0, 20], steps = 5}
budget = {steps = 2, batch_size = 4, eval_every = 1, warmup_steps = 1}

[[experiments.targets]]
name = "t"
dataset = "animal"
classes = [0, 1]
shots = 2
val_shots = 2
train_pool = [800, 1000]
test_pool = [0, 10]

[[experiments.strategies]]
kind = "pixel"
"""


@pytest.fixture
def reports(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, object]]:
    """The (folder, suite) of every report written, instead of writing them."""
    calls: list[tuple[Path, object]] = []
    monkeypatch.setattr(benchmarks.report, "write_reports", lambda out, suite: calls.append((out, suite)))
    return calls


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, Path]]:
    """The (suite, folder) of every suite run, instead of running it."""
    calls: list[tuple[object, Path]] = []

    def run_suite(suite, out: Path, cache_dir: Path, **kwargs) -> benchmarks.runner.Outcome:
        calls.append((suite, out))
        return benchmarks.runner.Outcome()

    monkeypatch.setattr(benchmarks.runner, "run_suite", run_suite)
    return calls


@pytest.fixture
def replications(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The (reference suite, new suite) names of every replication, with a stub report."""
    calls: list[tuple[str, str]] = []

    def replicate(reference_dir: Path, new_dir: Path, reference_suite, new_suite) -> bool:
        calls.append((reference_suite.name, new_suite.name))
        (new_dir / "replication.md").write_text("# Replication\n\nVerdicts equal: 1 of 1.\n")
        return True

    monkeypatch.setattr(benchmarks.replicate, "write_replication", replicate)
    return calls


def test_run_records_its_config_suite_and_report_rebuilds_that_suite(tmp_path: Path, runs, reports) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    assert runs == [(suite_from_toml(TINY), out)]
    assert read_suite_record(out) == SuiteRecord("tiny", TINY, str(config.resolve()))
    assert json.loads((out / "suite.json").read_text()) == {"suite": "tiny", "config": str(config.resolve())}
    config.write_text(TINY.replace('name = "tiny"', 'name = "edited"'))  # the folder keeps the config it ran
    assert main(["report", "--out", str(out)]) == 0
    assert reports[-1] == (out, suite_from_toml(TINY))


def test_a_builtin_run_drops_an_old_config_copy(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    write_suite_record(tmp_path / "out", "tiny", config)
    write_suite_record(tmp_path / "out", "smoke")
    assert read_suite_record(tmp_path / "out") == SuiteRecord("smoke")
    assert not (tmp_path / "out" / "suite.toml").exists()


def test_replicate_rebuilds_each_folder_with_its_own_suite(tmp_path: Path, replications, capsys) -> None:
    reference, new = tmp_path / "reference", tmp_path / "new"
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    write_suite_record(reference, "smoke")
    write_suite_record(new, "tiny", config)
    assert main(["replicate", "--reference", str(reference), "--new", str(new)]) == 0
    assert "Verdicts equal: 1 of 1." in capsys.readouterr().out
    assert main(["replicate", "--suite", "smoke", "--reference", str(reference), "--new", str(new)]) == 0
    assert replications == [("smoke", "tiny"), ("smoke", "smoke")]


def test_a_folder_without_a_record_is_an_error_and_an_old_one_names_its_suite(tmp_path: Path, reports,
                                                                             capsys) -> None:
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert "records no suite" in capsys.readouterr().err and not reports
    (tmp_path / "environment.json").write_text(json.dumps({"suite": "smoke"}))  # a run from before suite.json
    assert main(["report", "--out", str(tmp_path)]) == 0
    assert reports == [(tmp_path, SUITES["smoke"])]
    (tmp_path / "environment.json").write_text(json.dumps({"suite": "tiny"}))
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert "'tiny', which is not built in" in capsys.readouterr().err


def test_run_without_out_writes_into_runs_not_results(tmp_path: Path, monkeypatch, runs, reports, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--suite", "smoke", "--dry-run"]) == 0
    assert f"-> {Path('runs') / 'smoke'}" in capsys.readouterr().out
    assert main(["run", "--suite", "smoke", "--no-progress"]) == 0
    assert runs == [(SUITES["smoke"], Path("runs") / "smoke")]
    assert read_suite_record(tmp_path / "runs" / "smoke") == SuiteRecord("smoke")
    assert not (tmp_path / "results").exists()
    assert main(["report", "--suite", "smoke"]) == 0
    assert reports[-1] == (Path("runs") / "smoke", SUITES["smoke"])


def test_running_a_suite_into_a_folder_of_another_suite_is_refused(tmp_path: Path, runs, capsys) -> None:
    """A run folder records its suite; `run` of another suite into it stops before writing anything
    (it used to overwrite the record and mix the two suites' runs.jsonl), while the same suite resumes."""
    from benchmarks.store import read_suite_record, write_suite_record

    write_suite_record(tmp_path, "quick")
    assert main(["run", "--suite", "smoke", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "holds a run of suite 'quick'" in capsys.readouterr().err
    assert read_suite_record(tmp_path).name == "quick" and runs == []
    assert main(["run", "--suite", "quick", "--out", str(tmp_path), "--no-progress", "--max-cells", "1"]) == 0
    assert [suite.name for suite, _ in runs] == ["quick"]
