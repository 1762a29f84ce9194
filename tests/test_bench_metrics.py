"""Tests for benchmarks.metrics: each definition checked against hand-computed values."""

from __future__ import annotations

import pytest
import torch

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


def test_retention() -> None:
    """An untouched backbone keeps its accuracy: retention 1."""
    assert metrics.retention(0.83, 0.83) == 1.0
    assert metrics.retention(0.6, 0.8) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        metrics.retention(0.5, 0.0)


def test_accuracy() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.1, 0.2]])
    assert metrics.accuracy(logits, torch.tensor([0, 1, 1, 0])) == 0.5


def test_every_committed_cell_record_follows_the_declared_schema() -> None:
    """runs.jsonl between runner and report is typed: every key of every committed record is declared
    in benchmarks.store.CellRecord, and the runner's keys are in every record."""
    from pathlib import Path

    from benchmarks.store import read_runs, undeclared_keys

    root = Path(__file__).resolve().parents[1] / "results"
    records = [r for path in sorted(root.glob("*/runs.jsonl")) for r in read_runs(path)]
    assert len(records) > 1000  # the committed runs, not an empty glob
    assert sorted({k for r in records for k in undeclared_keys(r)}) == []
    required = ("key", "experiment", "target", "strategy", "seed", "lr", "phase", "config", "status", "test_accuracy")
    assert all(all(k in r for k in required) for r in records)


def test_writing_an_undeclared_measurement_is_refused(tmp_path) -> None:
    import pytest

    from benchmarks.store import read_runs, write_runs

    write_runs(tmp_path / "runs.jsonl", [{"key": "a", "test_accuracy": 0.5, "ood_accuracy_sobel": 0.25}])
    assert read_runs(tmp_path / "runs.jsonl") == [{"key": "a", "ood_accuracy_sobel": 0.25, "test_accuracy": 0.5}]
    with pytest.raises(ValueError, match="not declared in benchmarks.store.CellRecord"):
        write_runs(tmp_path / "runs.jsonl", [{"key": "b", "test_acuracy": 0.5}])


def test_cka_of_constant_features_raises_or_is_nan() -> None:
    """A run that diverged to constant features has no CKA: an error by default, nan for the cell
    records (benchmarks.cells), so the cell keeps its other metrics."""
    import math

    import pytest
    import torch

    from benchmarks.metrics import linear_cka

    x, flat = torch.randn(20, 4), torch.ones(20, 3)
    with pytest.raises(ValueError, match="constant"):
        linear_cka(x, flat)
    assert math.isnan(linear_cka(x, flat, constant="nan"))
    assert linear_cka(x, x, constant="nan") == pytest.approx(1.0)
