"""The GPU run (``python -m benchmarks gpu``): everything a lent GPU machine does in its 15 minutes,
in one resumable command, with the machine's own ``python3`` and the project from the working tree
(``benchmarks/gpu.sh`` installs the carried wheels first; ``docs/benchmarks/gpu.md``).

Stages, each skipped when a previous call finished it (a second call resumes the first):

1. **environment** (:mod:`benchmarks.environment`): versions, the CUDA device, the carried packages,
   the shipped data and weights; a problem stops the run at once (exit 3).
2. **smoke**: every cell kind of the GPU suites (fine-tuning, surgical, the lr-0 controls, scratch,
   pixel, linear probe, LP-FT with WiSE-FT, the clean-source stage, Lite0 and Lite2) at toy size
   on the device (:func:`toy`); a failure stops the suite stages (exit 4).
3. **perf**: the CUDA performance measurements (``python -m benchmarks perf --cuda``) into
   ``<results>/perf/gpu``.
4. **pilot**: the ``gpu_tuning`` suite (Lee et al. on the whole ImageNet EfficientNet-Lite0, every
   strategy on its lr grid, :data:`benchmarks.catalog.GPU_PILOT_SEEDS`) into ``<results>/gpu-tuning``.
5. **pre-registration**: the pilot's selected lrs and the confirmatory seeds
   (:func:`benchmarks.preregistration.register`, the ``gpu`` rule: at least 8 seeds, refused with
   the reason when the measured cells cannot pay for them within
   :data:`benchmarks.preregistration.GPU_CONFIRMATORY_SECONDS`), written to
   ``benchmarks/preregistration/gpu.json``.
6. **confirmatory**: the ``gpu`` suite (fresh seeds from
   :data:`benchmarks.catalog.GPU_FIRST_SEED`, each with its own clean-source model, at the
   registered lrs) into ``<results>/gpu``, then its reports.

Every stage runs inside the command's time box (``--seconds``): cells stop starting when it is
spent, and the next call resumes where this one stopped. ``--rehearse`` runs the same stages on
the CPU with what CUDA cells ask for (bf16 autocast, channels_last), at toy size, into a folder of
your choice: the code paths without a GPU (the tests do this), never a result.
``--dry-run --assume-step-ms X`` prints the plan (:func:`plan`): each stage's estimated seconds and
the confirmatory seeds that fit, and refuses (exit 2) when fewer than 8 would.

Example:
    >>> p = plan(step_ms=12.0)
    >>> p.seeds_that_fit >= 8, round(p.minutes) <= 15
    (True, True)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .selection import BUDGET_CHECK_FACTOR, BUDGET_CHECK_SEEDS
from .suites import WISE_ALPHAS, Budget, Cell, Experiment, Suite

ROOT = Path(__file__).resolve().parents[1]
#: A lent machine's device time, all calls together, and what its start costs (seconds).
DEVICE_SECONDS, START_SECONDS = 900.0, 90.0
#: Seconds of a call given to the environment check and to the perf measurements.
ENVIRONMENT_SECONDS, PERF_SECONDS = 30.0, 150.0
#: The fewest confirmatory seeds the run accepts (the power target): fewer decide nothing.
MIN_CONFIRMATORY_SEEDS = 8
#: What a cell costs besides its training steps and evaluated images (building the model, loading
#: its source state, the recipe, Python): an assumption until a run on the device measures it.
FIXED_CELL_SECONDS = 1.0
#: A forward pass of one image costs this fraction of a training step's per-image cost.
FORWARD_FRACTION = 1 / 3
#: Exit codes: a problem with the environment, a failed smoke, a refused design.
ENVIRONMENT_FAILED, SMOKE_FAILED, REFUSED = 3, 4, 2


# --- The estimate ---------------------------------------------------------------------------------


def evaluated_images(cell: Cell) -> int:
    """Images a fine-tuning cell passes forward besides training: validation at every evaluation,
    the test set and its corruptions, the penultimate features of the shifted and training images
    at start and end (CKA), and each WiSE-FT variant's test and OOD sets."""
    experiment, target = cell.experiment, cell.target
    classes = target.num_classes
    test = classes * (target.test_pool[1] - target.test_pool[0]) if target.test_pool else 0
    shifted = test * max(1, len(target.ood))
    evaluations = experiment.budget.steps // experiment.budget.eval_every + 1
    wise = len(WISE_ALPHAS) * (test + test * len(target.ood)) if cell.strategy.wise else 0
    return evaluations * classes * target.val_shots + test + test * len(target.ood) + 2 * (
        shifted + classes * target.shots) + wise


