"""Run the performance benchmarks (pytest-benchmark, ``benchmarks/perf/bench_*.py``) and write
``results/perf/``: ``perf.json`` (pytest-benchmark's JSON), ``environment.json`` and ``perf.md``.

Example (shell)::

    python -m benchmarks.perf            # the full run, about 5 minutes on 2 CPU cores
    python -m benchmarks.perf --quick    # a third of the rounds: a smoke check
    python -m benchmarks.perf -k step    # only the step-overhead benchmarks
    python -m benchmarks.perf --report-only   # rebuild perf.md from results/perf/perf.json
    python -m benchmarks perf --cuda           # CUDA mode: ViT-B on the GPU into results/perf/gpu, <= 150 s
    python -m benchmarks perf --cuda-rehearsal --out /tmp/rehearsal   # its code path on the CPU, tiny

Returns pytest's exit code (0 when every benchmark ran; a missed goal is reported, not failed;
a broken build or a memory check that fails is a failure); in the CUDA mode also 2 without a CUDA
device (before anything is measured or written) and 124 when the ``--seconds`` budget cut the run
(what finished is written, as after Ctrl-C or ``timeout -s INT``: pytest-benchmark writes the JSON of
the finished benchmarks when pytest is interrupted).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

from ..store import atomic_write, cpu_name, git_commit, versions

ROOT = Path(__file__).resolve().parents[2]
PERF_DIR = Path(__file__).resolve().parent
QUICK_SCALE = 0.33
#: Where ``--cuda`` writes by default, and where a CPU rehearsal never writes.
GPU_OUT = "results/perf/gpu"
#: The CUDA mode's default time budget, seconds.
DEFAULT_SECONDS = 150.0
#: pytest-benchmark warns (an error under the project's filterwarnings) when no benchmark finished, as
#: when the time box skipped them all; the CUDA mode writes an empty perf.json instead.
NOTHING_SAVED = "ignore:Not saving anything:pytest.PytestWarning"  # its category subclasses it


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="output folder (relative to the repository root; default results/perf, "
                        f"{GPU_OUT} with --cuda, a new temporary folder with --cuda-rehearsal)")
    parser.add_argument("--quick", action="store_true", help="a third of the rounds and time budgets (a smoke check; noisier)")
    parser.add_argument("-k", dest="select", help="pytest -k expression: run only the matching benchmarks")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild perf.md from the perf.json and environment.json in --out"
    )
    parser.add_argument("--cuda", action="store_true", help="the CUDA mode (bench_cuda.py, ViT-B on the GPU); exits "
                        "with 2 before measuring anything when torch has no CUDA device")
    parser.add_argument("--cuda-rehearsal", action="store_true", help="the CUDA mode's code path on the CPU at a tiny "
                        f"size (a check, not a measurement; never written into {GPU_OUT})")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="with --cuda/--cuda-rehearsal: the "
                        "run's time budget from the start of main() (default %(default)s); later benchmarks get "
                        "fewer rounds or are skipped, and at the end pytest is interrupted (partial perf.json, exit 124)")
    return parser


def _output(args: argparse.Namespace) -> Path:
    if args.out is None:
        if args.cuda_rehearsal:
            return Path(tempfile.mkdtemp(prefix="perf-cuda-rehearsal-"))
        args.out = GPU_OUT if args.cuda else "results/perf"
    return Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and write perf.json, environment.json and perf.md into ``--out``; returns
    pytest's exit code, 2 when ``--cuda`` finds no CUDA device (or a rehearsal is aimed into
    results/perf/gpu: nothing measured or written), 124 when the ``--seconds`` budget cut the run
    (benchmarks skipped or pytest interrupted; the finished benchmarks are written)."""
    start = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    out = _output(args)
    if args.report_only:
        return _report_only(out)
    mode = None
    if args.cuda or args.cuda_rehearsal:
        from .cuda import CUDA, REHEARSAL, refusal

        mode = REHEARSAL if args.cuda_rehearsal else CUDA
        why = refusal(mode.rehearsal, out, ROOT / GPU_OUT)
        if why is not None:
            print(f"python -m benchmarks perf: {why}", file=sys.stderr)
            return 2

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
    results_path.unlink(missing_ok=True)  # a run cut before pytest-benchmark writes must not report stale numbers
    try:
        if mode is None:
            with mock.patch.dict(os.environ, ONLY_OUR_PLUGINS):
                code = int(pytest.main(_pytest_args(results_path, args.select)))
        else:
            code = _run_cuda_mode(mode, env, results_path, args, start)
    finally:
        set_scale(previous)
    if not results_path.exists():
        print(f"pytest exited with {code} before writing {results_path}", file=sys.stderr)
        return code or 1
    _write_reports(out, results_path, env)
    return code


