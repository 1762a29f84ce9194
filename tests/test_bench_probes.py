"""benchmarks.probes: the standardised probe folded into a head, and the probe cache shared by
linear-probe, LP-FT and WiSE-FT cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_fixtures import prepared
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from benchmarks import probes
from benchmarks.cells import run_cell
from benchmarks.suites import LINEAR_PROBE, PROBE_CS, Budget, Cell, Experiment, Source, Target, finetune


def test_the_folded_probe_gives_sklearns_logits_on_standardised_features() -> None:
    """Folding the standardisation into (W, b) changes nothing: raw features through the folded
    head give scikit-learn's decision function on the standardised features."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(3.0, [0.5, 4.0, 1.0, 20.0], size=(60, 4)))
    y = torch.arange(60) % 3
    probe = probes.fit_probe(x, y, C=0.3, num_classes=3)
    scaler = StandardScaler().fit(x.numpy())
    reference = LogisticRegression(C=0.3, max_iter=1000).fit(scaler.transform(x.numpy()), y.numpy())
    logits = x.double() @ probe.weight.double().T + probe.bias.double()
    np.testing.assert_allclose(logits.numpy(), reference.decision_function(scaler.transform(x.numpy())),
                               rtol=1e-4, atol=1e-4)
    assert probes.evaluate(probe, x, y) == pytest.approx(reference.score(scaler.transform(x.numpy()), y.numpy()))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """A suite-pretrained tiny ResNet (30 source steps) with a probe strategy and LP-FT, its
    preparations built into a tmp cache."""
    source = Source("pretrain", "animal", (0, 1, 2), train_pool=(200, 230), test_pool=(0, 10), steps=20,
                    batch_size=30, warmup_steps=2)
    target = Target("new", "animal", (5, 6, 7), 5, 5, (200, 300), (0, 10))
    experiment = Experiment("tiny", "q", "resnet_tiny", source, (target,),
                            (LINEAR_PROBE, finetune("lp_ft", "lp_ft", lr=1e-3, ft_lr_mult=1.0)), (0, 1),
                            Budget(steps=4, batch_size=5, eval_every=2, warmup_steps=1), source_seeds=(0, 1))
    cache, environment, device = prepared(experiment, tmp_path_factory)
    return experiment, target, cache, environment, device


def test_a_cached_probe_equals_an_uncached_one_bitwise(tiny) -> None:
    experiment, target, cache, environment, device = tiny
    for seed in experiment.seeds:
        fresh = probes._fit_all(experiment, target, seed, PROBE_CS, cache, environment, device)
        for C in PROBE_CS:
            cached = probes.probe_for(experiment, target, seed, C, cache, environment, device)
            assert torch.equal(cached.weight, fresh[C].weight) and torch.equal(cached.bias, fresh[C].bias)
            assert (cached.val_accuracy, cached.train_ce) == (fresh[C].val_accuracy, fresh[C].train_ce)


def test_probe_cells_and_lp_ft_share_the_validation_selected_probe(tiny) -> None:
    experiment, target, cache, environment, device = tiny
    C, best = probes.best_probe(experiment, target, 1, cache, environment, device)
    assert C in PROBE_CS and best.val_accuracy == max(
        probes.probe_for(experiment, target, 1, c, cache, environment, device).val_accuracy for c in PROBE_CS)
    probe_record = run_cell(Cell(experiment, target, LINEAR_PROBE, 1, C), device, cache, environment)
    assert probe_record["val_accuracy"] == pytest.approx(best.val_accuracy)
    lp_ft = run_cell(Cell(experiment, target, experiment.strategy("lp_ft"), 1, 1e-3), device, cache, environment)
    assert lp_ft["probe_C"] == C and lp_ft["probe_train_ce"] == best.train_ce
    assert lp_ft["curve"]["val_accuracy"][0] == pytest.approx(best.val_accuracy)  # LP-FT starts at the probe


def test_a_probe_outside_the_cached_grid_is_fitted_by_the_same_code(tiny) -> None:
    experiment, target, cache, environment, device = tiny
    extended = probes.probe_for(experiment, target, 0, 10.0, cache, environment, device)
    again = probes._fit_all(experiment, target, 0, (10.0,), cache, environment, device)[10.0]
    assert torch.equal(extended.weight, again.weight)


def test_source_seeds_give_different_source_models(tiny) -> None:
    experiment, target, cache, environment, device = tiny
    first = probes.probe_model(experiment, 0, 3, cache, environment, device)
    second = probes.probe_model(experiment, 1, 3, cache, environment, device)
    assert experiment.source_for(0).seed == 0 and experiment.source_for(1).seed == 1
    assert not torch.equal(first.conv1[0].weight, second.conv1[0].weight)


def test_probe_config_names_every_source(tiny) -> None:
    experiment = tiny[0]
    assert [s["seed"] for s in probes.probe_config(experiment)["sources"]] == [0, 1]