def cell_seconds(cell: Cell, step_s: float) -> float:
    """Estimated seconds of one cell on a device whose training step (at the experiment's batch
    size) takes ``step_s``: its steps, its evaluated images at FORWARD_FRACTION of a step's
    per-image cost, and FIXED_CELL_SECONDS; a pixel cell FIXED_CELL_SECONDS."""
    if cell.strategy.kind == "pixel":
        return FIXED_CELL_SECONDS
    budget = cell.experiment.budget
    per_image = step_s / budget.batch_size * FORWARD_FRACTION
    steps = budget.steps if cell.strategy.kind in ("finetune", "scratch") else 0
    return steps * step_s + evaluated_images(cell) * per_image + FIXED_CELL_SECONDS


def source_seconds(experiment: Experiment, step_s: float) -> float:
    """Estimated seconds of one clean-source model (its steps at its batch size) and its test."""
    source = experiment.source
    if not source.trained:
        return 0.0
    per_image = step_s / experiment.budget.batch_size
    return source.steps * source.batch_size * per_image + FIXED_CELL_SECONDS


def suite_seconds(suite: Suite, step_s: float, guards: bool = True) -> float:
    """Estimated seconds of a suite's cells, source models and guards: every grid cell; with
    ``guards``, one extension round (one more lr for every tuned strategy) and the budget check
    (both sides of every confirmatory hypothesis at twice the steps on 2 seeds)."""
    cells = suite.cells()
    total = sum(cell_seconds(c, step_s) for c in cells)
    total += sum(source_seconds(e, step_s) for e in suite.experiments for _ in e.seeds)
    if not guards:
        return total
    for e in suite.experiments:
        tuned = [c for c in cells if c.experiment is e and len(e.grid(c.strategy, c.target)) > 1]
        per_lr = {(c.target.name, c.strategy.name): c for c in tuned}
        total += len(e.seeds) * sum(cell_seconds(c, step_s) for c in per_lr.values())
    sides: dict[tuple[str, str, str], Cell] = {}
    for h in (h for h in suite.hypotheses if not h.exploratory):
        for c in cells:
            if ((c.experiment.name, c.target.name) == (h.experiment, h.target) and c.strategy.name in (h.better, h.worse)
                    and c.strategy.kind in ("finetune", "scratch") and c.seed == c.experiment.seeds[0]):
                sides[(h.experiment, h.target, c.strategy.name)] = c
    total += BUDGET_CHECK_SEEDS * sum(BUDGET_CHECK_FACTOR * cell_seconds(c, step_s) for c in sides.values())
    return total


@dataclass(frozen=True)
class Plan:
    """The GPU run's estimate at an assumed training step: seconds per stage, the confirmatory seeds
    that fit the device time left after the others, and the total with MIN_CONFIRMATORY_SEEDS."""

    step_ms: float
    stages: dict[str, float]
    per_seed: float
    seeds_that_fit: int

    @property
    def seconds(self) -> float:
        return sum(self.stages.values())

    @property
    def minutes(self) -> float:
        return self.seconds / 60


