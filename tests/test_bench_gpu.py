"""The GPU run without a GPU: its entry point (``benchmarks/gpu.sh`` -> ``python -m benchmarks gpu``)
rehearsed on the CPU with bf16 autocast and channels_last through every cell kind and every stage,
importing nothing the lent machine lacks; its plan (``--dry-run --assume-step-ms``) and the refusal
below the power target; the Lee et al. design it runs (own clean source per seed, controls, a pilot
that pre-registers the lrs); and the CUDA-only paths that can be exercised on the CPU."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import cells, gpu, preregistration
from benchmarks.catalog import GPU_FIRST_SEED, GPU_LP_FT, GPU_PILOT_SEEDS, GPU_TUNING, SUITES
from benchmarks.cells import key_environment
from benchmarks.environment import undeclared
from benchmarks.training import REHEARSAL, Device, resolve_device

ROOT = Path(__file__).resolve().parents[1]


# --- The rehearsal: the entry point end to end on the CPU ---------------------------------------------


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``bash benchmarks/gpu.sh`` with REHEARSE=1 (no wheels: this venv has the carried packages),
    recording every module its processes import."""
    tmp = tmp_path_factory.mktemp("gpu-rehearsal")
    imports = tmp / "imports.json"
    env = {**os.environ, "PYTHON": sys.executable, "REHEARSE": "1", "OUT": str(tmp / "out"),
           "WHEELS": str(tmp / "no-wheels"), "SITE": str(tmp / "site"), "RESULTS": str(tmp / "results"),
           "RUNS": str(tmp / "runs"), "LIMIT": "560", "LRGROUPS_IMPORTS_FILE": str(imports), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=600)
    return {"done": done, "log": (tmp / "out" / "log.txt").read_text(), "tmp": tmp, "imports": imports}


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_rehearsal_runs_every_stage_and_exits_0(rehearsal: dict) -> None:
    assert rehearsal["done"].returncode == 0, rehearsal["log"][-3000:]
    log = rehearsal["log"]
    stages = ("environment: ok", "smoke: passed", "pilot:", "pre-registration", "confirmatory: 2 seeds",
              "confirmatory: done", "perf: exit code 0")
    positions = [log.find(stage) for stage in stages]
    assert all(i >= 0 for i in positions) and positions == sorted(positions), dict(zip(stages, positions, strict=True))
    ledger = json.loads((rehearsal["tmp"] / "results" / "gpu-tuning" / "device-time.json").read_text())
    assert len(ledger["calls"]) == 1 and ledger["calls"][0]["seconds"] > 0
    out = sorted(p.name for p in (rehearsal["tmp"] / "out").iterdir())
    assert out == ["gpu-smoke.tgz", "gpu-tuning.tgz", "gpu.tgz", "log.txt", "perf-gpu.tgz"]  # no gpu.json: rehearsal


@pytest.mark.slow
def test_the_smoke_runs_every_cell_kind_with_autocast_and_channels_last(rehearsal: dict) -> None:
    """Fine-tuning (full, surgical first and last), the lr-0 controls, scratch, pixel, the linear probe
    and LP-FT with its WiSE-FT variants, on Lite0 and Lite2, after a clean-source stage, every one ok
    and keyed as a rehearsal (bf16 autocast and channels_last on the CPU), never as a CPU result."""
    smoke = rehearsal["tmp"] / "runs" / "gpu-smoke"
    records = _records(smoke / "gpu_tuning") + _records(smoke / "gpu_lp_ft")
    assert all(r["status"] == "ok" for r in records)
    kinds = {(r["experiment"], r["strategy"]) for r in records}
    assert {s.name for s in GPU_TUNING.experiments[0].strategies} <= {s for _, s in kinds}
    assert {e.name for e in GPU_LP_FT.experiments} <= {e for e, _ in kinds}
    assert {"lp_ft", "linear_probe", "ft"} <= {s for _, s in kinds}
    assert any(r.get("variants") for r in records if r["strategy"] == "lp_ft")  # WiSE-FT
    assert all(r["environment"]["rehearsal"] == "bf16 autocast, channels_last" for r in records)
    environment = json.loads((smoke / "gpu_tuning" / "environment.json").read_text())
    assert environment["autocast"] == "bfloat16" and environment["channels_last"] is True
    assert [p["label"] for p in environment["preparations"]][0].startswith("source g_surgical_lite0")


