"""The Ray executor: the smoke suite through a local Ray cluster (2 CPUs) started by the test gives the
serial executor's numbers, cell by cell, in the same store."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from benchmarks.catalog import SUITES
from benchmarks.runner import run_suite
from benchmarks.store import read_runs

pytestmark = pytest.mark.slow

#: What may differ between two runs of the same cell (timing, process, invocation).
TIMING_FIELDS = {"train_seconds", "wall_seconds", "started_at", "finished_at", "invocation", "worker_pid"}


def test_smoke_suite_on_ray_equals_serial(tmp_path: Path) -> None:
    suite = SUITES["smoke"]
    serial_out, ray_out = tmp_path / "serial", tmp_path / "ray"
    serial = run_suite(suite, serial_out, tmp_path / "cache", workers=1, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    try:
        on_ray = run_suite(suite, ray_out, tmp_path / "cache", executor="ray", progress=False)
    finally:
        ray.shutdown()
    assert serial.computed == on_ray.computed > len(suite.cells()) and serial.failed == on_ray.failed == 0  # + guards
    serial_records = {r["key"]: r for r in read_runs(serial_out / "runs.jsonl")}
    ray_records = {r["key"]: r for r in read_runs(ray_out / "runs.jsonl")}
    assert serial_records.keys() == ray_records.keys()
    for key, record in serial_records.items():
        strip = lambda r: {k: v for k, v in r.items() if k not in TIMING_FIELDS}  # noqa: E731
        assert strip(ray_records[key]) == strip(record), record["key"]
    assert len({r["worker_pid"] for r in ray_records.values()}) >= 2