def plan(step_ms: float, device_seconds: float = DEVICE_SECONDS) -> Plan:
    """The plan of the GPU run at a training step of ``step_ms`` milliseconds (Lite0, 224 px, batch
    64, bf16 autocast): the machine's start, the environment check, the toy smoke, the pilot, the
    confirmatory stage at MIN_CONFIRMATORY_SEEDS seeds (every cell, source model and guard counted,
    :func:`suite_seconds`), the perf measurements and a second call's overhead (the run is longer
    than one call), and how many confirmatory seeds the device time left after the rest pays for.

    Raises:
        ValueError: a step time that is not positive.
    """
    from .catalog import GPU_LP_FT, GPU_TUNING

    if not step_ms > 0:
        raise ValueError(f"the assumed step time must be positive, got {step_ms}")
    step_s = step_ms / 1000
    smoke = sum(suite_seconds(one_lr(toy(s, seeds=1)), step_s / 50, guards=False) for s in (GPU_TUNING, GPU_LP_FT))
    one_seed = confirmatory_of(GPU_TUNING, seeds=1)
    per_seed = suite_seconds(one_seed, step_s, guards=False)
    confirmatory_s = suite_seconds(confirmatory_of(GPU_TUNING, seeds=MIN_CONFIRMATORY_SEEDS), step_s)
    stages = {"start": START_SECONDS, "environment": ENVIRONMENT_SECONDS, "smoke": smoke,
              "pilot": suite_seconds(GPU_TUNING, step_s), "confirmatory": confirmatory_s, "perf": PERF_SECONDS,
              "second call": CALL_OVERHEAD_SECONDS}
    left = device_seconds - sum(stages.values()) + MIN_CONFIRMATORY_SEEDS * per_seed
    return Plan(step_ms, stages, per_seed, max(0, int(left // per_seed)))


def confirmatory_of(tuning: Suite, seeds: int) -> Suite:
    """The confirmatory stage of ``tuning`` at its grids' middle lrs on ``seeds`` fresh seeds (for
    estimates before a pilot has registered lrs: the cells are the same at any lr)."""
    from .catalog import GPU_FIRST_SEED
    from .suites import confirmatory

    lrs = [{"experiment": e.name, "target": t, "strategy": s, "lr": lr} for e in tuning.experiments
           for t, s, lr in _middle_lrs(e)]
    registration = {"lrs": lrs, "seeds": {e.name: seeds for e in tuning.experiments}, "version": "estimate"}
    return confirmatory(tuning, registration, "gpu", GPU_FIRST_SEED)


def print_plan(p: Plan, out: Any = None) -> bool:
    """Print the plan; whether MIN_CONFIRMATORY_SEEDS fit."""
    out = out or sys.stdout
    print(f"GPU run at an assumed training step of {p.step_ms:g} ms (Lite0, 224 px, batch 64):", file=out)
    for stage, seconds in p.stages.items():
        print(f"  {stage:13} {seconds:6.0f} s", file=out)
    print(f"  {'total':13} {p.seconds:6.0f} s = {p.minutes:.1f} min of the {DEVICE_SECONDS / 60:.0f} min of device time "
          f"(confirmatory at {MIN_CONFIRMATORY_SEEDS} seeds, {p.per_seed:.0f} s per seed)", file=out)
    fits = p.seeds_that_fit >= MIN_CONFIRMATORY_SEEDS
    print(f"confirmatory seeds the device time pays for: {p.seeds_that_fit}; "
          + ("enough." if fits else f"REFUSED: fewer than {MIN_CONFIRMATORY_SEEDS} seeds decide nothing (a paired "
             "interval on so few independent units is too wide for Lee et al.'s 3 pp); make the cells cheaper or "
             "run on a faster device"), file=out)
    return fits


# --- Toy suites (the smoke and the rehearsal) ---------------------------------------------------------

#: The toy budget of the smoke and the rehearsal: a few steps of a few images.
TOY_BUDGET = Budget(steps=2, batch_size=10, eval_every=1, warmup_steps=1)


def toy(suite: Suite, seeds: int | None = None) -> Suite:
    """``suite`` at toy size: 32 px, 2 shots and 2 validation images per class, 3 test images per
    class, one OOD corruption, a 4-step clean-source stage with no accuracy gate, :data:`TOY_BUDGET`; its first
    ``seeds`` seeds (all when None). The same cell kinds and code paths, in seconds."""
    experiments = []
    for e in suite.experiments:
        targets = tuple(dataclasses.replace(t, shots=2, val_shots=2, test_pool=(0, 3), ood=t.ood[:1]) for t in e.targets)
        source = (dataclasses.replace(e.source, steps=4, batch_size=10, warmup_steps=1, min_accuracy=0.0)
                  if e.source.trained else e.source)
        chosen = e.seeds if seeds is None else e.seeds[:seeds]
        experiments.append(dataclasses.replace(e, targets=targets, source=source, image_size=32,
                                               budget=TOY_BUDGET).with_seeds(chosen))
    return dataclasses.replace(suite, name=suite.name, experiments=tuple(experiments))


def _middle_lrs(experiment: Experiment) -> list[tuple[str, str, float]]:
    """``(target, strategy, lr)`` for every strategy on every target at the middle of its lr grid."""
    return [(t.name, s.name, experiment.grid(s, t)[len(experiment.grid(s, t)) // 2])
            for t in experiment.targets for s in experiment.strategies]


def one_lr(suite: Suite) -> Suite:
    """``suite`` with every strategy at the middle of its lr grid only (a smoke needs each cell kind once)."""
    experiments = tuple(dataclasses.replace(e, lrs=tuple(_middle_lrs(e))) for e in suite.experiments)
    return dataclasses.replace(suite, experiments=experiments)


# --- The run ------------------------------------------------------------------------------------------

#: Exit codes besides 0 (done) and the three above: a call stopped at its time box with stages left (run
#: the same command again), and cells that failed (running again will not help: see their errors).
INCOMPLETE, CELLS_FAILED = 75, 5
#: Seconds a call spends outside ``python -m benchmarks gpu``: installing the wheels, the environment
#: check, packing and the transfers, and the idle wait before a second call.
CALL_OVERHEAD_SECONDS = 60.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results",
                        help="where gpu-tuning/, gpu/ and perf/gpu/ go (default: the repository's results/)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="where the smoke's folder gpu-smoke/ goes")
    parser.add_argument("--seconds", type=float, default=540.0,
                        help="this call's time box: no cell starts after it (default 540, for a 600 s device call)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads for the cells' CPU side (default: every core; not part of a CUDA cell key)")
    parser.add_argument("--rehearse", action="store_true",
                        help="on the CPU with bf16 autocast and channels_last, every stage at toy size (not a result)")
    parser.add_argument("--skip-perf", action="store_true", help="leave the perf stage out")
    parser.add_argument("--environment-checked", action="store_true",
                        help="skip the environment check (benchmarks/gpu.sh has just run it)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan at --assume-step-ms; run nothing")
    parser.add_argument("--assume-step-ms", type=float, default=None,
                        help="with --dry-run: one Lite0 training step at 224 px, batch 64, in milliseconds")
    return parser


@dataclass
class _Call:
    """One call's settings: folders, device, threads, deadline (``time.monotonic``), rehearsal."""

    results: Path
    runs: Path
    device_choice: str
    threads: int
    deadline: float
    rehearse: bool
    started: float = dataclasses.field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.deadline - time.monotonic()


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks gpu``: the stages in order (see the module docstring); exit 0 when the
    confirmatory stage, its reports and the perf measurements are done, else INCOMPLETE (the time box
    stopped it: run the same command again), CELLS_FAILED, ENVIRONMENT_FAILED, SMOKE_FAILED or REFUSED."""
    from .training import REHEARSAL

    args = _parser().parse_args(argv)
    if args.dry_run:
        if args.assume_step_ms is None:
            print("error: --dry-run needs --assume-step-ms (one Lite0 training step, ms)", file=sys.stderr)
            return REFUSED
        return 0 if print_plan(plan(args.assume_step_ms)) else REFUSED
    call = _Call(args.results.resolve(), args.runs.resolve(), REHEARSAL if args.rehearse else "cuda", args.threads,
                 time.monotonic() + args.seconds, args.rehearse)
    _say(f"GPU run{' REHEARSAL (CPU, toy size; not a result)' if call.rehearse else ''}: {args.seconds:.0f} s box")
    from .environment import check

    problems = [] if args.environment_checked else check(require_cuda=not call.rehearse)
    if problems:
        print("environment problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        return ENVIRONMENT_FAILED
    try:
        code = _stages(call, perf=not args.skip_perf)
    finally:
        _ledger(call)
    return code


def _stages(call: _Call, perf: bool) -> int:
    """Smoke, the Lee et al. run, then perf (last: the decisive question first)."""
    smoke = _smoke(call)
    if smoke != "passed":
        return SMOKE_FAILED if smoke == "failed" else INCOMPLETE
    code = _lee(call)
    if code != 0 or not perf:
        return code
    return _perf(call)


def _say(text: str) -> None:
    print(f"=== [{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _ledger(call: _Call) -> float:
    """Add this call's seconds so far to ``<results>/gpu-tuning/device-time.json`` (one entry per call,
    updated in place); returns the device seconds every call has used, each counted with
    CALL_OVERHEAD_SECONDS, plus START_SECONDS for the machine's start."""
    path = call.results / "gpu-tuning" / "device-time.json"
    ledger = json.loads(path.read_text()) if path.exists() else {"calls": []}
    entry = {"started": call.started, "seconds": round(time.monotonic() - call.started, 1)}
    calls = [c for c in ledger["calls"] if c["started"] != call.started] + [entry]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"calls": calls}, indent=2) + "\n")
    return START_SECONDS + sum(c["seconds"] + CALL_OVERHEAD_SECONDS for c in calls)


def _run(suite: Suite, out: Path, call: _Call, guards: bool = True, report: bool = True) -> Any:
    """Run ``suite`` into ``out`` on the call's device until the deadline (resumable)."""
    from .report import write_reports
    from .runner import run_suite
    from .store import write_suite_record

    write_suite_record(out, suite.name, None)
    return run_suite(suite, out, out / "cache", threads=call.threads, device_choice=call.device_choice,
                     progress=False, command="python -m benchmarks gpu" + (" --rehearse" if call.rehearse else ""),
                     report=write_reports if report else None, guards=guards, deadline=call.deadline)


def _smoke(call: _Call) -> str:
    """Every cell kind of the GPU suites once, at toy size, on the device: ``"passed"`` (recorded in
    ``<runs>/gpu-smoke/smoke.json``, which later calls reuse), ``"failed"`` (a cell of the Lee et al.
    run failed; a failure of the exploratory LP-FT kinds is reported, not fatal) or ``"incomplete"``
    (the time box stopped it)."""
    from .catalog import GPU_LP_FT, GPU_TUNING

    folder = call.runs / "gpu-smoke"
    record_path = folder / "smoke.json"
    if record_path.exists() and json.loads(record_path.read_text()).get("ok"):
        _say("smoke: passed in an earlier call")
        return "passed"
    _say("smoke: every cell kind at toy size")
    started, outcomes = time.perf_counter(), {}
    for suite in (GPU_TUNING, GPU_LP_FT):
        outcome = _run(one_lr(toy(suite, seeds=1)), folder / suite.name, call, guards=False, report=False)
        outcomes[suite.name] = dataclasses.asdict(outcome)
    lee = outcomes[GPU_TUNING.name]
    state = ("failed" if lee["failed"] else "incomplete" if any(o["remaining"] or o["cut"] for o in outcomes.values())
             else "passed")
    folder.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps({"ok": state == "passed", "state": state, "seconds": time.perf_counter() - started,
                                       "suites": outcomes, "device": call.device_choice}, indent=2) + "\n")
    failed = [name for name, o in outcomes.items() if o["failed"]]
    _say(f"smoke: {state}" + (f"; cells failed in {', '.join(failed)} (errors in the runs.jsonl files under {folder})"
                              if failed else ""))
    return state


