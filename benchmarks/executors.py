"""Executors: where a suite's jobs (preparations and cells) run, behind one interface,
``imap, close = executor(...)``: ``imap(fn, items)`` yields ``fn(item)`` as items finish, ``close()``
releases the workers.

- :func:`local_executor`: in this process for one worker, else a spawned process pool; every worker is set up
  once (torch and BLAS thread counts, deterministic algorithms, the device) by :func:`init_worker`.
- :func:`ray_executor`: one Ray task per item with ``threads`` CPUs (a GPU on CUDA), on a local cluster or an
  existing one; each Ray worker process is set up as a pool worker is.

Numbers do not depend on the executor: every cell seeds itself and the thread count is part of its key.
"""


from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .caches import Preparation, ensure
from .cells import run_cell
from .suites import Cell
from .training import resolve_device

_WORKER: dict[str, Any] = {}


def init_worker(threads: int, cache_dir: Path, environment: Mapping[str, Any], device_choice: str = "cpu") -> None:
    """Set this worker process up once: BLAS and torch threads, deterministic algorithms, the device,
    the cache folder and the environment every cell's key records."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # cuBLAS is deterministic only with a fixed workspace, set before its first handle (read at creation)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)  # scikit-learn's BLAS too: no oversubscribed cores, numbers fixed by the thread count
    device = resolve_device(device_choice, threads=threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    _WORKER.update(device=device, cache_dir=cache_dir, environment=dict(environment))


def prepare_job(preparation: Preparation) -> dict[str, Any]:
    """Build (or verify) one preparation in this worker: a source model, a feature cache, a probe."""
    return ensure(preparation, _WORKER["cache_dir"], _WORKER["environment"], _WORKER["device"])


def cell_job(job: tuple[int, Cell]) -> tuple[int, dict[str, Any]]:
    """Run cell ``job = (index, cell)`` in this worker: ``(index, record)``, a failure recorded, not raised."""
    index, cell = job
    started = time.perf_counter()
    record: dict[str, Any] = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "worker_pid": os.getpid()}
    try:
        torch.manual_seed(cell.seed)
        record.update(run_cell(cell, _WORKER["device"], _WORKER["cache_dir"], _WORKER["environment"]),
                      status="ok", error=None)
    except Exception as error:
        record.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    record["wall_seconds"] = time.perf_counter() - started
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return index, record


def local_executor(workers: int, threads: int, cache_dir: Path, environment: Mapping[str, Any], device_choice: str):
    """(imap_unordered-like function, closer): a process pool of ``workers``, or in-process for 1."""
    if workers <= 1:
        init_worker(threads, cache_dir, environment, device_choice)
        return (lambda fn, items: map(fn, items)), (lambda: None)
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=init_worker,
                                                     initargs=(threads, cache_dir, dict(environment), device_choice))
    return (lambda fn, items: pool.imap_unordered(fn, items)), pool.terminate


def _ray_job(fn: Callable[[Any], Any], item: Any, threads: int, cache_dir: Path, environment: Mapping[str, Any],
             device_choice: str) -> Any:
    """One Ray task: set up this worker process once per configuration (as a pool worker is), run ``fn(item)``."""
    import json

    config = json.dumps([threads, str(cache_dir), environment, device_choice], sort_keys=True, default=str)
    if _WORKER.get("config") != config:
        init_worker(threads, cache_dir, environment, device_choice)
        _WORKER["config"] = config
    return fn(item)


def ray_executor(address: str | None, threads: int, cache_dir: Path, environment: Mapping[str, Any],
                device_choice: str):
    """(imap_unordered-like function, closer) over Ray: one task per item with ``threads`` CPUs (and
    a GPU on CUDA), results as they finish. ``address=None`` starts a local cluster (shut down by the
    closer); else joins the cluster at ``address`` (whose workers must import ``benchmarks``)."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(address=address, include_dashboard=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_WAIT_POLICY": "PASSIVE"}})
    remote = ray.remote(num_cpus=threads, num_gpus=1 if device_choice == "cuda" else 0)(_ray_job)

    def imap(fn: Callable[[Any], Any], items: Any) -> Iterator[Any]:
        pending = [remote.remote(fn, item, threads, cache_dir, dict(environment), device_choice) for item in items]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    return imap, (ray.shutdown if started_here else (lambda: None))
