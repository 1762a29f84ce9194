"""The two-stage protocol: independent units, the pre-registration round trip (the tuning stage
writes it, the confirmatory stage reads it, a changed lr changes the cell keys), and the controls
that name the mechanism (the BN-statistics-only control changes only BatchNorm statistics)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from bench_fixtures import prepared

from benchmarks import cells as cells_module
from benchmarks import preregistration
from benchmarks.catalog import SUITES
from benchmarks.cells import run_cell
from benchmarks.sources import source_backbone
from benchmarks.suites import (
    PIXEL,
    Budget,
    Cell,
    Experiment,
    Hypothesis,
    Precondition,
    Source,
    Suite,
    Target,
    confirmatory,
    control,
    finetune,
    scratch,
)

ENVIRONMENT = {"device": "cpu", "cpu_threads": 1}


def _trained_source_experiments(suite: Suite) -> list[Experiment]:
    return [e for e in suite.experiments if e.source.trained]


@pytest.mark.parametrize("name", ["quick", "quick_replication", "quick_tuning"])
def test_every_confirmatory_seed_pretrains_its_own_source_model(name: str) -> None:
    """Independent units: in the quick suite's stages, no two seeds of an experiment share a source
    model, and the verdicts' unit says so."""
    suite = SUITES[name]
    assert _trained_source_experiments(suite)
    for experiment in _trained_source_experiments(suite):
        sources = [experiment.source_for(seed).seed for seed in experiment.seeds]
        assert len(set(sources)) == len(experiment.seeds) and experiment.independent_sources
        assert experiment.unit == "seed (own source model)"
        assert len({cell.source.seed for cell in suite.cells() if cell.experiment.name == experiment.name}) == len(
            experiment.seeds)


def test_the_stages_use_disjoint_seeds_and_source_models() -> None:
    """Tuning, confirmatory and replication never share a seed or a source model, so the
    confirmatory verdicts are not fitted to the seeds that chose the lrs."""
    stages = [SUITES[n] for n in ("quick_tuning", "quick", "quick_replication")]
    for i, a in enumerate(stages):
        for b in stages[i + 1:]:
            for ea, eb in zip(a.experiments, b.experiments, strict=True):
                assert not set(ea.seeds) & set(eb.seeds)
                if ea.source.trained:
                    assert not {ea.source_for(s).seed for s in ea.seeds} & {eb.source_for(s).seed for s in eb.seeds}


def test_shared_source_models_make_the_source_model_the_unit() -> None:
    """Seeds sharing a suite-pretrained source are not independent: the unit is the source model."""
    standard = SUITES["standard_tuning"].experiment("s2_resnet")
    assert not standard.independent_sources and standard.unit == "source model"
    assert SUITES["quick_tuning"].experiment("q3_lp_ft").unit == "seed (shared ImageNet weights)"


def test_the_confirmatory_stage_runs_every_strategy_at_its_preregistered_lr_only() -> None:
    registration = json.loads((preregistration.path_for(SUITES["quick_tuning"])).read_text())
    quick = SUITES["quick"]
    assert quick.preregistration == registration["version"] == preregistration.version_of(registration)
    lrs = {(r["experiment"], r["target"], r["strategy"]): r["lr"] for r in registration["lrs"]}
    run = {}
    for cell in quick.cells():
        run.setdefault((cell.experiment.name, cell.target.name, cell.strategy.name), set()).add(cell.lr)
    assert run == {key: {lr} for key, lr in lrs.items()}
    assert {e.name: len(e.seeds) for e in quick.experiments} == registration["seeds"]
    seeds: dict[tuple[str, str, str], set[int]] = {}
    for cell in quick.cells():
        seeds.setdefault((cell.experiment.name, cell.target.name, cell.strategy.name), set()).add(cell.seed)
    assert {k: len(v) for k, v in seeds.items()} == {(r["experiment"], r["target"], r["strategy"]): r["seeds"]
                                                     for r in registration["cell_seeds"]}


# --- the round trip on a small constructed tuning run ---------------------------------------------

