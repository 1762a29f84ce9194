"""The performance runner's plumbing (``benchmarks/perf``): its scale is an argument, its report is
rebuilt from the committed raw numbers byte for byte, and its environment comes from the suite's store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.perf import harness
from benchmarks.perf.run import environment, main

ROOT = Path(__file__).resolve().parents[1]


def test_the_rounds_scale_is_set_by_the_runner_and_restored():
    """`--quick` scales every benchmark's rounds through set_scale (no environment variable), never below
    the minimum; the previous scale comes back."""
    assert harness.scaled(120) == 120
    previous = harness.set_scale(0.33)
    try:
        assert previous == 1.0 and harness.scaled(120) == 40 and harness.scaled(6, 3) == 3
    finally:
        harness.set_scale(previous)
    assert harness.scaled(120) == 120
    with pytest.raises(ValueError, match="scale must be > 0"):
        harness.set_scale(0)


def test_report_only_rebuilds_the_committed_perf_md(tmp_path):
    """`python -m benchmarks perf --report-only` turns the committed perf.json and environment.json into
    the committed perf.md, byte for byte (written atomically)."""
    for name in ("perf.json", "environment.json"):
        shutil.copy(ROOT / "results" / "perf" / name, tmp_path / name)
    assert main(["--report-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "perf.md").read_bytes() == (ROOT / "results" / "perf" / "perf.md").read_bytes()
    assert not list(tmp_path.glob(".partial*")) and not (tmp_path / ".partial").exists()


def test_environment_uses_the_suites_records():
    record = environment("python -m benchmarks.perf", 1.0)
    from benchmarks.store import cpu_name, git_commit, versions

    assert record["CPU"].startswith(cpu_name())
    assert record["git commit"].split(" ")[0] == (git_commit(ROOT)["commit"] or "unknown")
    assert record["timm"] == versions(("timm",))["timm"]
    json.dumps(record)


# --- the CUDA mode (python -m benchmarks perf --cuda) and its CPU rehearsal -------------------------------

CUDA_BENCHMARKS = {
    "test_cuda_step_overhead[adamw_fused]", "test_cuda_step_overhead[adamw_foreach]",
    "test_cuda_step_overhead[sgd_momentum]", "test_cuda_group_layout[adamw_fused]",
    "test_cuda_group_layout[adamw_foreach]", "test_cuda_layered_fused_adamw",
}


def _gpu_folder_state() -> list[str]:
    gpu = ROOT / "results" / "perf" / "gpu"
    return sorted(str(p) for p in gpu.rglob("*")) if gpu.exists() else ["absent"]


def test_cuda_mode_refuses_without_a_cuda_device(tmp_path, monkeypatch, capsys):
    """B5: `perf --cuda` on a machine without CUDA exits with 2 before measuring or writing anything; a CPU
    rehearsal aimed into results/perf/gpu is refused the same way."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu"
    assert main(["--cuda", "--out", str(out)]) == 2
    assert not out.exists()
    assert "needs a CUDA device" in capsys.readouterr().err
    before = _gpu_folder_state()
    assert main(["--cuda-rehearsal", "--out", "results/perf/gpu"]) == 2
    assert main(["--cuda-rehearsal", "--out", str(ROOT / "results" / "perf" / "gpu" / "x")]) == 2
    assert "never written into" in capsys.readouterr().err
    assert _gpu_folder_state() == before


def test_cuda_mode_output_folders():
    """--cuda writes into results/perf/gpu by default; a rehearsal into a fresh temporary folder."""
    from benchmarks.perf.run import _output, _parser

    assert _output(_parser().parse_args(["--cuda"])) == ROOT / "results" / "perf" / "gpu"
    rehearsal = _output(_parser().parse_args(["--cuda-rehearsal"]))
    try:
        assert rehearsal.is_dir() and not list(rehearsal.iterdir()) and ROOT not in rehearsal.parents
    finally:
        rehearsal.rmdir()


def test_cuda_rehearsal_writes_a_marked_perf_json(tmp_path, monkeypatch):
    """The CUDA mode's code path on the CPU: every CUDA benchmark recorded, each sample between two
    device synchronisations, the peak-memory field present (None: not on CUDA), the run marked a
    rehearsal in perf.json, environment.json and perf.md."""
    import torch

    calls, threads = [], torch.get_num_threads()
    monkeypatch.setattr(harness, "synchronize", lambda device: calls.append(device.type))
    assert main(["--cuda-rehearsal", "--out", str(tmp_path), "--seconds", "300"]) == 0
    assert torch.get_num_threads() == threads  # the rehearsal's one thread is given back
    results = json.loads((tmp_path / "perf.json").read_text())
    assert {b["name"] for b in results["benchmarks"]} == CUDA_BENCHMARKS
    samples = 0
    for bench in results["benchmarks"]:
        info = bench["extra_info"]
        assert info["device"] == "cpu" and info["rehearsal"] is True and info["peak_memory_bytes"] is None
        assert info["section"] in ("step", "layout", "bandwidth") and info["rounds"] >= 5
        samples += info["rounds"] * len(info["seconds"])
    assert set(calls) == {"cpu"} and len(calls) >= 2 * samples
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["rehearsal"] is True and env["device"] == "cpu" and env["time box"] == "kept"
    md = (tmp_path / "perf.md").read_text()
    assert "A CUDA rehearsal on the CPU" in md and "| not on CUDA |" in md
    from benchmarks.perf.report import cuda_docs_row

    assert "| not run |" in cuda_docs_row(tmp_path / "perf.json")  # a rehearsal never fills the docs row