def _perf(call: _Call) -> int:
    """The CUDA perf measurements into ``<results>/perf/gpu`` (a subprocess; skipped when done):
    0 when done, INCOMPLETE when the time box left too little for it."""
    out = call.results / "perf" / "gpu"
    if (out / "environment.json").exists() and not call.rehearse:
        _say("perf: done in an earlier call")
        return 0
    seconds = min(PERF_SECONDS, call.left())
    if seconds < 30:
        _say(f"perf: {call.left():.0f} s left in this call; run the same command again for it")
        return INCOMPLETE
    mode = "--cuda-rehearsal" if call.rehearse else "--cuda"
    command = [sys.executable, "-m", "benchmarks", "perf", mode, "--out", str(out), "--seconds", f"{seconds:.0f}"]
    _say("perf: " + " ".join(command[1:]))
    try:
        code = subprocess.run(command, cwd=ROOT, check=False, timeout=seconds + 60).returncode
    except subprocess.TimeoutExpired:
        code = 124
    _say(f"perf: exit code {code}")
    return 0 if code in (0, 124) else code  # 124: the finished benchmarks are written


def _lee(call: _Call) -> int:
    """The pilot, its pre-registration and the confirmatory stage (each resumed where it stopped)."""
    from .catalog import GPU_FIRST_SEED, GPU_TUNING
    from .suites import confirmatory

    pilot = one_lr(toy(GPU_TUNING)) if call.rehearse else GPU_TUNING
    _say(f"pilot: {pilot.name} into {call.results / 'gpu-tuning'}")
    code = _stage_code(_run(pilot, call.results / "gpu-tuning", call), "pilot", call.results / "gpu-tuning")
    if code:
        return code
    try:
        registration = _registration(pilot, call)
    except ValueError as error:
        print(f"REFUSED: {error}", file=sys.stderr)
        return REFUSED
    suite = confirmatory(pilot, registration, "gpu", GPU_FIRST_SEED)
    _say(f"confirmatory: {len(suite.experiments[0].seeds)} seeds into {call.results / 'gpu'}")
    code = _stage_code(_run(suite, call.results / "gpu", call), "confirmatory", call.results / "gpu")
    if code == 0:
        _say("confirmatory: done, reports in " + str(call.results / "gpu"))
    return code