_SOURCE = Source("pretrain", "animal", (0, 1, 2), train_pool=(200, 230), test_pool=(0, 10), steps=20, batch_size=30,
                 warmup_steps=2)
_TARGET = Target("new", "animal", (5, 6, 7), 5, 5, (200, 300), (0, 10))


def _tuning_suite() -> Suite:
    experiment = Experiment("e", "q", "resnet_tiny", _SOURCE, (_TARGET,),
                            (finetune("a", "full", lr=1e-3), finetune("b", "layer_decay", lr=1e-3, gamma=0.5),
                             scratch(), PIXEL),
                            (0, 1, 2), Budget(steps=4, batch_size=5, eval_every=2, warmup_steps=1)).with_seeds((0, 1, 2))
    return Suite("toy_tuning", "toy", (experiment,),
                 (Hypothesis("H", "toy", "e", "new", "test_accuracy", "b", "a", 0.02, "toy"),))


def _write_tuning_run(suite: Suite, folder: Path, best: dict[str, float]) -> None:
    """A finished tuning run whose validation accuracy peaks at ``best[strategy]``."""
    records = []
    for cell in suite.cells():
        peak = best.get(cell.strategy.name, cell.lr)
        val = 0.9 - abs(cell.lr - peak) / (peak + cell.lr) * 0.5
        records.append({"key": cell.key(ENVIRONMENT), "status": "ok", "config": cell.config(),
                        "val_accuracy": val, "test_accuracy": val - 0.01 * cell.seed, "wall_seconds": 1.0})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_preregistration_round_trip(tmp_path: Path) -> None:
    """The tuning stage writes the lrs that won on validation pooled over its seeds; the
    confirmatory stage reads them and runs fresh seeds at those lrs only; a changed lr changes the
    keys of the cells it touches and of no other."""
    tuning = _tuning_suite()
    _write_tuning_run(tuning, tmp_path / "tuning", {"a": 3e-3, "b": 1e-3, "scratch": 1e-2, "pixel": 1.0})
    registration = preregistration.register(tuning, tmp_path / "tuning")
    assert {r["strategy"]: r["lr"] for r in registration["lrs"]} == {"a": 0.003, "b": 0.001, "scratch": 0.01,
                                                                     "pixel": 1.0}
    a = next(r for r in registration["lrs"] if r["strategy"] == "a")
    assert a["edge"] is True and a["capped"] is False  # 3e-3 is the grid's top: the guards would extend it
    preregistration.write(registration, tmp_path / "toy.json")
    read = json.loads((tmp_path / "toy.json").read_text())
    assert read == registration and read["seeds"]["e"] >= preregistration.MIN_SEEDS

    confirm = confirmatory(tuning, read, "toy", first_seed=100)
    experiment = confirm.experiments[0]
    assert experiment.seeds[0] == 100 and not set(experiment.seeds) & set(tuning.experiments[0].seeds)
    assert {(c.strategy.name, c.lr) for c in confirm.cells()} == {("a", 0.003), ("b", 0.001), ("scratch", 0.01),
                                                                 ("pixel", 1.0)}

    changed = json.loads(json.dumps(read))
    next(r for r in changed["lrs"] if r["strategy"] == "a")["lr"] = 0.001
    other = confirmatory(tuning, changed, "toy", first_seed=100)
    keys = {c.label: c.key(ENVIRONMENT) for c in confirm.cells()}
    other_keys = {c.label.rsplit(" / lr", 1)[0]: c.key(ENVIRONMENT) for c in other.cells()}
    for label, key in keys.items():
        moved = other_keys[label.rsplit(" / lr", 1)[0]] != key
        assert moved == (" / a / " in label)

    rerun = preregistration.compare(read, preregistration.register(tuning, tmp_path / "tuning"))
    assert rerun.same.all()
    assert not preregistration.compare(read, changed).same.all()