def test_the_time_box_interrupts_and_keeps_what_finished(tmp_path, monkeypatch):
    """When the alarm of the --seconds budget fires, pytest stops as on Ctrl-C, pytest-benchmark still
    writes the benchmarks that finished, and the runner exits with 124 after writing its reports."""
    import os
    import signal

    from benchmarks.perf import cuda

    class FiresAfterTheFirst(cuda.TimeBox):
        def pytest_runtest_teardown(self, item):
            os.kill(os.getpid(), signal.SIGALRM)

    monkeypatch.setattr(cuda, "TimeBox", FiresAfterTheFirst)
    assert main(["--cuda-rehearsal", "--out", str(tmp_path), "-k", "step_overhead"]) == 124
    names = [b["name"] for b in json.loads((tmp_path / "perf.json").read_text())["benchmarks"]]
    assert names == ["test_cuda_step_overhead[adamw_fused]"]
    assert json.loads((tmp_path / "environment.json").read_text())["time box"].startswith("cut")
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None) and signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_a_budget_too_short_for_anything_still_writes_an_empty_report(tmp_path):
    """Nothing finished inside --seconds (the alarm cuts pytest early): rc 124, an empty perf.json and a
    perf.md whose CUDA row says "not run"."""
    assert main(["--cuda-rehearsal", "--out", str(tmp_path), "--seconds", "1"]) == 124
    assert json.loads((tmp_path / "perf.json").read_text())["benchmarks"] == []
    assert "| not run |" in (tmp_path / "perf.md").read_text()


def test_the_time_box_shares_what_is_left_and_skips_past_its_deadline():
    import time

    from benchmarks.perf.cuda import TimeBox

    box = TimeBox(100.0, time.monotonic())
    box.left = 4
    try:
        box.pytest_runtest_setup(None)
        assert 0.6 * 88 / 4 * 0.99 < harness._SHARE["value"] <= 0.6 * 92 / 4 and box.left == 3
    finally:
        harness.set_time_share(None)
    late = TimeBox(100.0, time.monotonic() - 100)
    with pytest.raises(pytest.skip.Exception, match="time budget is spent"):
        late.pytest_runtest_setup(type("Item", (), {"name": "test_x"})())
    assert late.skipped == ["test_x"]


def _docs_block() -> str:
    text = (ROOT / "docs" / "performance.md").read_text()
    return text.split("<!-- perf-table:start -->\n", 1)[1].split("<!-- perf-table:end -->", 1)[0].strip()


def test_the_docs_cuda_row_comes_from_the_gpu_perf_json(tmp_path):
    """The docs' CUDA row: "not run" without results/perf/gpu/perf.json (as the page says now); the
    measured ratio, the GPU and PASS/MISS from a CUDA run's perf.json."""
    from benchmarks.blocks import perf_table
    from benchmarks.perf.report import with_cuda_row

    table = perf_table(ROOT / "results" / "perf" / "perf.md")
    assert with_cuda_row(table, ROOT / "results" / "perf" / "gpu" / "perf.json") == _docs_block()
    assert with_cuda_row(table, tmp_path / "missing.json") == table
    info = {"section": "bandwidth", "device": "cuda", "model": "vit_base_patch16_224", "goal": 1.10,
            "device_name": "NVIDIA H100 80GB HBM3", "ratio": {"layered_fused": [1.042, 1.01, 1.07]}}
    for ratio, verdict in (([1.042, 1.01, 1.07], "PASS"), ([1.2, 1.15, 1.25], "MISS")):
        (tmp_path / "perf.json").write_text(json.dumps({"benchmarks": [{"extra_info": info | {
            "ratio": {"layered_fused": ratio}}}]}))
        filled = with_cuda_row(table, tmp_path / "perf.json").splitlines()
        assert filled[:-1] == table.splitlines()[:-1]
        assert filled[-1] == (f"| CUDA: layered fused AdamW / single-group fused AdamW, ViT-B | ≤ 1.10 | {ratio[0]:.3f} "
                              f"on NVIDIA H100 80GB HBM3 | {verdict} |")