def drop_mixed_sources(folder: Path) -> list[int]:
    """The seeds of ``folder/runs.jsonl`` whose finished cells started from different clean-source
    models (a call on a fresh machine retrains a seed's source, and CUDA does not retrain it bit for
    bit), with the records of each such seed's older source dropped from the file (they run again, on
    the current source, in the next call): a seed is one source model, one unit."""
    from .store import read_runs, write_runs

    records = read_runs(folder / "runs.jsonl")
    latest: dict[int, tuple[str, str]] = {}
    for r in records:
        sha = (r.get("source_model") or {}).get("sha256")
        if r.get("status") == "ok" and sha and (r["seed"] not in latest
                                                 or str(r.get("finished_at")) >= latest[r["seed"]][0]):
            latest[r["seed"]] = (str(r.get("finished_at")), sha)

    def stale(r: Any) -> bool:
        sha = (r.get("source_model") or {}).get("sha256")
        return bool(sha) and r["seed"] in latest and sha != latest[r["seed"]][1]

    mixed = sorted({r["seed"] for r in records if stale(r)})
    if mixed:
        write_runs(folder / "runs.jsonl", [r for r in records if not stale(r)])
    return mixed


def _stage_code(outcome: Any, stage: str, folder: Path | None = None) -> int:
    """0 when the stage is done, CELLS_FAILED when a cell failed, INCOMPLETE when the time box stopped
    it or when cells of a seed in ``folder`` started from two source models (:func:`drop_mixed_sources`)."""
    if folder is not None and (mixed := drop_mixed_sources(folder)):
        _say(f"{stage}: seeds {mixed} had cells from two clean-source models (a fresh machine retrained them); "
             "the older ones dropped: run the same command again to rerun them")
        return INCOMPLETE
    if outcome.failed:
        print(f"{stage}: {outcome.failed} cells failed (their errors are in runs.jsonl); running again will not help",
              file=sys.stderr)
        return CELLS_FAILED
    if outcome.remaining or outcome.cut:
        _say(f"{stage}: stopped at the time box; run the same command again to resume")
        return INCOMPLETE
    return 0