def test_seeds_are_sized_to_the_decision() -> None:
    """A large effect needs the minimum; an effect on its boundary is not sized (None)."""
    assert preregistration._seeds_for(0.2, 0.03, 0.03, "superiority", 0.01) == preregistration.MIN_SEEDS
    assert preregistration._seeds_for(0.03, 0.03, 0.03, "superiority", 0.01) is None
    small = preregistration._seeds_for(0.10, 0.06, 0.03, "superiority", 0.01)
    assert small is not None and small > preregistration.MIN_SEEDS


def test_the_sizing_sd_is_the_upper_confidence_limit_of_the_tuning_sd() -> None:
    """Browne (1995): the sd a pilot of k units gives is below the truth about half the time, so the
    rule sizes on its upper 80% limit, which shrinks toward the sd as the pilot grows; without the
    rule the sd is used as it is."""
    rule = preregistration.SizingRule(sd_confidence=0.8)
    factors = [rule.sd_for_sizing(1.0, k) for k in (4, 8, 30, 1000)]
    assert factors == sorted(factors, reverse=True) and factors[0] == pytest.approx(1.728, abs=1e-3)
    assert 1.0 < factors[-1] < 1.03
    assert preregistration.SizingRule().sd_for_sizing(0.5, 4) == 0.5
    # simulated pilots of 4 units: the plug-in sd is below the truth about half the time, the limit 20%
    import numpy as np

    sds = np.random.default_rng(0).normal(0.0, 1.0, size=(20000, 4)).std(1, ddof=1)
    assert 0.5 < np.mean(sds < 1.0) < 0.65
    assert np.mean([rule.sd_for_sizing(float(s), 4) < 1.0 for s in sds]) == pytest.approx(0.2, abs=0.01)


def test_a_gate_is_sized_to_be_decided_the_way_its_margin_points() -> None:
    """A margin far above the required one is decided at the minimum seeds; one near it needs
    more; one on it is never decided (None), in either direction."""
    assert preregistration._gate_seeds_for(0.20, 0.03, 0.05) == preregistration.MIN_SEEDS
    near = preregistration._gate_seeds_for(0.09, 0.06, 0.05)
    assert near is not None and near > preregistration.MIN_SEEDS
    assert preregistration._gate_seeds_for(0.05, 0.03, 0.05) is None
    assert preregistration._gate_seeds_for(-0.20, 0.03, 0.05) == preregistration.MIN_SEEDS  # decided: fails
    assert preregistration._gate_seeds_for(float("nan"), 0.03, 0.05) is None