def _report_only(out: Path) -> int:
    from .report import render

    env = json.loads((out / "environment.json").read_text())
    atomic_write(out / "perf.md", render(json.loads((out / "perf.json").read_text()), env))
    print(f"wrote {out / 'perf.md'}")
    return 0


def _write_reports(out: Path, results_path: Path, env: dict[str, Any]) -> None:
    from .report import render

    env["load average at end (1 min)"] = f"{os.getloadavg()[0]:.2f}"
    atomic_write(out / "environment.json", json.dumps(env, indent=2) + "\n")
    results = json.loads(results_path.read_text())
    atomic_write(out / "perf.md", render(results, env))
    print(f"wrote {out / 'perf.md'} and {results_path}")


def _run_cuda_mode(mode, env: dict[str, Any], results_path: Path, args: argparse.Namespace, start: float) -> int:
    """pytest over ``bench_cuda.py`` in ``mode``, inside the ``--seconds`` time box; the mode's facts
    and what the time box did go into ``env``. Returns pytest's code, or 124 when the box cut the run."""
    import pytest
    import torch

    from .cuda import TimeBox, cuda_environment, set_mode

    env.update(cuda_environment(mode, args.seconds))
    box = TimeBox(args.seconds, start)
    previous, threads = set_mode(mode), torch.get_num_threads()
    if mode.rehearsal:  # tiny tensors: one thread (a second one on a loaded machine would time OpenMP waits)
        torch.set_num_threads(1)
    env["torch threads"] = torch.get_num_threads()
    box.arm()
    try:
        with mock.patch.dict(os.environ, ONLY_OUR_PLUGINS):
            code = int(pytest.main([*_pytest_args(results_path, args.select, PERF_DIR / "bench_cuda.py"), "-W",
                                    NOTHING_SAVED], plugins=[box]))
    except KeyboardInterrupt:  # the alarm fired outside pytest's own handling
        box.fired, code = True, 2
    finally:
        box.disarm()
        set_mode(previous)
        torch.set_num_threads(threads)
    env["wall seconds"] = round(time.monotonic() - start, 1)
    env["time box"] = ("cut: pytest interrupted at the --seconds budget" if box.fired else "kept") + (
        f"; skipped for time: {', '.join(box.skipped)}" if box.skipped else "")
    if not (box.fired or box.skipped):
        return code
    if not results_path.exists():  # pytest-benchmark saves nothing when no benchmark finished
        atomic_write(results_path, json.dumps({"benchmarks": [], "note": "no benchmark finished in the time box"}))
    print(f"the --seconds budget ({args.seconds:g} s) ran out: " + ("pytest was interrupted" if box.fired else
          f"{len(box.skipped)} benchmarks skipped") + "; the finished benchmarks are written", file=sys.stderr)
    return 124


#: Set around the benchmarks' pytest: no installed plugin loads unless named (``-p``, :func:`_pytest_args`).
ONLY_OUR_PLUGINS = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def _pytest_args(results_path: Path, select: str | None, where: Path = PERF_DIR) -> list[str]:
    """The pytest command line that runs the benchmarks in ``where`` (``-k select``) into ``results_path``:
    pytest-benchmark the one plugin loaded (with :data:`ONLY_OUR_PLUGINS` in the environment)
    and the benchmarks' own ini (``bench.ini``, not the project's test settings), so that whatever else a machine
    has installed neither loads nor changes the run."""
    pytest_args = [
        str(where),
        "-c",
        str(PERF_DIR / "bench.ini"),
        "--rootdir",
        str(ROOT),
        "-p",
        "pytest_benchmark.plugin",
        "-p",
        "no:cacheprovider",
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
