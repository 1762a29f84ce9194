"""The benchmark suite end to end: the smoke suite through the CLI's ``main(argv)`` into a tmp dir.

One module fixture runs it the way an interrupted, partly failing suite runs: first ``--max-cells 1``
(an interruption), then an in-process re-run in which one recipe raises (its cells are recorded as
failed, the rest run), then a clean re-run in two worker processes (only the failed cells are
computed). The tests check what each run left behind.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from benchmarks.__main__ import main
from benchmarks.catalog import SUITES
from benchmarks.cells import key_environment
from benchmarks.replicate import write_replication
from benchmarks.stats import VERDICTS
from benchmarks.store import read_runs, sha256_file, write_runs
from benchmarks.training import resolve_device
from lrgroups import recipes

pytestmark = pytest.mark.slow

FAILING_RECIPE = "surgical"
TIMING_FIELDS = {"train_seconds", "wall_seconds", "started_at", "finished_at", "invocation", "worker_pid",
                 "source_model"}
VERDICT_COLUMNS = ["hypothesis", "mirrors", "comparison", "metric", "kind", "effect", "ci_low", "ci_high", "ci_level",
                   "p_holm", "verdict", "replication_probability", "fragile", "unit", "units", "seeds"]


def _run(out: Path, *extra: str) -> int:
    return main(["run", "--suite", "smoke", "--out", str(out), "--no-progress", *extra])


def _broken_recipe(**kwargs):
    raise RuntimeError("deliberately broken recipe")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("smoke")
    assert _run(out, "--max-cells", "1", "--workers", "1") == 0
    interrupted = read_runs(out / "runs.jsonl")
    with pytest.MonkeyPatch.context() as patch:  # in-process (one worker), so the patch applies
        patch.setitem(recipes.RECIPES, FAILING_RECIPE, _broken_recipe)
        failing_exit = _run(out, "--workers", "1")
    with_failures = read_runs(out / "runs.jsonl")
    summary_with_failures = (out / "summary.md").read_text()
    final_exit = _run(out, "--workers", "2")
    return SimpleNamespace(out=out, interrupted=interrupted, with_failures=with_failures, failing_exit=failing_exit,
                           summary_with_failures=summary_with_failures, final_exit=final_exit,
                           final=read_runs(out / "runs.jsonl"), cells=SUITES["smoke"].cells())


def test_interrupted_run_keeps_its_one_cell_and_resuming_does_not_recompute_it(smoke) -> None:
    assert [record["status"] for record in smoke.interrupted] == ["ok"]
    first = smoke.interrupted[0]
    final = {record["key"]: record for record in smoke.final}
    assert final[first["key"]]["invocation"] == first["invocation"]
    environment = key_environment(resolve_device("cpu", threads=1))
    assert {cell.key(environment) for cell in smoke.cells} <= set(final)
    assert all(record["status"] == "ok" for record in final.values()) and smoke.final_exit == 0
    ok_before = {record["key"] for record in smoke.with_failures if record["status"] == "ok"}
    last = json.loads((smoke.out / "environment.json").read_text())["invocation"]
    assert len(Counter(record["invocation"] for record in smoke.final)) == 3
    assert not [record for record in smoke.final if record["key"] in ok_before and record["invocation"] == last]
    assert [record for record in smoke.final if record["invocation"] == last]  # the failed ones, recomputed
    assert len({record["worker_pid"] for record in smoke.final if record["invocation"] != first["invocation"]}) >= 2


def test_the_guards_ran_grid_extensions_and_the_budget_check(smoke) -> None:
    """A selection at a grid edge got one more candidate beyond it (every seed), and every
    confirmatory hypothesis' sides were rerun at twice the steps."""
    phases = Counter(record.get("phase") for record in smoke.final)
    assert phases["grid"] == len(smoke.cells) and phases["budget x2"] > 0
    runs = pd.read_csv(smoke.out / "runs.csv")
    check = pd.read_csv(smoke.out / "budget_check.csv")
    assert set(check.hypothesis) == {h.name for h in SUITES["smoke"].hypotheses if not h.exploratory}
    assert (runs[runs.budget_factor == 2].seed.isin([0, 1])).all()


