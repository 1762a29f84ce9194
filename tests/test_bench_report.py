"""benchmarks.report and benchmarks.selection on constructed runs: lr selection on validation,
grid edges and their extension, matched-accuracy interpolation, preconditions and verdicts."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.analysis import (
    MATCH_FRACTION,
    add_derived_metrics,
    convergence,
    crossing,
    selected_table,
    value_at_crossing,
    verdicts,
)
from benchmarks.report import curve_band, replicability
from benchmarks.selection import EXTENSION_CAP, extend, grid_completions, grid_extensions, mark_capped, select_lr
from benchmarks.suites import (
    Budget,
    Experiment,
    Hypothesis,
    Precondition,
    Source,
    Suite,
    Target,
    finetune,
)

_TARGET = Target("t", "animal", (0, 1), 2, 2, (0, 10), (10, 20))
_EXPERIMENT = Experiment("e", "q", "resnet_tiny", Source("imagenet"), (_TARGET,),
                         (finetune("a", "full", lr=3e-3), finetune("b", "full", lr=3e-3)), (0, 1),
                         Budget(steps=20, batch_size=2, eval_every=5, warmup_steps=2))


def _runs(rows):
    frame = pd.DataFrame(rows, columns=["strategy", "seed", "lr", "val_accuracy", "test_accuracy",
                                        "retention_precise_bn"])
    return frame.assign(experiment="e", target="t", kind="finetune", parent=frame.strategy, budget_factor=1,
                        retention_weights_only=frame.retention_precise_bn, source_seed=0, source_accuracy=math.nan)


def _selected(rows, suite=None):
    return mark_capped(suite or Suite("s", "d", (_EXPERIMENT,)), select_lr(_runs(rows)))


def test_curve_bands_stay_inside_the_accuracy_range() -> None:
    """With two seeds the 95% half-width (t at 1 df: 12.7 standard errors) runs far outside [0, 1]: the
    band is clipped to the range, the mean is the plain mean, and a band inside the range is untouched."""
    curves = pd.Series([[0.1, 0.9, 0.50], [0.9, 1.0, 0.50]])
    mean, low, high = curve_band(curves)
    assert mean.tolist() == pytest.approx([0.5, 0.95, 0.5])
    assert low[0] == 0.0 and 0.0 < low[1] < 0.95 and low[2] == 0.5 and high.tolist() == [1.0, 1.0, 0.5]
    mean, low, high = curve_band(pd.Series([[0.5, 0.6], [0.52, 0.6], [0.48, 0.6]]))
    assert 0.4 < low[0] < 0.5 < high[0] < 0.6 and low[1] == high[1] == pytest.approx(0.6)


def test_select_lr_picks_the_best_mean_validation_and_flags_edges() -> None:
    rows = []
    for seed in (0, 1):
        rows += [("a", seed, 1e-3, 0.50, 0.6, 0.9), ("a", seed, 3e-3, 0.70, 0.7, 0.8),
                 ("a", seed, 9e-3, 0.60, 0.8, 0.7),
                 ("b", seed, 1e-3, 0.40, 0.5, 0.95), ("b", seed, 3e-3, 0.40, 0.6, 0.9),
                 ("b", seed, 9e-3, 0.45 + 0.1 * seed, 0.7, 0.85)]
    runs = _selected(rows)
    chosen = runs[runs.selected].groupby("strategy").lr.unique()
    assert chosen["a"].tolist() == [3e-3] and chosen["b"].tolist() == [9e-3]
    edges = runs[runs.selected].groupby("strategy").edge.all()
    assert not edges["a"] and edges["b"]
    assert not runs.capped.any()  # nothing was added beyond the base grid yet
    table = selected_table(runs).set_index("strategy")
    assert table.loc["a", "test_accuracy"] == pytest.approx(0.7) and table.loc["a", "seeds"] == 2


def test_ties_go_to_the_smaller_lr() -> None:
    rows = [("a", s, lr, 0.5, 0.5, 1.0) for s in (0, 1) for lr in (1e-3, 3e-3, 9e-3)]
    runs = _selected(rows)
    assert runs[runs.selected & (runs.strategy == "a")].lr.unique().tolist() == [1e-3]


def test_an_edge_choice_extends_the_grid_one_step_until_the_cap() -> None:
    """A choice at the upper edge asks for the next lr up (the grid's ratio) for every seed; with
    EXTENSION_CAP candidates beyond the base grid the edge is capped and nothing more is asked."""
    suite = Suite("s", "d", (_EXPERIMENT,))
    lrs = [1e-3, 3e-3, 9e-3]
    for round_ in range(EXTENSION_CAP + 1):
        rows = [("a", s, lr, lr, 0.5, 1.0) for s in (0, 1) for lr in lrs]  # validation grows with lr
        rows += [("b", s, lr, 0.5, 0.5, 1.0) for s in (0, 1) for lr in (1e-3, 3e-3, 9e-3)]
        runs = _runs(rows)
        cells = grid_extensions(suite, runs)
        a_cells = [c for c in cells if c.strategy.name == "a"]
        if round_ < EXTENSION_CAP:
            assert {c.lr for c in a_cells} == {extend(lrs, "high")} and {c.seed for c in a_cells} == {0, 1}
            lrs.append(extend(lrs, "high"))
        else:
            assert a_cells == []
            assert mark_capped(suite, select_lr(runs)).query("selected and strategy == 'a'").capped.all()
    assert lrs[-1] == pytest.approx(0.081)
    b_cells = [c for c in cells if c.strategy.name == "b"]
    assert {c.lr for c in b_cells} == {extend((1e-3, 3e-3, 9e-3), "low")}  # a tie goes to the lowest: extend down


def test_every_lr_a_strategy_has_run_is_completed_on_every_seed() -> None:
    """A tuning run given more seeds after its grid was extended compares lrs by means over the same
    seeds: the guards first ask for every lr already run on the seeds that lack it (and nothing once
    every lr has every seed)."""
    suite = Suite("s", "d", (dataclasses.replace(_EXPERIMENT, seeds=(0, 1, 2)),))
    rows = [("a", s, lr, 0.5, 0.5, 1.0) for s in (0, 1, 2) for lr in (1e-3, 3e-3, 9e-3)]
    rows += [("a", s, 2.7e-2, 0.9, 0.5, 1.0) for s in (0, 1)]  # an extension run before seed 2 existed
    rows += [("b", s, lr, 0.5 + lr, 0.5, 1.0) for s in (0, 1, 2) for lr in (1e-3, 3e-3, 9e-3)]
    asked = grid_completions(suite, _runs(rows))
    assert [(c.strategy.name, c.seed, c.lr) for c in asked] == [("a", 2, 2.7e-2)]
    assert asked[0] in grid_extensions(suite, _runs(rows))
    rows.append(("a", 2, 2.7e-2, 0.9, 0.5, 1.0))
    assert grid_completions(suite, _runs(rows)) == []


def test_crossing_interpolates_the_first_passage() -> None:
    steps, values = [0, 5, 10, 15], [0.2, 0.6, 0.5, 0.9]
    assert crossing(steps, values, 0.4) == pytest.approx(2.5)
    assert crossing(steps, values, 0.7) == pytest.approx(10 + 5 * 0.2 / 0.4)
    assert crossing(steps, values, 0.1) == 0
    assert math.isnan(crossing(steps, values, 0.95))
    assert value_at_crossing(steps, values, [1.0, 0.8, 0.7, 0.6], 0.4) == pytest.approx(0.9)


def _tracked(rows):
    """rows: (strategy, seed, test curve, retention curve)."""
    runs = _runs([(s, seed, 3e-3, test[-1], test[-1], ret[-1]) for s, seed, test, ret in rows])
    runs["curve_step"] = runs["curve_forgetting_step"] = [list(range(0, 5 * len(r[2]), 5)) for r in rows]
    runs["curve_test_accuracy"] = [r[2] for r in rows]
    runs["curve_retention_precise_bn"] = [r[3] for r in rows]
    runs["curve_val_accuracy"] = runs.curve_test_accuracy
    runs["ood_accuracy"] = math.nan
    return mark_capped(Suite("s", "d", (_EXPERIMENT,)), select_lr(runs))


def test_matched_accuracy_is_inside_every_strategy_span_and_interpolated_along_each_run() -> None:
    """The level is MATCH_FRACTION of the lowest peak of the strategies' mean test curves, so every
    strategy reaches it; each run's retention is read where its own trajectory first crosses it."""
    rows = [("a", 0, [0.2, 0.6, 0.8], [1.0, 0.9, 0.7]), ("a", 1, [0.2, 0.7, 0.8], [1.0, 0.8, 0.6]),
            ("b", 0, [0.2, 0.4, 0.5], [1.0, 0.98, 0.96]), ("b", 1, [0.2, 0.5, 0.5], [1.0, 0.97, 0.95])]
    runs, levels = add_derived_metrics(_tracked(rows))
    level = MATCH_FRACTION * 0.5  # b's mean curve peaks at 0.5
    assert levels.matched_test_accuracy.tolist() == [pytest.approx(level)]
    got = runs.set_index(["strategy", "seed"]).retention_at_match
    assert got["a", 0] == pytest.approx(np.interp(level, [0.2, 0.6], [1.0, 0.9]))
    assert got["b", 1] == pytest.approx(np.interp(level, [0.2, 0.5], [1.0, 0.97]))
    assert runs.retention_at_match.notna().all()


def test_convergence_threshold_is_shared_by_the_strategies_of_a_target() -> None:
    rows = [("a", 0, [0.2, 0.6, 0.8], [1, 1, 1]), ("a", 1, [0.2, 0.7, 0.8], [1, 1, 1]),
            ("b", 0, [0.2, 0.4, 0.5], [1, 1, 1]), ("b", 1, [0.2, 0.5, 0.6], [1, 1, 1])]
    runs = _tracked(rows).assign(val_auc=0.5, val_at_quarter=0.5)
    table = convergence(runs).set_index("strategy")
    assert table.threshold.nunique() == 1 and table.threshold.iloc[0] == pytest.approx(0.9 * 0.8)
    assert table.loc["a", "reached"] == 1 and table.loc["b", "reached"] == 0


def _verdict_runs(effect_a: float, ood_probe: float):
    rows = []
    for seed in range(6):
        noise = 0.002 * (seed % 3)
        rows += [("a", seed, 3e-3, 0.8, 0.7 + effect_a + noise, 1.0), ("b", seed, 3e-3, 0.8, 0.7, 1.0)]
    runs = _runs(rows)
    runs["ood_accuracy"] = np.where(runs.strategy == "a", 0.5, ood_probe)
    return mark_capped(Suite("s", "d", (_EXPERIMENT,)), select_lr(runs))


def test_verdicts_carry_preconditions_holm_intervals_and_the_power_line() -> None:
    gate = pd.DataFrame([{"experiment": "e", "target": "t", "transfer": "pass", "transfer_ok": True, "source_ok": True}])
    hypotheses = (Hypothesis("H1", "m", "e", "t", "test_accuracy", "a", "b", 0.02, "p", "src"),
                  Hypothesis("H2", "m", "e", "t", "test_accuracy", "a", "b", 0.02, "p", "src",
                             (Precondition("b", "a", "ood_accuracy", "b must be more robust"),)),
                  Hypothesis("X1", "m", "e", "t", "test_accuracy", "a", "b", 0.02, "p", "src", exploratory=True))
    suite = Suite("s", "d", (_EXPERIMENT,), hypotheses)
    table = verdicts(suite, _verdict_runs(0.05, ood_probe=0.4), gate).set_index("hypothesis")
    assert table.loc["H1", "verdict"] == "reproduced"
    assert table.loc["H1", "ci_level"] == pytest.approx(0.05)  # alone in the family (H2 out of scope)
    assert table.loc["H2", "verdict"] == "out of scope" and "FAILS" in table.loc["H2", "preconditions"]
    assert table.loc["X1", "verdict"] == "exploratory" and math.isnan(table.loc["X1", "p_holm"])
    assert table.loc["H1", "mde"] > 0 and table.loc["H1", "seeds_needed"] >= 2
    null = verdicts(suite, _verdict_runs(0.0, ood_probe=0.6), gate).set_index("hypothesis")
    assert null.loc["H1", "verdict"] == "not reproduced" and null.loc["H2", "verdict"] == "not reproduced"
    assert null.loc["H1", "ci_level"] == pytest.approx(0.025)  # both in the family now: Holm levels


def test_hypotheses_whose_cells_did_not_run_are_not_run_not_out_of_scope() -> None:
    """A partial run (``run --experiment``, ``--max-cells``): a hypothesis one of whose sides (or
    preconditions' sides) has no run at all on its target is *not run*: no test, no Holm slot, not
    fragile, and not *out of scope* (its preconditions were never evaluated)."""
    gate = pd.DataFrame([{"experiment": "e", "target": "t", "transfer": "pass", "transfer_ok": True, "source_ok": True}])
    other = dataclasses.replace(_EXPERIMENT, name="f", strategies=_EXPERIMENT.strategies + (finetune("c", "full"),))
    experiment = dataclasses.replace(_EXPERIMENT, strategies=_EXPERIMENT.strategies + (finetune("c", "full"),))
    hypotheses = (Hypothesis("H1", "m", "e", "t", "test_accuracy", "a", "b", 0.02, "p", "src"),
                  Hypothesis("H2", "m", "f", "t", "test_accuracy", "a", "b", 0.02, "p", "src",
                             (Precondition("b", "a", "ood_accuracy", "b must be more robust"),)),
                  Hypothesis("H3", "m", "e", "t", "test_accuracy", "a", "c", 0.02, "p", "src"),
                  Hypothesis("H4", "m", "e", "t", "test_accuracy", "a", "b", 0.02, "p", "src",
                             (Precondition("c", "a", "ood_accuracy", "c must be more robust"),)))
    suite = Suite("s", "d", (experiment, other), hypotheses)
    table = verdicts(suite, _verdict_runs(0.05, ood_probe=0.4), gate).set_index("hypothesis")
    assert table.loc["H1", "verdict"] == "reproduced"
    assert table.loc["H1", "ci_level"] == pytest.approx(0.05)  # alone in the family
    for name in ("H2", "H3", "H4"):
        assert table.loc[name, "verdict"] == "not run", name
        assert table.loc[name, "scope"] == "cells not run" and not table.loc[name, "fragile"]
        assert math.isnan(table.loc[name, "p_holm"]) and math.isnan(table.loc[name, "replication_probability"])
    lines = replicability(table.reset_index()).splitlines()
    assert lines[1].startswith("- **Fragile** (0)") and lines[2] == "- **Not run** (3): H2; H3; H4."


def test_replicate_counts_a_verdict_a_run_has_not_run_apart() -> None:
    """A *not run* verdict (a partial run) is neither agreement nor disagreement: ``compared`` is false,
    while compatible and opposed verdicts are compared as before."""
    import pandas as pd

    from benchmarks.replicate import compare_verdicts

    reference = pd.DataFrame({"hypothesis": ["A", "B", "C"], "verdict": ["reproduced"] * 3, "effect": [0.1] * 3})
    new = reference.assign(verdict=["reproduced", "not run", "contradicted"])
    table = compare_verdicts(reference, new)
    assert table.compared.tolist() == [True, False, True]
    assert table.compatible.tolist() == [True, False, False] and table.opposed.tolist() == [False, False, True]
    missing = compare_verdicts(reference, new[new.hypothesis != "A"])
    assert missing.compared.tolist() == [False, False, True]


def test_grid_completions_keep_each_cell_to_its_registered_seeds() -> None:
    """A confirmatory stage sized per cell runs ``b`` on the first seed only: the guards complete an
    lr on the seeds its cell runs on, not on every seed of the experiment (a trial run asked for 275
    cells the registration never paid for before this held)."""
    experiment = dataclasses.replace(_EXPERIMENT, seeds=(0, 1, 2), cell_seeds=(("t", "b", 1),))
    suite = Suite("s", "d", (experiment,))
    rows = [("a", s, 1e-3, 0.5, 0.5, 1.0) for s in (0, 1, 2)] + [("b", 0, 1e-3, 0.5, 0.5, 1.0)]
    assert grid_completions(suite, _runs(rows)) == []
    rows = rows[1:]  # a's seed 0 missing: asked for; b still only on its one seed
    assert [(c.strategy.name, c.seed) for c in grid_completions(suite, _runs(rows))] == [("a", 0)]
