"""Run the performance benchmarks (pytest-benchmark, ``benchmarks/perf/bench_*.py``) and write
``results/perf/``: ``perf.json`` (pytest-benchmark's JSON), ``environment.json`` and ``perf.md``.

Example (shell)::

    python -m benchmarks.perf            # the full run, about 5 minutes on 2 CPU cores
    python -m benchmarks.perf --quick    # a third of the rounds: a smoke check
    python -m benchmarks.perf -k step    # only the step-overhead benchmarks
    python -m benchmarks.perf --report-only   # rebuild perf.md from results/perf/perf.json

Returns pytest's exit code (0 when every benchmark ran; a missed goal is reported, not failed;
a broken build or a memory check that fails is a failure).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from ..store import atomic_write, cpu_name, git_commit, versions

ROOT = Path(__file__).resolve().parents[2]
PERF_DIR = Path(__file__).resolve().parent
QUICK_SCALE = 0.33


def environment(command: str, scale: float) -> dict[str, Any]:
    """What the numbers depend on: versions, hardware, threads, commit, date, load."""
    import torch

    git = git_commit(ROOT)
    commit = (git["commit"] or "unknown") + (" (plus uncommitted changes)" if git["dirty"] else "")
    found = versions(("lrgroups", "timm", "pytest-benchmark"))
    cuda = torch.cuda.is_available()
    return {
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "git commit": commit,
        "lrgroups": found["lrgroups"],
        "torch": torch.__version__,
        "timm": found["timm"],
        "pytest-benchmark": found["pytest-benchmark"],
        "python": platform.python_version(),
        "device": "cuda" if cuda else "cpu",
        "CPU": f"{cpu_name()} ({os.cpu_count()} logical cores)",
        "GPU": torch.cuda.get_device_name(0) if cuda else "none",
        "torch threads": torch.get_num_threads(),
        "load average at start (1 min)": f"{os.getloadavg()[0]:.2f}",
        "rounds scale": scale,
        "command": command,
        "cuda": cuda,
    }


def _command(argv: list[str]) -> str:
    args = " ".join(shlex.quote(a) for a in argv)
    return f"python -m benchmarks.perf {args}".rstrip() + f"\n# same as: python -m benchmarks perf {args}".rstrip()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/perf", help="output folder (relative to the repository root)")
    parser.add_argument("--quick", action="store_true", help="a third of the rounds and time budgets (a smoke check; noisier)")
    parser.add_argument("-k", dest="select", help="pytest -k expression: run only the matching benchmarks")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild perf.md from the perf.json and environment.json in --out"
    )
    args = parser.parse_args(argv)
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    if args.report_only:
        from .report import render

        env = json.loads((out / "environment.json").read_text())
        atomic_write(out / "perf.md", render(json.loads((out / "perf.json").read_text()), env))
        print(f"wrote {out / 'perf.md'}")
        return 0

    import pytest
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    scale = QUICK_SCALE if args.quick else 1.0
    env = environment(_command(argv), scale)
    results_path = out / "perf.json"

    from .harness import set_scale  # imports torch: only when measuring

    previous = set_scale(scale)
    try:
        code = int(pytest.main(_pytest_args(results_path, args.select)))
    finally:
        set_scale(previous)
    if not results_path.exists():
        print(f"pytest exited with {code} before writing {results_path}", file=sys.stderr)
        return code or 1

    from .report import render

    env["load average at end (1 min)"] = f"{os.getloadavg()[0]:.2f}"
    atomic_write(out / "environment.json", json.dumps(env, indent=2) + "\n")
    results = json.loads(results_path.read_text())
    atomic_write(out / "perf.md", render(results, env))
    print(f"wrote {out / 'perf.md'} and {results_path}")
    return code


def _pytest_args(results_path: Path, select: str | None) -> list[str]:
    """The pytest command line that runs the benchmarks (``-k select``) into ``results_path``."""
    pytest_args = [
        str(PERF_DIR),
        "--rootdir",
        str(ROOT),
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "-o",
        "python_files=bench_*.py",
        "-q",
        "--benchmark-json",
        str(results_path),
        "--benchmark-disable-gc",
        "--benchmark-sort=fullname",
        "--benchmark-group-by=group",
        "--benchmark-columns=median,iqr,min,max,rounds",
    ]
    if select:
        pytest_args += ["-k", select]
    return pytest_args


if __name__ == "__main__":
    raise SystemExit(main())
