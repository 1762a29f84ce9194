"""Command line of the benchmark suite.

    python -m benchmarks run [--suite quick] [--out DIR] [--cache DIR] [--device auto|cpu|cuda]
                             [--dry-run] [--max-cells N] [--no-progress]
    python -m benchmarks report [--suite quick] [--out DIR]
    python -m benchmarks perf [ARGS...]       # forwarded to benchmarks.perf.run.main

``run`` computes the suite's unfinished cells into ``<out>/runs.jsonl`` (default ``results/<suite>``)
and rewrites the reports; ``report`` rebuilds the reports from runs.jsonl alone.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

# Before torch starts OpenMP: idle threads sleep instead of spinning. On a shared 2-core machine a
# spinning pool is up to 15x slower when another process competes for the cores; alone it costs
# little. The numbers do not depend on it. Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .suites import SUITES  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a suite (resumable) and write its reports")
    report = commands.add_parser("report", help="rebuild a suite's reports from its runs.jsonl")
    commands.add_parser("perf", help="performance benchmarks (arguments go to benchmarks.perf.run)", add_help=False)
    for sub in (run, report):
        sub.add_argument("--suite", choices=sorted(SUITES), default="quick", help="which suite (default: quick)")
        sub.add_argument("--out", type=Path, help="output directory (default: results/<suite>)")
    run.add_argument("--cache", type=Path, help="where pretrained source backbones are cached (default: <out>/cache)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="auto: CUDA (bf16 autocast, channels_last) when present, else the CPU with 2 threads")
    run.add_argument("--dry-run", action="store_true", help="list the cells and whether each is done; run nothing")
    run.add_argument("--max-cells", type=int, help="stop after computing this many new cells")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def dry_run(suite_name: str, out: Path, device_choice: str) -> None:
    """Print every cell with its key and status (done / failed / pending), without running anything."""
    from .runner import key_environment
    from .store import read_runs
    from .training import resolve_device

    suite = SUITES[suite_name]
    environment = key_environment(resolve_device(device_choice))
    records = {record["key"]: record.get("status") for record in read_runs(out / "runs.jsonl")}
    cells = suite.cells()
    print(f"suite {suite.name}: {len(cells)} cells -> {out}  ({suite.description})")
    print(f"{'#':>4}  {'key':16}  {'status':7}  {'backbone':18} {'task':24} {'strategy':34} seed  steps")
    counts: dict[str, int] = {}
    for index, cell in enumerate(cells):
        key = cell.key(environment)
        status = {"ok": "done", "failed": "failed"}.get(records.get(key), "pending")
        counts[status] = counts.get(status, 0) + 1
        print(f"{index:>4}  {key}  {status:7}  {cell.backbone:18} {cell.task.name:24} {cell.strategy.name:34} "
              f"{cell.seed:>4}  {cell.grid.budget.steps:>5}")
    sources = {(c.backbone, c.task.source) for c in cells if c.grid.pretraining is not None}
    print(f"{', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}; "
          f"{len(sources)} source backbones pretrained by the suite (cached)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (1 when a cell of the suite has failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "perf":
        from .perf.run import main as perf_main

        return int(perf_main(argv[1:]) or 0)
    args = _parser().parse_args(argv)
    out = args.out if args.out is not None else Path("results") / args.suite
    suite = SUITES[args.suite]
    if args.command == "report":
        from .report import write_reports

        write_reports(out, suite)
        print(f"reports rebuilt in {out}")
        return 0
    if args.dry_run:
        dry_run(args.suite, out, args.device)
        return 0
    from .report import write_reports
    from .runner import run_suite
    from .training import resolve_device

    try:
        device = resolve_device(args.device)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    outcome = run_suite(
        suite, out, args.cache if args.cache is not None else out / "cache", device, max_cells=args.max_cells,
        progress=not args.no_progress, command="python -m benchmarks " + shlex.join(argv), report=write_reports,
    )
    print(f"{suite.name}: {outcome.computed} cells computed ({outcome.failed} failed), {outcome.skipped} reused, "
          f"{outcome.remaining} not done; {outcome.seconds:.0f} s; reports in {out}")
    return 1 if outcome.failed or (outcome.remaining and args.max_cells is None) else 0


if __name__ == "__main__":
    sys.exit(main())