@pytest.mark.slow
def test_the_rehearsal_imports_only_what_the_lent_machine_has(rehearsal: dict) -> None:
    """Every process of the run (the script's checks, the run, the perf subprocess) imported only the
    standard library, the project, the device image's packages and the carried wheels."""
    modules = json.loads(rehearsal["imports"].read_text())
    assert {"torch", "timm", "sklearn", "benchmarks", "lrgroups", "mlxtend", "pytest_benchmark"} <= set(modules)
    assert undeclared(modules) == {}


@pytest.mark.slow
def test_the_pilot_preregisters_and_the_confirmatory_stage_runs_at_those_lrs(rehearsal: dict) -> None:
    results = rehearsal["tmp"] / "results"
    registration = json.loads((results / "gpu-tuning" / "preregistration.json").read_text())
    assert registration["suite"] == "gpu" and registration["seeds"] == {"g_surgical_lite0": 2}
    lrs = {r["strategy"]: r["lr"] for r in registration["lrs"]}
    confirmatory = [r for r in _records(results / "gpu") if r["phase"] == "grid"]
    assert {r["seed"] for r in confirmatory} == {GPU_FIRST_SEED, GPU_FIRST_SEED + 1}
    assert all(r["lr"] == lrs[r["strategy"]] for r in confirmatory)
    sources = {r["source_model"].get("source_seed") for r in confirmatory if r["strategy"] != "pixel"
               and r["strategy"] != "scratch"}
    assert sources == {GPU_FIRST_SEED, GPU_FIRST_SEED + 1}  # every seed its own clean-source model
    assert (results / "gpu" / "summary.md").exists() and (results / "gpu" / "verdicts.csv").exists()
    assert json.loads((results / "perf" / "gpu" / "environment.json").read_text())["rehearsal"]