def test_failing_cell_is_recorded_with_its_error_and_the_suite_goes_on(smoke) -> None:
    failed = [record for record in smoke.with_failures if record["status"] == "failed"]
    assert failed and all(record["strategy"].startswith("surgical") for record in failed)
    for record in failed:
        assert record["error"] == "RuntimeError: deliberately broken recipe"
        assert "_broken_recipe" in record["traceback"]
    assert smoke.failing_exit == 1
    assert "## Failed cells" in smoke.summary_with_failures and "deliberately broken recipe" in smoke.summary_with_failures


def test_every_output_file_is_written(smoke) -> None:
    names = {path.name for path in smoke.out.iterdir()}
    expected = {"runs.jsonl", "runs.csv", "selected.csv", "gates.csv", "verdicts.csv", "forgetting.csv", "summary.md",
                "convergence.csv", "ood.csv", "budget_check.csv", "environment.json", "cache",
                "forgetting_q1_surgical_label_permutation.png", "wise_q3_lp_ft.png",
                "curves_q1_surgical_label_permutation.png", "curves_q3_lp_ft_animal10.png"}
    assert expected <= names and not [n for n in names if "partial" in n]  # nothing half-written left behind
    for png in smoke.out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    cached = Counter(path.name.split("-")[0] for path in (smoke.out / "cache").glob("*.pt"))
    assert cached == {"source": 2, "features": 2, "probes": 1}  # two source seeds; Lite0 features; Q3's probes


def test_verdicts_come_first_with_the_required_columns(smoke) -> None:
    verdicts = pd.read_csv(smoke.out / "verdicts.csv")
    assert list(verdicts.columns[: len(VERDICT_COLUMNS)]) == VERDICT_COLUMNS
    assert list(verdicts.hypothesis) == [h.name for h in SUITES["smoke"].hypotheses]
    assert set(verdicts.verdict) <= set(VERDICTS)
    confirmatory = verdicts[~verdicts.exploratory]
    assert set(confirmatory.unit) <= {"seed (own source model)", "seed (shared ImageNet weights)"}
    decided = confirmatory[confirmatory.verdict != "out of scope"]
    assert decided.replication_probability.between(0, 1).all()
    assert (confirmatory.fragile == ~(confirmatory.replication_probability >= 0.9)).all()
    tested = verdicts[verdicts.ci_low.notna()]
    assert (tested.ci_low <= tested.effect).all() and (tested.effect <= tested.ci_high).all()
    holm = verdicts[verdicts.p_holm.notna()]
    assert (holm.p_holm >= holm.p - 1e-12).all()
    assert {"mde", "seeds_needed", "preconditions", "min_effect_source"} <= set(verdicts.columns)
    markdown = (smoke.out / "summary.md").read_text()
    assert markdown.split("\n## ")[1].startswith("Verdicts\n")
    assert "| hypothesis | mirrors | comparison |" in markdown


def test_every_target_has_scratch_and_pixel_baselines_and_a_gate(smoke) -> None:
    selected = pd.read_csv(smoke.out / "selected.csv")
    assert len(selected)
    for (experiment, target), part in selected.groupby(["experiment", "target"]):
        assert part.strategy.str.contains("scratch").any() and part.strategy.str.contains("pixel").any()
    gates = pd.read_csv(smoke.out / "gates.csv")
    assert len(gates) == len(selected.groupby(["experiment", "target"]))
    assert set(gates.columns) >= {"transfer_ok", "source_ok", "margin", "best_baseline"}


