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