@pytest.mark.slow
def test_a_second_call_resumes_and_keeps_the_registration(rehearsal: dict) -> None:
    """The same command again does nothing new: the smoke and every cell are reused, the registration
    (lrs and seeds) is read back, not redone."""
    tmp = rehearsal["tmp"]
    path = tmp / "results" / "gpu-tuning" / "preregistration.json"
    before = path.read_text()
    again = subprocess.run([sys.executable, "-m", "benchmarks", "gpu", "--rehearse", "--skip-perf",
                            "--environment-checked", "--results", str(tmp / "results"), "--runs", str(tmp / "runs")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "smoke: passed in an earlier call" in again.stdout and path.read_text() == before
    environment = json.loads((tmp / "results" / "gpu" / "environment.json").read_text())
    assert environment["computed"] == 0 and environment["skipped"] > 0


@pytest.mark.slow
def test_a_design_the_budget_cannot_pay_for_is_refused(rehearsal: dict) -> None:
    """register() with the gpu rule (at least 8 seeds, refuse) on the rehearsal's measured pilot and a
    budget below what 8 seeds cost raises instead of registering fewer seeds."""
    pilot = gpu.one_lr(gpu.toy(GPU_TUNING))
    folder = rehearsal["tmp"] / "results" / "gpu-tuning"
    with pytest.raises(preregistration.UnaffordableDesign, match="8 seeds per experiment cost"):
        preregistration.register(pilot, folder, preregistration.SIZING_RULES["gpu"], budget=1.0)
    generous = preregistration.register(pilot, folder, preregistration.SIZING_RULES["gpu"], budget=1e6)
    assert generous["seeds"]["g_surgical_lite0"] >= 8


# --- The plan and the refusal below the power target -------------------------------------------------


def test_dry_run_prints_the_seeds_and_minutes(capsys: pytest.CaptureFixture) -> None:
    assert gpu.main(["--dry-run", "--assume-step-ms", "12"]) == 0
    text = capsys.readouterr().out
    assert "confirmatory seeds the device time pays for" in text and "min of the 15 min of device time" in text
    for stage in ("start", "environment", "smoke", "perf", "pilot", "confirmatory"):
        assert f"  {stage}" in text


def test_dry_run_refuses_below_eight_seeds(capsys: pytest.CaptureFixture) -> None:
    assert gpu.main(["--dry-run", "--assume-step-ms", "40"]) == gpu.REFUSED
    assert "REFUSED: fewer than 8 seeds decide nothing" in capsys.readouterr().out
    assert gpu.main(["--dry-run"]) == gpu.REFUSED  # no step time: nothing to plan on


def test_the_plan_counts_everything_and_grows_with_the_step() -> None:
    """Slower steps: more seconds for every stage that trains, fewer seeds that fit; the confirmatory
    stage counts its cells, source models and guards (more than its grid cells' training alone)."""
    fast, slow = gpu.plan(8.0), gpu.plan(16.0)
    assert slow.stages["pilot"] > fast.stages["pilot"] and slow.seeds_that_fit < fast.seeds_that_fit
    suite = gpu.confirmatory_of(GPU_TUNING, seeds=8)
    training = sum(c.experiment.budget.steps * 0.012 for c in suite.cells() if c.strategy.kind != "pixel")
    assert gpu.suite_seconds(suite, 0.012) > gpu.suite_seconds(suite, 0.012, guards=False) > training
    with pytest.raises(ValueError, match="positive"):
        gpu.plan(0)


# --- The design --------------------------------------------------------------------------------------


def test_the_pilot_is_lee_et_al_with_controls_and_own_clean_sources() -> None:
    experiment = GPU_TUNING.experiments[0]
    assert experiment.backbone == "lite0_full" and experiment.image_size == 224
    assert experiment.source.kind == "adapt" and experiment.keep_source_head and experiment.bn == "train"
    assert experiment.seeds == GPU_PILOT_SEEDS and experiment.independent_sources
    assert {"surgical_first", "surgical_last", "full", "bn_only", "no_adaptation", "scratch", "pixel"} == {
        s.name for s in experiment.strategies}
    assert {s.name: s.fixed_lr for s in experiment.strategies if s.fixed_lr is not None} == {
        "bn_only": 0.0, "no_adaptation": 0.0}
    assert {h.name for h in GPU_TUNING.hypotheses} == {"G1a", "G1e", "G1f"}
    assert all(h.name.startswith("X") or h.exploratory for h in GPU_LP_FT.hypotheses)


def test_the_confirmatory_suite_exists_only_once_a_pilot_registered_it() -> None:
    assert ("gpu" in SUITES) == (ROOT / "benchmarks" / "preregistration" / "gpu.json").exists()
    suite = gpu.confirmatory_of(GPU_TUNING, seeds=8)
    assert suite.experiments[0].seeds == tuple(range(GPU_FIRST_SEED, GPU_FIRST_SEED + 8))
    assert suite.experiments[0].independent_sources


# --- CUDA-only paths on the CPU ----------------------------------------------------------------------


def test_a_rehearsal_device_asks_for_autocast_and_channels_last_and_is_keyed_apart() -> None:
    device = resolve_device(REHEARSAL, threads=1)
    assert device.type == "cpu" and device.autocast and device.channels_last
    assert key_environment(device)["rehearsal"] and "rehearsal" not in key_environment(resolve_device("cpu", 1))


@dataclasses.dataclass(frozen=True)
class _CudaOnCpu(Device):
    """A Device that says ``cuda`` (the input cache's branch) but puts tensors on the CPU."""

    @property
    def torch(self) -> torch.device:
        return torch.device("cpu")


def test_inputs_are_made_once_per_seed_and_target_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA a seed's cells share their model inputs (made once, kept on the device, least recently
    used dropped beyond DEVICE_INPUTS_KEPT); elsewhere every cell makes its own."""
    made = []
    monkeypatch.setattr(cells, "model_inputs", lambda *a, **k: made.append(k["split_name"]) or torch.zeros(1))
    monkeypatch.setattr(cells, "_DEVICE_INPUTS", type(cells._DEVICE_INPUTS)())
    suite = gpu.toy(GPU_TUNING)
    experiment = suite.experiments[0]
    data = type("Data", (), {"train": None, "val": None, "test": None, "ood": {}})()

    def cell(seed: int) -> cells.Cell:
        return cells.Cell(experiment, experiment.targets[0], experiment.strategies[0], seed, 1e-3)

    cuda = _CudaOnCpu("cuda", "test", None, autocast=True, channels_last=True)
    first = cells._inputs(cell(0), data, True, Path("."), {}, cuda)
    assert cells._inputs(cell(0), data, True, Path("."), {}, cuda) is first and len(made) == 3
    for seed in range(1, cells.DEVICE_INPUTS_KEPT + 1):
        cells._inputs(cell(seed), data, True, Path("."), {}, cuda)
    assert cells._inputs(cell(0), data, True, Path("."), {}, cuda) is not first  # dropped, made again
    cpu = resolve_device("cpu", 1)
    assert cells._inputs(cell(0), data, True, Path("."), {}, cpu) is not cells._inputs(cell(0), data, True,
                                                                                       Path("."), {}, cpu)


def test_run_dry_run_with_an_assumed_step_prints_the_gpu_plan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``run --suite gpu_tuning --dry-run --device cuda --assume-step-ms X`` (no CUDA needed): the cells,
    the estimate at the assumed step, the GPU run's plan; exit 2 when fewer than 8 seeds fit."""
    from benchmarks.__main__ import main

    argv = ["run", "--suite", "gpu_tuning", "--dry-run", "--device", "cuda", "--out", str(tmp_path / "g")]
    assert main([*argv, "--assume-step-ms", "12"]) == 0
    text = capsys.readouterr().out
    assert "a step assumed at 12 ms" in text and "confirmatory seeds the device time pays for" in text
    assert main([*argv, "--assume-step-ms", "40"]) == gpu.REFUSED and not (tmp_path / "g").exists()


def test_the_gpu_page_states_the_numbers_the_code_uses() -> None:
    """docs/benchmarks/gpu.md: its plan table is current, and its numbers are the code's."""
    from benchmarks.blocks import blocks, gpu_plan_table
    from benchmarks.catalog import _ANIMAL_CLEAN

    page = (ROOT / "docs" / "benchmarks" / "gpu.md").read_text()
    assert dict(blocks(page))["gpu-plan"] == gpu_plan_table()
    assert f"seeds {GPU_PILOT_SEEDS[0]} and {GPU_PILOT_SEEDS[1]}" in page and f"seeds from {GPU_FIRST_SEED}" in page
    assert f"at least {gpu.MIN_CONFIRMATORY_SEEDS} seeds" in page and f"{gpu.FIXED_CELL_SECONDS:g} s per cell" in page
    assert f"gated at {_ANIMAL_CLEAN.min_accuracy:g} source accuracy" in page
    assert (f"{gpu.INCOMPLETE} stopped at the time box" in page and f"{gpu.ENVIRONMENT_FAILED} environment" in page
            and f"{gpu.SMOKE_FAILED} smoke failed" in page and f"{gpu.REFUSED}\nrefused" in page
            and f"{gpu.CELLS_FAILED} cells failed" in page)
    assert "No GPU run is committed yet" in page and not (ROOT / "results" / "gpu").exists()


# --- A config suite's time budget (benchmarks.sizing) ----------------------------------------------------


def test_seeds_that_fit() -> None:
    from benchmarks.sizing import MIN_SEEDS, seeds_that_fit

    seeds = {"a": tuple(range(8)), "b": tuple(range(4))}
    # per seed: (0.01 * 100 + 0.02 * 100) * 1.5 = 4.5 s
    assert seeds_that_fit({"a": 0.01, "b": 0.02}, {"a": 100, "b": 100}, seeds, budget_s=14.0) == {
        "a": (0, 1, 2), "b": (0, 1, 2)}
    assert seeds_that_fit({"a": 0.01, "b": 0.02}, {"a": 100, "b": 100}, seeds, budget_s=1000) == seeds
    tight = seeds_that_fit({"a": 1.0, "b": 1.0}, {"a": 100, "b": 100}, seeds, budget_s=1.0)
    assert all(len(s) == MIN_SEEDS for s in tight.values())


def test_a_sized_run_keeps_its_seeds_when_it_resumes(tmp_path: Path) -> None:
    """The first call times a step (with autocast and channels_last) and writes the sized seeds; a
    resumed call reads them back instead of sizing again (whatever a new timed step would say)."""
    from benchmarks.runner import _sized

    toy = gpu.toy(GPU_TUNING)
    suite = dataclasses.replace(toy, experiments=(toy.experiments[0].with_seeds(tuple(range(6))),),
                                time_budget_s=1e-9)  # nothing fits: the floor of 2 seeds
    device = resolve_device(REHEARSAL, threads=1)
    sized, info = _sized(suite, device, tmp_path / "sizing.json")
    assert sized.experiments[0].seeds == (0, 1) and info["step_seconds"]["g_surgical_lite0"] > 0
    roomy = dataclasses.replace(suite, time_budget_s=1e9)  # a new sizing would take all 6
    resumed, again = _sized(roomy, device, tmp_path / "sizing.json")
    assert resumed.experiments[0].seeds == (0, 1) and again["resumed"]
    assert _sized(roomy, device, tmp_path / "fresh.json")[0].experiments[0].seeds == tuple(range(6))


# --- The time box and the exit codes -----------------------------------------------------------------


def test_a_run_past_its_deadline_starts_nothing_and_says_it_was_cut(tmp_path: Path) -> None:
    """No preparation and no cell after the deadline; every planned cell counts as not done, and the
    outcome says the deadline cut it (the GPU run then exits INCOMPLETE, not 0)."""
    import time

    from benchmarks.catalog import SMOKE
    from benchmarks.runner import run_suite

    outcome = run_suite(SMOKE, tmp_path, tmp_path / "cache", progress=False, deadline=time.monotonic() - 1)
    assert outcome.cut and outcome.computed == 0 and outcome.remaining == len(SMOKE.cells())
    assert not (tmp_path / "cache").exists()  # no source model trained
    assert gpu._stage_code(outcome, "pilot") == gpu.INCOMPLETE


def test_failed_cells_stop_the_run_instead_of_asking_for_another_call() -> None:
    from benchmarks.runner import Outcome

    assert gpu._stage_code(Outcome(computed=3, failed=1, remaining=1), "pilot") == gpu.CELLS_FAILED
    assert gpu._stage_code(Outcome(computed=4), "pilot") == 0


def test_the_confirmatory_budget_is_the_device_time_the_calls_left(tmp_path: Path) -> None:
    """Device time less the machine's start, every call so far with its overhead, the pilot's budget
    check (the confirmatory stage runs the same one) and the perf stage still to come."""
    import time

    folder = tmp_path / "gpu-tuning"
    folder.mkdir()
    (folder / "device-time.json").write_text(json.dumps({"calls": [{"started": -1.0, "seconds": 200.0}]}))
    (folder / "environment.json").write_text(json.dumps({"phases": [{"phase": "grid", "seconds": 150.0},
                                                                    {"phase": "budget x2", "seconds": 20.0}]}))
    call = gpu._Call(tmp_path, tmp_path, REHEARSAL, 1, time.monotonic() + 100, True)
    budget = gpu.confirmatory_budget(call)
    used = gpu.START_SECONDS + 2 * gpu.CALL_OVERHEAD_SECONDS + 200.0  # this call (about 0 s) and the earlier one
    assert budget == pytest.approx(gpu.DEVICE_SECONDS - used - 20.0 - gpu.PERF_SECONDS - gpu.CALL_OVERHEAD_SECONDS,
                                   abs=1.0)
    (tmp_path / "perf" / "gpu").mkdir(parents=True)
    (tmp_path / "perf" / "gpu" / "environment.json").write_text("{}")
    assert gpu.confirmatory_budget(call) == pytest.approx(budget + gpu.PERF_SECONDS, abs=1.0)


def test_a_seed_is_one_source_model_even_across_machines(tmp_path: Path) -> None:
    """Records of a seed whose cells started from two clean-source models (a cold resume retrained it)
    keep the newest source's; the older ones are dropped (they rerun), other seeds are untouched."""
    from benchmarks.store import write_runs

    def record(seed: int, strategy: str, sha: str, finished: str) -> dict:
        return {"key": f"{seed}{strategy}", "seed": seed, "strategy": strategy, "status": "ok",
                "finished_at": finished, "source_model": {"sha256": sha}}

    write_runs(tmp_path / "runs.jsonl", [record(100, "full", "a", "2026-12-06T10:00:00"),
                                         record(100, "surgical_first", "b", "2026-12-06T11:00:00"),
                                         record(101, "full", "c", "2026-12-06T10:00:00"),
                                         {"key": "pixel", "seed": 100, "strategy": "pixel", "status": "ok"}])
    assert gpu.drop_mixed_sources(tmp_path) == [100]
    kept = {r["key"] for r in _records(tmp_path)}
    assert kept == {"100surgical_first", "101full", "pixel"}
    assert gpu.drop_mixed_sources(tmp_path) == []
