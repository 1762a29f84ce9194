"""Command line of the benchmark suite.

    python -m benchmarks run [--suite quick | --config my_suite.toml] [--out DIR] [--cache DIR] [--workers N] [--threads T] [--device cpu|cuda]
                             [--executor local|ray] [--address RAY_ADDRESS]
                             [--dry-run] [--max-cells N] [--no-progress] [--reuse OTHER_RUN_DIR]
                             [--experiment NAME ...] [--target NAME ...] [--seeds 0,1 | 0-4]
    python -m benchmarks report [--suite quick | --config my_suite.toml] [--out DIR] [--readme README.md]
    python -m benchmarks replicate --reference results/quick --new runs/quick [--suite quick | --config my_suite.toml]
    python -m benchmarks preregister --tuning results/quick-tuning [--suite quick_tuning] [--write]
    python -m benchmarks config-reference [--write]   # every key of a suite config (benchmarks/configs/README.md)
    python -m benchmarks docs-tables [--check]        # the README's and docs' tables, from results/ (benchmarks.blocks)
    python -m benchmarks perf [ARGS...]       # forwarded to benchmarks.perf.run.main
    python -m benchmarks gpu [ARGS...]        # forwarded to benchmarks.gpu.main (docs/benchmarks/gpu.md)

``run`` computes the suite's unfinished cells into ``<out>/runs.jsonl`` (default ``runs/<suite>``:
the committed ``results/`` is written only when ``--out`` names it), records the suite in
``<out>/suite.json`` (a config suite also as ``<out>/suite.toml``, a copy of its config) and rewrites
the reports; ``report`` rebuilds them from runs.jsonl alone; ``replicate`` compares a new run with a
reference, verdict by verdict and cell by cell, into ``<new>/replication.md``; ``preregister``
derives the pre-registered lrs and seed counts from a tuning-stage run and compares them with the
committed ``benchmarks/preregistration/<suite>.json`` (exit code 1 when an lr differs), or writes
them there with ``--write`` (:mod:`benchmarks.preregistration`). Without ``--suite``
and ``--config``, ``run`` runs ``quick``, ``report --out DIR`` and ``replicate`` take the suite each
folder records (the reference and the new run may hold different suites, e.g. ``quick`` and
``quick_replication``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

# Before torch starts OpenMP: idle threads sleep instead of spinning (a spinning pool is up to 15x
# slower on a shared machine). The numbers do not depend on it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .catalog import SUITES
from .parts import Part, parse_seeds
from .suites import Suite

#: The suite ``run`` runs (and ``report`` rebuilds) without ``--suite``, ``--config`` and ``--out``.
DEFAULT_SUITE = "quick"
#: Strategy kinds whose cells start from the pretrained backbone (scratch and pixel cells need no weights).
PRETRAINED_KINDS = ("finetune", "probe")
MISSING_WEIGHTS = "missing weights"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a suite (resumable) and write its reports")
    report = commands.add_parser("report", help="rebuild a suite's reports from its runs.jsonl")
    replicate = commands.add_parser("replicate", help="compare a new run of a suite with a reference run")
    preregister = commands.add_parser("preregister", help="the pre-registered lrs and seeds a tuning run implies: "
                                      "compare them with the committed ones, or --write them")
    preregister.add_argument("--tuning", type=Path, required=True, help="the tuning-stage run (e.g. results/quick-tuning)")
    preregister.add_argument("--suite", choices=sorted(n for n in SUITES if n.endswith("_tuning")),
                             default="quick_tuning", help="the tuning suite (default: quick_tuning)")
    preregister.add_argument("--write", action="store_true",
                             help="write benchmarks/preregistration/<suite>.json instead of comparing")
    reference = commands.add_parser("config-reference", help="the table of every key a suite config takes")
    tables = commands.add_parser("docs-tables", help="rewrite the generated tables of README.md and docs/ from results/")
    tables.add_argument("--check", action="store_true", help="only list the stale blocks; exit code 1 if any")
    for name, text in (("perf", "performance benchmarks (arguments go to benchmarks.perf.run)"),
                       ("gpu", "the GPU run on a lent GPU machine (arguments go to benchmarks.gpu)")):
        commands.add_parser(name, help=text, add_help=False)
    for sub, default in ((run, f"default: {DEFAULT_SUITE}"),
                         (report, f"default: the one --out records; without --out: {DEFAULT_SUITE}"),
                         (replicate, "for both runs; default: the one each folder records")):
        which = sub.add_mutually_exclusive_group()
        which.add_argument("--suite", choices=sorted(SUITES), help=f"a built-in suite ({default})")
        which.add_argument("--config", type=Path, help="a suite as a TOML file (benchmarks.config), instead of --suite")
    run.add_argument("--out", type=Path, help="output directory (default: runs/<suite>)")
    report.add_argument("--out", type=Path, help="the run folder (default: runs/<suite>)")
    replicate.add_argument("--reference", type=Path, required=True, help="the reference run (e.g. results/quick)")
    replicate.add_argument("--new", type=Path, required=True, help="the new run (e.g. runs/quick)")
    report.add_argument("--readme", type=Path,
                        help="also write the tables into this README's verdicts-<suite> and across-<suite> blocks")
    reference.add_argument("--write", action="store_true", help="write it into benchmarks/configs/README.md")
    _run_options(run)
    for sub, command in ((run, _run), (report, _report), (replicate, _replicate), (preregister, _preregister),
                         (reference, _config_reference), (tables, _docs_tables)):
        sub.set_defaults(func=command)
    return parser


def _run_options(run: argparse.ArgumentParser) -> None:
    """The ``run`` subcommand's options besides ``--suite``/``--config`` and ``--out``."""
    run.add_argument("--cache", type=Path, help="where source backbones and features are cached (default: <out>/cache)")
    run.add_argument("--workers", type=int, default=2, help="processes running cells (default 2; 1 on CUDA)")
    run.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                     help="cpu (default), cuda (bf16 autocast, channels_last, one process) or auto")
    run.add_argument("--threads", type=int, default=1, help="torch threads per cell (default 1; part of every cell's key)")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local processes (default) or Ray: one task per cell with --threads CPUs")
    run.add_argument("--address", help="with --executor ray: an existing cluster (default: start a local one)")
    run.add_argument("--assume-step-ms", type=float, default=None, help="with --dry-run: estimate at this training "
                     "step (ms, at the batch size) instead of timing one; for the GPU suites also print the GPU run's "
                     "plan and refuse (exit 2) below 8 confirmatory seeds")
    run.add_argument("--dry-run", action="store_true",
                     help="list the cells and whether each is done (or its backbone weights missing) and estimate "
                          "the time from measured step costs (warns at hours); run nothing")
    run.add_argument("--max-cells", type=int, help="stop after computing this many new cells")
    run.add_argument("--experiment", action="append", default=[], metavar="NAME",
                     help="run only this experiment's cells (repeatable; default: every experiment)")
    run.add_argument("--target", action="append", default=[], metavar="NAME",
                     help="run only the cells on this target (repeatable; default: every target)")
    run.add_argument("--seeds", type=_seeds, default=(), metavar="0,1",
                     help="run only these seeds: a list, ranges a-b allowed (default: every seed)")
    run.add_argument("--reuse", type=Path, action="append", default=[],
                     help="another run folder whose finished cells of this suite count as done (copied with their "
                          "provenance; repeatable)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return parse_seeds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _part(args: argparse.Namespace) -> Part:
    return Part(tuple(dict.fromkeys(args.experiment)), tuple(dict.fromkeys(args.target)), args.seeds)


#: ``--dry-run`` warns when its estimate of the wall time is at least this many seconds.
WARN_HOURS_S = 3600.0


def dry_run(suite: Suite | str, out: Path, threads: int, part: Part | None = None, cache_dir: Path | None = None,
            workers: int = 1, device_choice: str = "cpu", assume_step_ms: float | None = None) -> None:
    """Print every cell with its key and status (done / failed / pending, or ``missing weights``: a
    cell not done whose pretrained timm backbone has no weights in the local cache), then an
    estimate of the time the cells not done take (:func:`benchmarks.sizing.estimate`: measured
    cell times from ``out/runs.jsonl``, else one timed training step per experiment on the
    device, or ``assume_step_ms`` per step without timing one), with a warning at WARN_HOURS_S or
    more; runs no cell."""
    from .backbones import fetch_command, timm_model, weights_available
    from .runner import iter_pending

    suite = SUITES[suite] if isinstance(suite, str) else suite
    available = cache(weights_available)
    rows = [(cell, key, MISSING_WEIGHTS if status != "done" and cell.strategy.kind in PRETRAINED_KINDS
             and not available(cell.experiment) else status)
            for cell, key, status in iter_pending(suite, out, threads) if part is None or part.contains(cell)]
    print(f"suite {suite.name}: {len(rows)} cells -> {out}" + (f"  ({suite.description})" if suite.description else ""))
    if part is not None and not part.everything:
        print(f"part: {part.describe()}")
    print(f"{'#':>4}  {'key':16}  {'status':15}  {'experiment':12} {'target':18} {'strategy':20} seed  lr")
    counts: dict[str, int] = {}
    for index, (cell, key, status) in enumerate(rows):
        counts[status] = counts.get(status, 0) + 1
        print(f"{index:>4}  {key}  {status:15}  {cell.experiment.name:12} {cell.target.name:18} "
              f"{cell.strategy.name:20} {cell.seed:>4}  {cell.lr:g}")
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for backbone in sorted({cell.experiment.backbone for cell, _, status in rows if status == MISSING_WEIGHTS}):
        print(f"{MISSING_WEIGHTS}: {backbone}; cache them once on a machine with internet: "
              f"{fetch_command(timm_model(backbone))}")
    if suite.time_budget_s is not None:
        print(f"seeds are sized at run time to about {suite.time_budget_s:.0f} s from a timed training step")
    if suite.hypotheses:
        print("the guards add cells during the run: grid extensions where a selected lr sits at a grid edge, and "
              "the hypotheses' selected cells at twice the budget (benchmarks.selection)")
    print("hypotheses: " + "; ".join(f"{h.name} {h.comparison} on {h.target} ({h.metric})" for h in suite.hypotheses))
    _print_estimate(suite, out, [cell for cell, _, status in rows if status in ("pending", "failed")], threads,
                    out / "cache" if cache_dir is None else cache_dir, workers, device_choice, assume_step_ms)


#: Images in the one training step ``--dry-run`` times per experiment (scaled linearly to the batch size).
ESTIMATE_BATCH = 4


def _print_estimate(suite: Suite, out: Path, cells: list, threads: int, cache_dir: Path, workers: int,
                    device_choice: str, assume_step_ms: float | None = None) -> None:
    """The ``--dry-run`` time estimate of ``cells`` and what it rests on."""
    from .cells import key_environment
    from .runner import preparations
    from .sizing import estimate, time_one_step
    from .sources import SourceModel
    from .store import read_runs
    from .training import resolve_device

    try:
        device = resolve_device(device_choice, threads=threads)
    except RuntimeError as error:
        if assume_step_ms is None:
            print(f"estimate timed on the CPU instead: {error}")
        device = resolve_device("cpu", threads=threads)
    if device.type == "cuda":
        workers = 1
    environment = key_environment(device)
    sources = [p.experiment for wave in preparations(suite.experiments, cells) for p in wave
               if isinstance(p, SourceModel) and not p.path(cache_dir, environment).exists()]
    # One step at ESTIMATE_BATCH images, scaled to the batch size: seconds, not minutes, even for a GPU
    # suite's 224 px networks dry-run on a CPU.
    step = ((lambda e: assume_step_ms / 1000) if assume_step_ms is not None
            else (lambda e: time_one_step(e, device, repeats=1, batch=ESTIMATE_BATCH)))
    guess = estimate(cells, read_runs(out / "runs.jsonl"), sources, step)
    if assume_step_ms is not None and device_choice == "cuda":
        workers = 1  # one process on CUDA
    wall = guess.seconds / max(1, workers)
    how = (f"{device_choice}, a step assumed at {assume_step_ms:g} ms" if assume_step_ms is not None
           else f"{device.type}, timed steps at {ESTIMATE_BATCH} images, scaled to the batch size")
    print(f"estimate: about {_duration(guess.seconds)} of computing, {_duration(wall)} wall time with {workers} "
          f"worker(s) ({how}); from: {'; '.join(guess.basis) or 'nothing to run'}; "
          f"not counted: {'; '.join(guess.not_counted)}")
    if wall >= WARN_HOURS_S:
        print(f"WARNING: this run takes hours ({_duration(wall)}); run a part of it (--experiment, --target, "
              "--seeds) or stop after some cells (--max-cells): the run resumes where it stopped")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 \
        else f"{seconds:.0f} s"


def _suite(args: argparse.Namespace, folder: Path | None) -> Suite:
    """The suite ``--config`` or ``--suite`` names, else the one run folder ``folder`` records
    (:func:`benchmarks.config.recorded_suite`), else DEFAULT_SUITE.

    Raises:
        ConfigError: see :func:`benchmarks.config.load_suite` and :func:`~benchmarks.config.recorded_suite`.
        OSError: the config file cannot be read.
    """
    from .config import load_suite, recorded_suite

    if args.config is not None:
        return load_suite(args.config)
    if args.suite is not None or folder is None:
        return SUITES[args.suite or DEFAULT_SUITE]
    return recorded_suite(folder)


def _preregister(args: argparse.Namespace) -> int:
    """``preregister``: write the pre-registration, or compare it with the committed one (exit 1 when
    an lr differs, 2 when the tuning run is missing)."""
    import json

    from . import preregistration

    tuning = SUITES[args.suite]
    try:
        registration = preregistration.register(tuning, args.tuning)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = preregistration.path_for(tuning)
    unmet = [r["hypothesis"] for r in registration["sizing"] if not r["need_met"]]
    print(f"seeds per experiment: {registration['seeds']} (estimated {registration['estimated_worker_seconds']:.0f} "
          f"worker-seconds; needs not met: {', '.join(unmet) or 'none'})")
    if args.write:
        preregistration.write(registration, path)
        print(f"wrote {path} (version {registration['version']})")
        return 0
    if not path.exists():
        print(f"no committed pre-registration at {path}: write one with --write", file=sys.stderr)
        return 2
    table = preregistration.compare(json.loads(path.read_text()), registration)
    for row in table.itertuples():
        print(f"{row.experiment:12} {row.target:18} {row.strategy:20} committed {row.lr_committed:<9g} "
              f"new {row.lr_new:<9g} {'same' if row.same else 'DIFFERENT'}")
    print(f"same lr selected: {int(table.same.sum())} of {len(table)}")
    return 0 if table.same.all() else 1


def _config_reference(args: argparse.Namespace) -> int:
    """``config-reference``: print the table of every key a suite config takes, or ``--write`` it."""
    from .config import REFERENCE, reference
    from .store import atomic_write

    if args.write:
        atomic_write(REFERENCE, reference())
        print(f"wrote {REFERENCE}")
    else:
        print(reference(), end="")
    return 0


def _docs_tables(args: argparse.Namespace) -> int:
    """``docs-tables``: rewrite the generated blocks of README.md and docs/, or ``--check`` them (exit 1 when stale)."""
    from . import blocks

    if args.check:
        stale = blocks.stale(blocks.documents())
        print("\n".join(f"stale: {s}" for s in stale) or "every generated block is up to date")
        return 1 if stale else 0
    changed = blocks.write(blocks.documents())
    print("\n".join(f"rewrote {c}" for c in changed) or "every generated block was up to date")
    return 0


def _loaded(args: argparse.Namespace, folder: Path | None) -> Suite | None:
    """:func:`_suite`, or None with the error printed."""
    from .config import ConfigError

    try:
        return _suite(args, folder)
    except (ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def _replicate(args: argparse.Namespace) -> int:
    """``replicate``: compare a new run with a reference run, verdict by verdict (exit 1 when one differs)."""
    from .replicate import write_replication

    reference = _loaded(args, args.reference)
    new = None if reference is None else _loaded(args, args.new)
    if reference is None or new is None:
        return 2
    same = write_replication(args.reference, args.new, reference, new)
    headline = (args.new / "replication.md").read_text().split("\n\n")[1]
    print(f"{headline}\nreplication report: {args.new / 'replication.md'}")
    return 0 if same else 1


def _report(args: argparse.Namespace) -> int:
    """``report``: rebuild a run folder's reports (and, with ``--readme``, the README's blocks of the suite)."""
    from .report import write_reports

    suite = _loaded(args, args.out)
    if suite is None:
        return 2
    out = args.out if args.out is not None else Path("runs") / suite.name
    write_reports(out, suite)
    if args.readme is not None:
        from .blocks import write_run_blocks

        try:
            written = write_run_blocks(args.readme, out, suite.name)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"README blocks rewritten: {', '.join(written)}")
    print(f"reports rebuilt in {out}")
    return 0


def _missing_weights(suite: Suite, part: Part) -> list[str]:
    """The ``timm:`` backbones of the part's pretrained cells whose weights are not in the local cache."""
    from .backbones import timm_model, weights_available

    return sorted({e.backbone for e in suite.experiments if timm_model(e.backbone)
                   and (not part.experiments or e.name in part.experiments)
                   and any(s.kind in PRETRAINED_KINDS for s in e.strategies) and not weights_available(e)})


def _run(args: argparse.Namespace) -> int:
    """``run``: run a suite (or a part, or ``--dry-run`` it) into its folder and write the reports
    (``args.argv``: the command line, recorded in ``environment.json``)."""
    from .backbones import fetch_command, timm_model
    from .report import write_reports
    from .runner import run_suite
    from .store import read_suite_record, write_suite_record
    from .training import resolve_device

    suite = _loaded(args, None)
    if suite is None:
        return 2
    out = args.out if args.out is not None else Path("runs") / suite.name
    part = _part(args)
    try:
        part.check(suite)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        dry_run(suite, out, args.threads, part, args.cache, args.workers, args.device, args.assume_step_ms)
        if args.assume_step_ms is not None and suite.name.startswith("gpu"):
            from .gpu import REFUSED, plan, print_plan

            return 0 if print_plan(plan(args.assume_step_ms)) else REFUSED
        return 0
    recorded = read_suite_record(out)
    if recorded is not None and recorded.name != suite.name:  # its runs.jsonl and reports are another suite's
        print(f"error: {out} holds a run of suite {recorded.name!r}; running suite {suite.name!r} into it would mix "
              "the two suites' records and rewrite its reports: choose another --out, or delete the folder",
              file=sys.stderr)
        return 2
    try:
        resolve_device(args.device, threads=args.threads)  # a missing device fails before anything is written
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    missing = _missing_weights(suite, part)
    if missing:  # fails before anything is written, not cell by cell
        print("error: pretrained weights are not in the local cache (nothing is downloaded at run time; fetch them "
              "once with this project's python on a machine with internet, into the same cache) for "
              + "; ".join(f"{b}: fetch them once with {fetch_command(timm_model(b))}" for b in missing),
              file=sys.stderr)
        return 2
    write_suite_record(out, suite.name, args.config)
    outcome = run_suite(
        suite, out, args.cache if args.cache is not None else out / "cache", workers=args.workers,
        threads=args.threads, device_choice=args.device, max_cells=args.max_cells, progress=not args.no_progress,
        command="python -m benchmarks " + shlex.join(args.argv), report=write_reports, executor=args.executor,
        address=args.address, reuse=tuple(args.reuse), part=part,
    )
    print(f"{suite.name}: {outcome.computed} cells computed ({outcome.failed} failed), {outcome.skipped} reused, "
          f"{outcome.remaining} not done; {outcome.seconds:.0f} s; reports in {out}")
    return 1 if outcome.failed or (outcome.remaining and args.max_cells is None) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one function per subcommand; returns the exit code (1 when a cell failed or a
    replication differs, 2 for a suite that does not load or a missing device)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "perf":
        from .perf.run import main as perf_main

        return int(perf_main(argv[1:]) or 0)
    if argv and argv[0] == "gpu":
        from .gpu import main as gpu_main

        return gpu_main(argv[1:])
    args = _parser().parse_args(argv)
    args.argv = argv
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
