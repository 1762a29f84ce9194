"""benchmarks.report on constructed runs: lr selection on validation, grid-edge flags, paired
verdicts with Holm, matched-accuracy forgetting, still-improving flags."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmarks.report import matched_forgetting, select_lr, selected_table
from benchmarks.runner import still_improving


def _runs(rows):
    frame = pd.DataFrame(rows, columns=["strategy", "seed", "lr", "lr_index", "val_accuracy", "test_accuracy",
                                        "retention_precise_bn"])
    return frame.assign(experiment="e", target="t", kind="finetune", parent=frame.strategy, grid_size=3,
                        retention_weights_only=frame.retention_precise_bn)


def test_select_lr_picks_the_best_mean_validation_and_flags_edges() -> None:
    rows = []
    for seed in (0, 1):
        rows += [("a", seed, 1e-3, 0, 0.50, 0.6, 0.9), ("a", seed, 3e-3, 1, 0.70, 0.7, 0.8),
                 ("a", seed, 1e-2, 2, 0.60, 0.8, 0.7),
                 ("b", seed, 1e-3, 0, 0.40, 0.5, 0.95), ("b", seed, 3e-3, 1, 0.40, 0.6, 0.9),
                 ("b", seed, 1e-2, 2, 0.45 + 0.1 * seed, 0.7, 0.85)]
    runs = select_lr(_runs(rows))
    chosen = runs[runs.selected].groupby("strategy").lr.unique()
    assert chosen["a"].tolist() == [3e-3] and chosen["b"].tolist() == [1e-2]
    edges = runs[runs.selected].groupby("strategy").edge.all()
    assert not edges["a"] and edges["b"]
    table = selected_table(runs).set_index("strategy")
    assert table.loc["a", "test_accuracy"] == pytest.approx(0.7) and table.loc["a", "seeds"] == 2


def test_ties_go_to_the_smaller_lr() -> None:
    rows = [("a", s, lr, i, 0.5, 0.5, 1.0) for s in (0, 1) for i, lr in enumerate((1e-3, 3e-3, 1e-2))]
    runs = select_lr(_runs(rows))
    assert runs[runs.selected].lr.unique().tolist() == [1e-3]


def test_matched_forgetting_interpolates_inside_the_common_accuracy_span() -> None:
    rows = [("a", 0, 1e-3, 0, 0, 0.6, 0.9), ("a", 0, 3e-3, 1, 0, 0.8, 0.7), ("a", 0, 1e-2, 2, 0, 0.9, 0.5),
            ("b", 0, 1e-3, 0, 0, 0.5, 0.95), ("b", 0, 3e-3, 1, 0, 0.7, 0.85), ("b", 0, 1e-2, 2, 0, 0.65, 0.8)]
    matched = matched_forgetting(_runs(rows)).set_index("strategy")  # spans 0.6-0.9 and 0.5-0.7: level 0.65
    assert matched.matched_test_accuracy.unique().tolist() == [pytest.approx(0.65)]
    assert matched.loc["a", "retention_precise_bn_at_match"] == pytest.approx(0.85)  # a quarter of 0.6 -> 0.8
    assert matched.loc["b", "retention_precise_bn_at_match"] == pytest.approx(0.8)


def test_matched_forgetting_is_nan_outside_a_strategy_range() -> None:
    rows = [("a", 0, lr, i, 0, acc, 0.9) for i, (lr, acc) in enumerate(((1e-3, 0.8), (3e-3, 0.85), (1e-2, 0.9)))]
    rows += [("b", 0, lr, i, 0, acc, 0.9) for i, (lr, acc) in enumerate(((1e-3, 0.5), (3e-3, 0.6), (1e-2, 0.7)))]
    matched = matched_forgetting(_runs(rows)).set_index("strategy")
    assert math.isnan(matched.loc["a", "retention_precise_bn_at_match"])


def test_still_improving() -> None:
    assert still_improving([0, 15, 30, 45, 60], [0.1, 0.5, 0.6, 0.6, 0.7], 60)
    assert not still_improving([0, 15, 30, 45, 60], [0.1, 0.5, 0.6, 0.69, 0.7], 60)
    assert not still_improving([0, 15, 30, 45, 60], [0.1, 0.5, 0.6, 0.7, 0.6], 60)