def _registration(pilot: Suite, call: _Call) -> dict[str, Any]:
    """The pilot's pre-registration: read back when an earlier call wrote it (in the pilot's folder, or
    the committed ``benchmarks/preregistration/gpu.json`` of the same pilot: a resumed run keeps its lrs
    and seeds), else made (:func:`benchmarks.preregistration.register`) within the device time left
    (:func:`confirmatory_budget`) and written to both places (the committed one unless rehearsing).

    Raises:
        benchmarks.preregistration.UnaffordableDesign: MIN_CONFIRMATORY_SEEDS cost more than that.
    """
    from . import preregistration

    path = call.results / "gpu-tuning" / "preregistration.json"
    committed = preregistration.path_for(pilot)
    for source in (path, *(() if call.rehearse else (committed,))):
        if source.exists():
            registration = json.loads(source.read_text())
            if registration.get("tuning", {}).get("suite") == pilot.name:
                for target in (path, *(() if call.rehearse else (committed,))):
                    if not target.exists():
                        preregistration.write(registration, target)
                _say(f"pre-registration {registration['version']}: read back from {source}")
                return registration
    rule, budget = preregistration.SIZING_RULES["gpu"], confirmatory_budget(call)
    if call.rehearse:  # toy cells decide nothing: two seeds, no budget to meet needs with, keep the rehearsal short
        rule, budget = dataclasses.replace(rule, min_seeds=2, refuse=False), 0.0
    registration = preregistration.register(pilot, call.results / "gpu-tuning", rule, budget)
    preregistration.write(registration, path)
    if not call.rehearse:
        preregistration.write(registration, committed)
    _say(f"pre-registration {registration['version']}: seeds {registration['seeds']} within {budget:.0f} s, lrs "
         + ", ".join(f"{r['strategy']} {r['lr']:g}" for r in registration["lrs"]))
    return registration


def confirmatory_budget(call: _Call) -> float:
    """Device seconds the confirmatory cells and source models may take: the device time less what the
    calls so far used (:func:`_ledger`), the pilot's measured budget check (the confirmatory stage runs
    the same one), the perf stage when it is still to come, and one more call's overhead."""
    used = _ledger(call)
    environment = json.loads((call.results / "gpu-tuning" / "environment.json").read_text())
    check = sum(p["seconds"] for p in environment.get("phases", []) if str(p["phase"]).startswith("budget"))
    perf_left = 0.0 if (call.results / "perf" / "gpu" / "environment.json").exists() else PERF_SECONDS
    return DEVICE_SECONDS - used - check - perf_left - CALL_OVERHEAD_SECONDS


if __name__ == "__main__":
    sys.exit(main())