def test_a_hypothesis_no_seed_count_decides_is_registered_exploratory(tmp_path: Path, monkeypatch) -> None:
    """Futility is decided on the tuning stage alone: a hypothesis whose tuning effect sits on its
    minimum effect is listed as futile, its verdict is exploratory in the confirmatory stage, and the
    registration's version moves with the list; the other hypotheses and the cells are unchanged."""
    tuning = _tuning_suite()
    # "b" beats "a" on test accuracy by exactly 0.02 = H's minimum effect at every seed
    _write_tuning_run(tuning, tmp_path / "tuning", {"a": 3e-3, "b": 1e-3, "scratch": 1e-2, "pixel": 1.0})
    records = [json.loads(line) for line in (tmp_path / "tuning" / "runs.jsonl").read_text().splitlines()]
    for r in records:
        if r["config"]["strategy"]["name"] == "b":
            r["test_accuracy"] += 0.02 + 0.002 * (r["config"]["seed"] - 1)  # mean exactly 0.02
    (tmp_path / "tuning" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setitem(preregistration.SIZING_RULES, "toy", preregistration.SizingRule(0.8, gates=True, futility=True))
    registration = preregistration.register(tuning, tmp_path / "tuning")
    assert registration["futile"] == ["H"]
    assert "registered exploratory (futile)" in registration["rule"]
    sized = {r["hypothesis"]: r for r in registration["sizing"]}
    assert sized["H"]["seeds_needed"] is None and sized["H"]["sizing_sd"] > sized["H"]["sd"]
    assert "gate e/new" in sized  # the gate H reads is sized too
    confirm = confirmatory(tuning, registration, "toy", first_seed=100)
    assert [h.exploratory for h in confirm.hypotheses] == [True]
    plain = confirmatory(tuning, {**registration, "futile": []}, "toy", first_seed=100)
    assert [h.exploratory for h in plain.hypotheses] == [False]
    assert {c.key(ENVIRONMENT) for c in confirm.cells()} == {c.key(ENVIRONMENT) for c in plain.cells()}
    assert preregistration.version_of(registration) != preregistration.version_of({**registration, "futile": []})
    # without the rule (the standard suite's) nothing is futile and the version ignores the key
    monkeypatch.setitem(preregistration.SIZING_RULES, "toy", preregistration.SizingRule())
    old = preregistration.register(tuning, tmp_path / "tuning")
    assert "futile" not in old and "sizing_sd" not in old["sizing"][0]


def _two_hypothesis_suite() -> Suite:
    """The toy tuning suite with a second strategy pair: H reads b vs a, H2 reads c vs a (c with a
    precondition on d), so a need of H raises a and b only."""
    base = _tuning_suite()
    experiment = dataclasses.replace(base.experiments[0], strategies=(
        *base.experiments[0].strategies[:2], finetune("c", "full", lr=1e-3), finetune("d", "full", lr=1e-3),
        *base.experiments[0].strategies[2:]))
    precondition = Precondition("c", "d", "test_accuracy", "toy")
    return dataclasses.replace(base, experiments=(experiment,), hypotheses=(
        *base.hypotheses, Hypothesis("H2", "toy", "e", "new", "test_accuracy", "c", "a", 0.02, "toy",
                                     preconditions=(precondition,))))


def test_a_need_raises_only_the_cells_its_verdict_reads(tmp_path: Path, monkeypatch) -> None:
    """Per-cell sizing: a hypothesis reads both its sides (and its preconditions'), a gate every
    strategy on its target; the registration's ``cell_seeds`` raise those cells alone, the
    confirmatory stage runs each cell on its first registered seeds (all of them still with their
    own source models), and the version moves with the counts."""
    tuning = _two_hypothesis_suite()
    assert preregistration.cells_read(tuning, {"hypothesis": "H"}) == ("e/new/a", "e/new/b")
    assert preregistration.cells_read(tuning, {"hypothesis": "H2"}) == ("e/new/a", "e/new/c", "e/new/d")
    assert preregistration.cells_read(tuning, {"hypothesis": "gate e/new"}) == tuple(
        f"e/new/{s}" for s in ("a", "b", "c", "d", "scratch", "pixel"))
    _write_tuning_run(tuning, tmp_path / "tuning", {"a": 3e-3, "b": 1e-3, "c": 1e-3, "d": 1e-3, "scratch": 1e-2,
                                                    "pixel": 1.0})
    records = [json.loads(line) for line in (tmp_path / "tuning" / "runs.jsonl").read_text().splitlines()]
    for r in records:  # b beats a by 0.04 +- 0.015 (a need above the minimum); c beats d (its precondition holds)
        bump = {"b": 0.04 + 0.015 * (r["config"]["seed"] - 1), "c": 0.2, "d": 0.1}.get(r["config"]["strategy"]["name"])
        r["test_accuracy"] += bump or 0.0
    (tmp_path / "tuning" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rule = preregistration.SizingRule(0.8, gates=True, futility=True, per_cell=True)
    monkeypatch.setitem(preregistration.SIZING_RULES, "toy", rule)
    registration = preregistration.register(tuning, tmp_path / "tuning", budget=1e6)
    need = {r["hypothesis"]: r["seeds_needed"] for r in registration["sizing"]}
    assert need["H"] > preregistration.MIN_SEEDS and need["H2"] == preregistration.MIN_SEEDS
    counts = {r["strategy"]: r["seeds"] for r in registration["cell_seeds"]}
    assert counts["a"] == counts["b"] == need["H"] == registration["seeds"]["e"]
    # H2 reads a as well: the budget left completes its other cells to a's seeds; the gate's are not completed
    assert counts["c"] == counts["d"] == need["H"] and counts["scratch"] == counts["pixel"] == preregistration.MIN_SEEDS
    # every cell costs 1 s a seed here: a budget that pays for the needs alone leaves H2's cells at the minimum
    needs_only = preregistration.register(tuning, tmp_path / "tuning", budget=2 * need["H"] + 4 * preregistration.MIN_SEEDS)
    assert {r["strategy"]: r["seeds"] for r in needs_only["cell_seeds"]} == {
        **counts, "c": preregistration.MIN_SEEDS, "d": preregistration.MIN_SEEDS}
    confirm = confirmatory(tuning, registration, "toy", first_seed=100)
    ran: dict[str, set[int]] = {}
    for cell in confirm.cells():
        ran.setdefault(cell.strategy.name, set()).add(cell.seed)
    assert {s: len(seeds) for s, seeds in ran.items()} == counts
    assert ran["scratch"] == set(range(100, 100 + preregistration.MIN_SEEDS)) < ran["a"]  # the first seeds
    assert len({cell.source.seed for cell in confirm.cells()}) == len(ran["a"])  # one source model a seed
    fewer = {**registration, "cell_seeds": [{**r, "seeds": preregistration.MIN_SEEDS} for r in registration["cell_seeds"]]}
    assert preregistration.version_of(fewer) != registration["version"]
    # a budget that pays for nothing above the minimum leaves every cell there
    tight = preregistration.register(tuning, tmp_path / "tuning", budget=0.0)
    assert {r["seeds"] for r in tight["cell_seeds"]} == {preregistration.MIN_SEEDS}
    assert not any(r["need_met"] for r in tight["sizing"] if r["seeds_needed"] > preregistration.MIN_SEEDS)


def test_a_hypothesis_whose_precondition_fails_is_sized_on_the_precondition(tmp_path: Path, monkeypatch) -> None:
    """Its verdict will read out of scope: the need is the seeds at which an independent run finds
    the precondition failing again (here clearly: the minimum), not the seeds its effect would need."""
    tuning = _two_hypothesis_suite()
    _write_tuning_run(tuning, tmp_path / "tuning", {"a": 3e-3, "b": 1e-3, "c": 1e-3, "d": 1e-3, "scratch": 1e-2,
                                                    "pixel": 1.0})
    records = [json.loads(line) for line in (tmp_path / "tuning" / "runs.jsonl").read_text().splitlines()]
    for r in records:  # d beats c (the precondition fails); c vs a sits on H2's minimum effect
        bump = {"c": 0.02 + 0.01 * (r["config"]["seed"] - 1), "d": 0.3}.get(r["config"]["strategy"]["name"])
        r["test_accuracy"] += bump or 0.0
    (tmp_path / "tuning" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setitem(preregistration.SIZING_RULES, "toy",
                        preregistration.SizingRule(0.8, gates=True, futility=True, per_cell=True))
    sized = {r["hypothesis"]: r for r in preregistration.register(tuning, tmp_path / "tuning")["sizing"]}
    assert sized["H2"]["sized_on"] == "precondition" and sized["H2"]["seeds_needed"] == preregistration.MIN_SEEDS
    assert "sized_on" not in sized["H"]


def test_sizing_levels_and_curves_on_a_constructed_tuning_run(tmp_path: Path) -> None:
    """On a toy: with one of two hypotheses futile, the other is sized at 0.05 / 1, not 0.05 / 2; the
    forgetting curve is kept exactly when a confirmatory hypothesis that is not futile reads it."""
    tuning = _two_hypothesis_suite()
    _write_tuning_run(tuning, tmp_path / "tuning", {"a": 3e-3, "b": 1e-3, "c": 1e-3, "d": 1e-3, "scratch": 1e-2,
                                                    "pixel": 1.0})
    records = [json.loads(line) for line in (tmp_path / "tuning" / "runs.jsonl").read_text().splitlines()]
    for r in records:  # b - a sits on H's minimum effect (futile); c beats a and d by far (H2 decided)
        bump = {"b": 0.02 + 0.002 * (r["config"]["seed"] - 1), "c": 0.2}.get(r["config"]["strategy"]["name"])
        r["test_accuracy"] += bump or 0.0
    (tmp_path / "tuning" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rule = preregistration.SizingRule(0.8, gates=True, futility=True)
    rows = {r["hypothesis"]: r for r in preregistration.sizing(tuning, preregistration._selected(tuning, tmp_path / "tuning"),
                                                                rule)}
    assert rows["H"]["seeds_needed"] is None and rows["H"]["level"] == pytest.approx(0.05 / 2)
    assert rows["H2"]["level"] == pytest.approx(0.05)
    curved = dataclasses.replace(tuning, experiments=(dataclasses.replace(tuning.experiments[0], track_forgetting=True),),
                                 hypotheses=(*tuning.hypotheses, Hypothesis("H3", "toy", "e", "new", "retention_at_match",
                                                                            "c", "a", 0.02, "toy")))
    assert preregistration._curves_read(curved, []) == {"e": True}
    assert preregistration._curves_read(curved, ["H3"]) == {"e": False}
    assert preregistration._curves_read(tuning, []) == {"e": False}  # no curve tracked at all


def test_futile_hypotheses_leave_the_holm_family_they_are_sized_in() -> None:
    """The quick registration sizes its decidable hypotheses at the first Holm step of the family the
    confirmatory stage tests (the futile are exploratory there), not of every registered one."""
    registration = json.loads(preregistration.path_for(SUITES["quick_tuning"]).read_text())
    family = [r for r in registration["sizing"] if not r["hypothesis"].startswith("gate ")
              and r["hypothesis"] not in registration["futile"]]
    assert [r["level"] for r in family] == [pytest.approx(0.05 / len(family), abs=1e-6)] * len(family)
    assert len(family) == sum(not h.exploratory for h in SUITES["quick"].hypotheses)


def test_the_confirmatory_stage_measures_the_forgetting_curve_only_where_a_verdict_reads_it() -> None:
    """The quick suite's forgetting hypotheses are futile (exploratory): its confirmatory cells skip the
    curve (about 40% of a Q2 cell) and keep the end-point retention; the tuning stage keeps the curve
    (its forgetting figures, retention at matched accuracy), and the standard suite, whose forgetting verdicts are
    confirmatory, is unchanged."""
    registration = json.loads(preregistration.path_for(SUITES["quick_tuning"]).read_text())
    assert {"H2e", "H2f"} <= set(registration["futile"]) and registration["track_forgetting"]["q2_ulmfit"] is False
    assert SUITES["quick_tuning"].experiment("q2_ulmfit").track_forgetting
    q2 = SUITES["quick"].experiment("q2_ulmfit")
    assert not q2.track_forgetting and q2.measure_retention
    assert SUITES["standard"].experiment("s2_resnet").track_forgetting
    root = Path(__file__).resolve().parents[1]
    summary = (root / "results" / "quick" / "summary.md").read_text()
    assert "Not measured in this run: H2e, H2f, X2a (the forgetting curve is measured only where" in summary
    runs = pd.read_csv(root / "results" / "quick" / "runs.csv").query("experiment == 'q2_ulmfit' and kind == 'finetune'")
    assert runs.retention_at_match.isna().all() and runs.retention_precise_bn.notna().all()


# --- the controls -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def controls(tmp_path_factory: pytest.TempPathFactory):
    """A tiny suite-pretrained ResNet with Lee et al.'s protocol (source head kept, the tuned block's
    BatchNorm statistics following the target batches) and the two controls."""
    target = Target("contrast", "animal", (0, 1, 2), 5, 5, (800, 1000), (0, 10), shift="contrast")
    experiment = Experiment("c", "q", "resnet_tiny", _SOURCE, (target,),
                            (control("bn_only", "surgical", block="first", train_head=False),
                             control("no_adaptation", "surgical", block="head")),
                            (0,), Budget(steps=4, batch_size=5, eval_every=2, warmup_steps=1), keep_source_head=True,
                            bn="train")
    cache, environment, device = prepared(experiment, tmp_path_factory)
    return experiment, target, cache, environment, device


def _after_training(monkeypatch: pytest.MonkeyPatch, experiment, target, strategy, cache, environment, device):
    """The state of the cell's model when training ends (captured where the cell scores it)."""
    seen = []
    scores = cells_module._scores

    def capture(model, *args, **kwargs):
        seen.append(({k: v.detach().clone() for k, v in model.state_dict().items()},
                     {n for n, p in model.named_parameters() if p.requires_grad}))
        return scores(model, *args, **kwargs)

    monkeypatch.setattr(cells_module, "_scores", capture)
    run_cell(Cell(experiment, target, experiment.strategy(strategy), 0, 0.0), device, cache, environment)
    return seen[0]


def test_the_bn_only_control_changes_only_batchnorm_statistics(controls, monkeypatch: pytest.MonkeyPatch) -> None:
    """lr 0 on the first block: every weight stays bitwise; only running statistics of BatchNorm
    layers move, and only in the first block."""
    experiment, target, cache, environment, device = controls
    source, _ = source_backbone(experiment, True, cache, environment, experiment.source_for(0).seed)
    before = source.state_dict()
    after, tuned = _after_training(monkeypatch, experiment, target, "bn_only", cache, environment, device)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "the control must let the first block's BatchNorm statistics follow the target batches"
    assert all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked") for k in changed)
    parameters = dict(source.named_parameters())
    assert all(torch.equal(after[name], value) for name, value in parameters.items())
    tuned_modules = {name.rsplit(".", 1)[0] for name in tuned}  # the first block's layers: lr 0, requires_grad
    assert tuned_modules and {k.rsplit(".", 1)[0] for k in changed} <= tuned_modules
    assert len(tuned_modules) < len({name.rsplit(".", 1)[0] for name in parameters})


def test_no_adaptation_changes_nothing(controls, monkeypatch: pytest.MonkeyPatch) -> None:
    experiment, target, cache, environment, device = controls
    source, _ = source_backbone(experiment, True, cache, environment, experiment.source_for(0).seed)
    after, _ = _after_training(monkeypatch, experiment, target, "no_adaptation", cache, environment, device)
    assert all(torch.equal(v, after[k]) for k, v in source.state_dict().items())


def test_a_control_is_never_tuned() -> None:
    bn_only = control("bn_only", "surgical", block="first")
    experiment = dataclasses.replace(_tuning_suite().experiments[0], strategies=(bn_only,), lr_factors=(0.5, 2.0))
    assert experiment.grid(bn_only, _TARGET) == (0.0,)


def test_the_committed_preregistration_is_what_the_committed_tuning_run_implies(capsys) -> None:
    """`preregister` on results/quick-tuning selects exactly the committed lrs and seed counts (exit
    code 0), and a missing tuning run is an error (exit code 2)."""
    from benchmarks.__main__ import main

    root = Path(__file__).resolve().parents[1]
    tuning = SUITES["quick_tuning"]
    committed = json.loads(preregistration.path_for(tuning).read_text())
    again = preregistration.register(tuning, root / "results" / "quick-tuning")
    assert again["lrs"] == committed["lrs"] and again["seeds"] == committed["seeds"]
    assert again["version"] == committed["version"]
    assert main(["preregister", "--tuning", str(root / "results" / "quick-tuning")]) == 0
    assert f"same lr selected: {len(committed['lrs'])} of {len(committed['lrs'])}" in capsys.readouterr().out
    assert main(["preregister", "--tuning", str(root / "no-such-run")]) == 2


@pytest.mark.parametrize("bad", [{"cost": "median"}, {"min_seeds": 1}, {"sd_confidence": 1.0}])
def test_a_sizing_rule_rejects_what_it_cannot_apply(bad: dict) -> None:
    with pytest.raises(ValueError, match="SizingRule"):
        preregistration.SizingRule(**bad)