def test_equal_tuning_selects_an_lr_per_strategy_and_flags_grid_edges(smoke) -> None:
    runs = pd.read_csv(smoke.out / "runs.csv")
    parents = runs[(runs.kind != "derived") & (runs.budget_factor == 1)]
    suite = SUITES["smoke"]
    assert len(parents) and parents.selected.any()
    for (experiment, strategy), part in parents.groupby(["experiment", "strategy"]):
        base = set(suite.experiment(experiment).grid(suite.experiment(experiment).strategy(strategy)))
        assert base <= set(part.lr)  # every base candidate ran; extensions only beyond it
    chosen = parents[parents.selected].groupby(["experiment", "target", "strategy"]).lr.nunique()
    assert (chosen == 1).all()
    for row in parents[parents.selected].itertuples():
        lrs = parents[(parents.experiment == row.experiment) & (parents.target == row.target)
                      & (parents.strategy == row.strategy)].lr
        assert row.edge == (row.lr in (lrs.min(), lrs.max()))


def _in_unit_interval(value: float) -> bool:
    return math.isfinite(value) and -1e-9 <= value <= 1 + 1e-9


def test_every_metric_is_finite_and_in_range(smoke) -> None:
    fields = ("val_accuracy", "test_accuracy", "ood_accuracy", "ood_cka", "retention_precise_bn")
    assert {field for field in fields if any(field in record for record in smoke.final)} == set(fields)
    assert any(r["strategy"].startswith("surgical") or r["strategy"] == "top_ft" for r in smoke.final)
    for record in smoke.final:
        for field in ("val_accuracy", "test_accuracy", "ood_accuracy", "ood_cka"):
            if field in record:
                assert _in_unit_interval(record[field]), (field, record[field])
        if record["strategy"].startswith("surgical") or record["strategy"] == "top_ft":
            curve = record["curve"]
            assert curve["step"][0] == 0 and curve["step"][-1] == record["config"]["budget"]["steps"]
        if "retention_precise_bn" in record:
            assert record["retention_precise_bn"] >= 0 and record["retention_weights_only"] >= 0
        assert record["environment"]["cpu_threads"] == 1


def test_strategies_leave_their_marks(smoke) -> None:
    """The head-only and probe strategies keep the source weights; WiSE-FT's alpha 1 is the fine-tuned model."""
    assert {"surgical_head", "linear_probe"} <= {record["strategy"] for record in smoke.final}
    assert any(name.endswith("wise_1.0") for record in smoke.final for name in record.get("variants") or {})
    for record in smoke.final:
        if record["strategy"] == "surgical_head":
            assert record["retention_weights_only"] == pytest.approx(1) == record["retention_precise_bn"]
        if record["strategy"] == "linear_probe":
            assert record["ood_cka"] == 1
        for name, variant in (record.get("variants") or {}).items():
            if name.endswith("wise_1.0"):
                assert variant["test_accuracy"] == record["test_accuracy"]
                assert variant["ood_accuracy"] == record["ood_accuracy"]


def test_report_rebuilds_the_same_files(smoke) -> None:
    markdown = (smoke.out / "summary.md").read_text()
    verdicts = (smoke.out / "verdicts.csv").read_text()
    environment = json.loads((smoke.out / "environment.json").read_text())
    assert environment["threads_per_cell"] == 1 and environment["workers"] == 2 and environment["device"] == "cpu"
    assert {"torch", "timm", "lrgroups", "scikit-learn"} <= set(environment["versions"])
    assert f"python -m benchmarks run --suite smoke --out {smoke.out}" in markdown
    (smoke.out / "summary.md").unlink()
    (smoke.out / "verdicts.csv").unlink()
    assert main(["report", "--suite", "smoke", "--out", str(smoke.out)]) == 0
    assert (smoke.out / "summary.md").read_text() == markdown
    assert (smoke.out / "verdicts.csv").read_text() == verdicts


