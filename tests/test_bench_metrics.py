"""Tests for benchmarks.metrics: each definition checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from benchmarks import metrics


@pytest.fixture
def features() -> torch.Tensor:
    return torch.randn(200, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("n", [200, 8])
def test_cka_of_identical_features_is_one(n: int, features: torch.Tensor) -> None:
    """CKA(X, X) = 1, in both the feature (n >= d) and Gram (n < d) forms."""
    assert metrics.linear_cka(features[:n], features[:n]) == pytest.approx(1.0, abs=1e-12)


def test_cka_invariant_to_isotropic_scaling_and_orthogonal_transforms(features: torch.Tensor) -> None:
    """CKA(X, a X Q) = 1 for a scalar a and an orthogonal Q; and CKA(X, Y) = CKA(a X Q, Y)."""
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    transformed = 3.7 * features @ q
    assert metrics.linear_cka(features, transformed) == pytest.approx(1.0, abs=1e-12)
    other = features[:, :4] ** 2 + torch.randn(200, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert metrics.linear_cka(transformed, other) == pytest.approx(metrics.linear_cka(features, other), abs=1e-12)


def test_cka_not_invariant_to_anisotropic_scaling(features: torch.Tensor) -> None:
    """Stretching one direction changes CKA: it is not invariant to arbitrary invertible maps."""
    stretched = features * torch.tensor([10.0] + [1.0] * 15, dtype=torch.float64)
    assert metrics.linear_cka(features, stretched) < 0.9


def test_cka_of_independent_features_is_near_zero() -> None:
    """Independent random features at large n: CKA ~ d / n, far from 1."""
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(4000, 8, generator=generator), torch.randn(4000, 6, generator=generator)
    assert 0 <= metrics.linear_cka(x, y) < 0.01


def test_cka_hand_computed() -> None:
    """A 3-example case: X = [0, 1, 2], Y = [0, 1, 5] (1-d): CKA = cos^2 of the centred vectors."""
    x, y = torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[0.0], [1.0], [5.0]])
    xc, yc = torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([-2.0, -1.0, 3.0])
    expected = float((xc @ yc) ** 2 / ((xc @ xc) * (yc @ yc)))
    assert metrics.linear_cka(x, y) == pytest.approx(expected)
    assert expected == pytest.approx(25 / 28)


def test_cka_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        metrics.linear_cka(torch.ones(5, 2), torch.randn(5, 2))
    with pytest.raises(ValueError):
        metrics.linear_cka(torch.randn(5, 2), torch.randn(4, 2))


def test_relative_weight_distance() -> None:
    """0 for identical weights; by hand with ||W0|| = ||[3, 4]|| = 5: W = 0 gives 1, W = [3, 7] gives 3 / 5."""
    w0 = torch.tensor([3.0, 4.0])
    assert metrics.relative_weight_distance(w0.clone(), w0) == 0.0
    assert metrics.relative_weight_distance(torch.zeros(2), w0) == pytest.approx(1.0)
    assert metrics.relative_weight_distance(torch.tensor([3.0, 7.0]), w0) == pytest.approx(3 / 5)


def test_per_stage_weight_distance() -> None:
    """Stages pool their parameters' norms; an untouched model is 0 everywhere; None stages are skipped."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 3))
    reference = {name: value.clone() for name, value in model.state_dict().items()}
    stage_of = {"0": "early", "1": "late", "2": None}
    assert metrics.per_stage_weight_distance(model, reference, lambda n: stage_of[n.split(".")[0]]) == {
        "early": 0.0,
        "late": 0.0,
    }
    with torch.no_grad():
        model[1].weight.add_(1.0)
        model[2].weight.add_(100.0)
    distances = metrics.per_stage_weight_distance(model, reference, lambda n: stage_of[n.split(".")[0]])
    late_reference = torch.cat([reference["1.weight"].flatten(), reference["1.bias"]])
    assert distances["early"] == 0.0
    assert distances["late"] == pytest.approx(2.0 / float(late_reference.norm()))
    assert list(distances) == ["early", "late"]


def test_per_stage_weight_distance_rejects_missing_reference() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="bias"):
        metrics.per_stage_weight_distance(model, {"weight": model.weight.detach()}, lambda name: 0)


def test_retention_and_backward_transfer() -> None:
    """An untouched backbone keeps its accuracy: retention 1, backward transfer 0."""
    assert metrics.retention(0.83, 0.83) == 1.0
    assert metrics.backward_transfer(0.83, 0.83) == 0.0
    assert metrics.retention(0.6, 0.8) == pytest.approx(0.75)
    assert metrics.backward_transfer(0.6, 0.8) == pytest.approx(-0.2)
    with pytest.raises(ValueError):
        metrics.retention(0.5, 0.0)


def test_steps_to_fraction() -> None:
    """Best 0.9: 95% of it is 0.855, first reached at step 30; 50% (0.45) at step 10."""
    steps, values = [0, 10, 20, 30, 40, 50], [0.1, 0.5, 0.8, 0.86, 0.9, 0.88]
    assert metrics.steps_to_fraction(steps, values) == 30.0
    assert metrics.steps_to_fraction(steps, values, fraction=0.5) == 10.0
    assert metrics.steps_to_fraction(steps, values, fraction=1.0) == 40.0
    assert metrics.steps_to_fraction([0.5, 1.25, 2.0], [0.2, 0.7, 0.72]) == 1.25


def test_area_under_curve() -> None:
    """Trapezoids over [0, 10] of 0 -> 1 at 5 -> 1: (2.5 + 5) / 10; a constant curve gives itself."""
    assert metrics.area_under_curve([0, 5, 10], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert metrics.area_under_curve([2, 3, 7], [0.4, 0.4, 0.4]) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        metrics.area_under_curve([0, 0], [1.0, 1.0])


def test_mean_ci95_matches_scipy() -> None:
    """Half-width = t_{0.975, n-1} * sample std / sqrt(n), as scipy.stats.t.interval gives."""
    values = [0.81, 0.79, 0.86, 0.84, 0.80]
    mean, half = metrics.mean_ci95(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 5, scale=stats.sem(values))
    assert mean == pytest.approx(0.82)
    assert half == pytest.approx((high - low) / 2)
    assert half == pytest.approx(2.7764451 * stats.tstd(values) / math.sqrt(5), rel=1e-6)
    only_mean, nan = metrics.mean_ci95([0.5])
    assert only_mean == 0.5 and math.isnan(nan)


def test_accuracy_and_agreement() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.1, 0.2]])
    assert metrics.accuracy(logits, torch.tensor([0, 1, 1, 0])) == 0.5
    assert metrics.agreement(logits, logits) == 1.0
    assert metrics.agreement(logits, -logits) == 0.0


def test_pareto_front() -> None:
    """(acc, retention): C and D dominate A and B; E trades accuracy for retention; F equals C."""
    points = [(0.5, 0.5), (0.6, 0.7), (0.8, 0.9), (0.9, 0.6), (0.4, 0.95), (0.8, 0.9), (0.9, 0.5)]
    assert metrics.pareto_front(points) == [2, 3, 4, 5]
    assert metrics.pareto_front([]) == []