def test_dry_run_lists_cells_and_their_status(smoke, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(smoke.out, "--dry-run") == 0
    listing = capsys.readouterr().out
    environment = key_environment(resolve_device("cpu", threads=1))
    assert smoke.cells
    for cell in smoke.cells:
        assert f"{cell.key(environment)}  done" in listing
    assert _run(tmp_path / "fresh", "--dry-run") == 0
    assert f"{len(smoke.cells)} pending" in capsys.readouterr().out and not (tmp_path / "fresh").exists()


def test_numbers_do_not_depend_on_the_process_layout(smoke, tmp_path: Path) -> None:
    """Cells computed by two worker processes are recomputed in-process with the same numbers."""
    assert _run(tmp_path, "--cache", str(smoke.out / "cache"), "--max-cells", "4", "--workers", "1") == 0
    final = {record["key"]: record for record in smoke.final}
    recomputed = read_runs(tmp_path / "runs.jsonl")
    assert len(recomputed) == 4
    for record in recomputed:
        previous = final[record["key"]]
        assert {k: v for k, v in record.items() if k not in TIMING_FIELDS} == {
            k: v for k, v in previous.items() if k not in TIMING_FIELDS}


def test_a_corrupt_cached_source_backbone_is_rebuilt(smoke, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(smoke.out / "cache", cache)
    weights = sorted(cache.glob("source-*.pt"))[0]
    weights.write_bytes(weights.read_bytes()[:-8] + b"garbage!")
    assert _run(tmp_path / "out", "--cache", str(cache), "--max-cells", "1", "--workers", "1") == 0
    environment = json.loads((tmp_path / "out" / "environment.json").read_text())
    rebuilt = [p for p in environment["preparations"] if p["file"] == weights.name]
    assert rebuilt and rebuilt[0]["built_now"] is True
    assert json.loads(weights.with_suffix(".json").read_text())["sha256"] == sha256_file(weights)


def test_replication_of_a_run_by_itself_and_by_a_changed_copy(smoke, tmp_path: Path) -> None:
    assert write_replication(smoke.out, smoke.out, SUITES["smoke"], SUITES["smoke"]) is True
    changed = tmp_path / "changed"
    changed.mkdir()
    records = read_runs(smoke.out / "runs.jsonl")
    for record in records:  # surgical_head loses every accuracy: S1's effect turns negative
        if record["strategy"] == "surgical_head":
            record["test_accuracy"] = record["val_accuracy"] = 0.0
    write_runs(changed / "runs.jsonl", records)
    assert main(["replicate", "--suite", "smoke", "--reference", str(smoke.out), "--new", str(changed)]) in (0, 1)
    table = pd.read_csv(changed / "replication.csv")
    row = table[(table.strategy == "surgical_head")].iloc[0]
    assert row.test_accuracy_new == 0 and not row.inside and not row.consistent
    report = (changed / "replication.md").read_text()
    assert "Confirmatory verdicts compatible" in report and "| S1 |" in report


def test_suites_are_well_formed() -> None:
    """Unique cells; equal lr grids (probes: at least 4 Cs; controls: their fixed lr), or one
    pre-registered lr per strategy and target; baselines on every target; quick: >= 6 seeds, >= 500
    test images, every seed with its own source model, convergence and forgetting hypotheses registered; its
    replication: disjoint seeds and other source models."""
    environment = key_environment(resolve_device("cpu", threads=1))
    for suite in SUITES.values():
        keys = [cell.key(environment) for cell in suite.cells()]
        assert len(keys) == len(set(keys)), suite.name
        for experiment in suite.experiments:
            tuned = [s for s in experiment.strategies if s.fixed_lr is None]
            for target in experiment.targets:
                sizes = {len(experiment.grid(s, target)) for s in tuned
                         if s.kind != "probe" and (target.name, s.name) not in experiment.skip}
                assert sizes == {1} if experiment.lrs else len(sizes) == 1, (suite.name, experiment.name)
            if not experiment.lrs:
                assert all(len(s.grid) >= 4 for s in tuned if s.kind == "probe")
            names = [s.name for s in experiment.strategies]
            assert any("scratch" in n for n in names) and any("pixel" in n for n in names)
    quick, replication = SUITES["quick"], SUITES["quick_replication"]
    for experiment, other in zip(quick.experiments, replication.experiments, strict=True):
        assert len(experiment.seeds) >= 6 and not set(experiment.seeds) & set(other.seeds)
        if experiment.source.kind == "pretrain":
            assert experiment.independent_sources and other.independent_sources
            assert not {experiment.source_seed(s) for s in experiment.seeds} & {other.source_seed(s) for s in other.seeds}
        for target in experiment.targets:
            assert (target.test_pool[1] - target.test_pool[0]) * target.num_classes >= 500
    # registered hypotheses (H-named) about convergence and forgetting; one is exploratory only when the
    # pre-registration found it futile (no seed count up to the maximum decides it)
    metrics = Counter(h.metric for h in quick.hypotheses if h.name.startswith("H"))
    assert metrics["val_auc"] + metrics["val_at_quarter"] >= 1 and metrics["retention_at_match"] >= 1
    assert {h.name for h in quick.hypotheses if h.name.startswith("H") and h.exploratory} == set(quick.futile)
    assert [h.name for h in quick.hypotheses][:3] == ["H1a", "H1b", "H1c"]


def test_perf_is_forwarded_to_the_perf_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.perf.run as perf_run

    calls = []
    monkeypatch.setattr(perf_run, "main", lambda argv=None: calls.append(argv) or 3)
    assert main(["perf", "--quick", "-k", "step"]) == 3
    assert calls == [["--quick", "-k", "step"]]


def test_readme_verdict_table_is_the_committed_reference() -> None:
    """The README's verdict block is exactly what `report --readme` writes from results/quick."""
    from benchmarks.blocks import markers
    from benchmarks.report import readme_table

    root = Path(__file__).resolve().parents[1]
    start, end = markers("verdicts-quick")
    block = (root / "README.md").read_text().split(start, 1)[1].split(end, 1)[0].strip()
    assert block == readme_table(pd.read_csv(root / "results" / "quick" / "verdicts.csv")).strip()


def test_readme_numbers_about_the_committed_runs_are_the_runs_own() -> None:
    """The wall time the README quotes is the one the committed reference recorded, and that run is
    the confirmatory stage of the committed pre-registration (its version, lrs and seeds)."""
    root = Path(__file__).resolve().parents[1]
    readme = " ".join((root / "README.md").read_text().split())
    environment = json.loads((root / "results" / "quick" / "environment.json").read_text())
    assert f"the committed reference took {round(environment['wall_seconds'])} s on 2 CPU cores" in readme
    quick_page = " ".join((root / "docs" / "benchmarks" / "quick.md").read_text().split())
    assert "about ten minutes on two CPU cores" in quick_page and environment["wall_seconds"] < 600
    assert environment["workers"] == 2 and environment["failed"] == 0 and environment["not_done"] == 0
    registration = json.loads((root / "benchmarks" / "preregistration" / "quick.json").read_text())
    assert f"version {registration['version']}" in (root / "results" / "quick" / "summary.md").read_text()
    runs = pd.read_csv(root / "results" / "quick" / "runs.csv")
    base = runs[(runs.budget_factor == 1) & (runs.kind != "derived")]
    lrs = {(r["experiment"], r["target"], r["strategy"]): r["lr"] for r in registration["lrs"]}
    assert {(r.experiment, r.target, r.strategy): r.lr for r in base.itertuples()} == lrs
    assert base.groupby("experiment").seed.nunique().to_dict() == registration["seeds"]
    # every cell on as many seeds as its pre-registration gives it, the first of the experiment's
    per_cell = base.groupby(["experiment", "target", "strategy"]).seed.nunique().to_dict()
    assert per_cell == {(r["experiment"], r["target"], r["strategy"]): r["seeds"] for r in registration["cell_seeds"]}
    seeds = base.groupby(["experiment", "target", "strategy"]).seed.apply(sorted).to_dict()
    firsts = {e.name: sorted(e.seeds) for e in SUITES["quick"].experiments}
    assert all(s == firsts[key[0]][:len(s)] for key, s in seeds.items())  # the first of the experiment's seeds
    contrast = {r["seeds"] for r in registration["cell_seeds"] if r["target"] == "contrast"
                and r["strategy"] in ("surgical_first", "surgical_last", "full", "bn_only")}
    noise = sorted(r["seeds"] for r in registration["cell_seeds"] if r["target"] == "noise" and r["strategy"] != "pixel")
    least = min(r["seeds"] for r in registration["cell_seeds"])
    assert (f"Q1's four contrast strategies that H1a, H1e and H1f compare run on {contrast.pop()} seeds, its noise "
            f"cells on {noise[0]} to {noise[-1]}, and a cell no verdict needs more of on {least};") in quick_page
    assert not contrast
    futile = registration["futile"]
    assert f"(`futile`: {', '.join(futile[:-1])} and {futile[-1]}," in quick_page
    assert f"(`futile`: {', '.join(futile[:-1])} and {futile[-1]}," in readme
    confirmatory = pd.read_csv(root / "results" / "quick" / "verdicts.csv").query("not exploratory")
    assert f"the confirmatory family has {len(confirmatory)} verdicts" in readme
    verdicts = pd.read_csv(root / "results" / "quick" / "verdicts.csv").set_index("hypothesis")
    registered = verdicts.index.str.startswith("H")  # X-named hypotheses are exploratory by design
    assert verdicts.loc[futile].exploratory.all() and not verdicts[registered & ~verdicts.index.isin(futile)].exploratory.any()


def test_the_committed_replication_is_independent_of_the_reference() -> None:
    """results/quick-replication shares no seed and no source model with results/quick, ran on
    another executor, and its report is what `replicate` writes from the two folders."""
    root = Path(__file__).resolve().parents[1]
    runs = {name: pd.read_csv(root / "results" / name / "runs.csv") for name in ("quick", "quick-replication")}
    assert not set(runs["quick"].seed) & set(runs["quick-replication"].seed)
    sources = {name: set(frame[frame.experiment != "q3_lp_ft"].source_seed.dropna()) for name, frame in runs.items()}
    assert sources["quick"] and not sources["quick"] & sources["quick-replication"]
    executors = {name: json.loads((root / "results" / name / "environment.json").read_text())["executor"]
                 for name in runs}
    assert executors == {"quick": "local", "quick-replication": "ray"}


def test_a_run_reuses_another_folders_finished_cells_of_its_suite(smoke, tmp_path: Path) -> None:
    """`run --reuse OTHER` counts OTHER's finished records of this suite's cells as done (nothing
    recomputed, provenance kept, the reuse recorded), and takes nothing of another suite's."""
    from benchmarks.runner import reusable_records

    environment = key_environment(resolve_device("cpu", threads=1))
    finished = {r["key"]: r for r in smoke.final if r["status"] == "ok"}
    assert set(reusable_records(SUITES["smoke"], (smoke.out,), environment)) == set(finished)
    assert reusable_records(SUITES["quick_tuning"], (smoke.out,), environment) == {}
    out = tmp_path / "again"
    assert _run(out, "--workers", "1", "--reuse", str(smoke.out)) == 0
    again = {r["key"]: r for r in read_runs(out / "runs.jsonl")}
    assert set(again) == set(finished)
    assert all(again[k]["invocation"] == finished[k]["invocation"] for k in again)  # copied, not recomputed
    recorded = json.loads((out / "environment.json").read_text())
    assert recorded["computed"] == 0 and recorded["reused"]["records"] == len(finished)
