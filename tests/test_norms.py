"""freeze_norm_stats and precise_bn: BatchNorm statistics frozen while training, re-estimated on data."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

import lrgroups
from lrgroups.norms import batch_norms, freeze_norm_stats, precise_bn


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.SyncBatchNorm(4), nn.ReLU()),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2),
    )


def _buffers(model):
    return {k: v.clone() for k, v in model.named_buffers()}


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _x(n=4, seed=1):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_batch_norms_finds_every_batchnorm_subclass_and_filters_by_glob_or_predicate():
    model = _net()
    assert list(batch_norms(model)) == ["1", "3.1", "6"]
    assert isinstance(batch_norms(model)["3.1"], nn.SyncBatchNorm)
    assert list(batch_norms(model, "3.*")) == ["3.1"]
    assert list(batch_norms(model, lambda name, m: isinstance(m, nn.BatchNorm1d))) == ["6"]


def test_frozen_stats_stay_bitwise_while_affine_weights_train():
    """In train mode with an optimizer stepping every parameter, the running statistics of every
    BatchNorm (num_batches_tracked included) do not move, while the BN weights and biases do."""
    model = _net().train()
    before, params = _buffers(model), _params(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with freeze_norm_stats(model) as handle:
        for _ in range(3):
            model(_x()).square().mean().backward()
            opt.step()
            opt.zero_grad()
        assert model.training and all(m.training for m in handle.modules.values())
    assert _same(before, _buffers(model))
    assert not torch.equal(params["1.weight"], model[1].weight) and not torch.equal(params["6.bias"], model[6].bias)


def test_frozen_stats_normalise_with_running_statistics_as_in_eval_mode():
    model = _net()
    expected = copy.deepcopy(model).eval()(_x())
    with freeze_norm_stats(model):
        got = model.train()(_x())
    # dropout-free model: train mode with frozen BN computes the eval-mode function
    assert torch.equal(got, expected)


def test_remove_restores_normal_statistics_updates():
    model = _net().train()
    handle = freeze_norm_stats(model)
    handle.remove()
    model(_x())
    assert int(model[1].num_batches_tracked) == 1
    assert "removed" in repr(handle)


def test_selector_freezes_only_the_matching_layers():
    model = _net().train()
    with freeze_norm_stats(model, "3.*"):
        model(_x())
    assert int(model[3][1].num_batches_tracked) == 0
    assert int(model[1].num_batches_tracked) == 1 and int(model[6].num_batches_tracked) == 1


def test_freeze_norm_stats_puts_training_back_when_forward_raises():
    model = nn.Sequential(nn.BatchNorm1d(3)).train()
    with freeze_norm_stats(model):
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 5))
        assert model[0].training


def test_bad_selectors_fail_clearly():
    with pytest.raises(ValueError, match="no BatchNorm layer .* matches selector 'head.*'.*are 1, 3.1, 6"):
        freeze_norm_stats(_net(), "head.*")
    with pytest.raises(ValueError, match="has no BatchNorm layer"):
        freeze_norm_stats(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    with pytest.raises(TypeError, match="glob string or a callable"):
        freeze_norm_stats(_net(), 3)


def _batches(k=5, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4 + i, 3, 8, 8, generator=g) * 2 + 1 for i in range(k)]


def test_precise_bn_equals_torch_swa_update_bn_and_leaves_weights_bitwise():
    """The cumulative average is torch's own estimator (swa_utils.update_bn): equal buffers,
    bitwise-unchanged parameters, and every module's mode restored."""
    model = _net().eval()
    model[3].train()  # a mixed mode must come back as it was
    modes = [m.training for m in model.modules()]
    reference = copy.deepcopy(model)
    params = _params(model)
    assert precise_bn(model, _batches()) == 5
    torch.optim.swa_utils.update_bn(_batches(), reference)
    assert _same(_buffers(reference), _buffers(model))
    assert _same(params, _params(model))
    assert [m.training for m in model.modules()] == modes and modes.count(True) == 4
    assert model[1].momentum == 0.1


def test_precise_bn_is_the_plain_mean_of_batch_statistics():
    model = nn.Sequential(nn.BatchNorm1d(3))
    data = [torch.randn(n, 3) * 3 + 2 for n in (4, 9, 6)]
    precise_bn(model, [(x, None) for x in data])
    assert torch.allclose(model[0].running_mean, torch.stack([x.mean(0) for x in data]).mean(0))
    assert torch.allclose(model[0].running_var, torch.stack([x.var(0) for x in data]).mean(0))
    assert int(model[0].num_batches_tracked) == 3


def test_precise_bn_reestimates_layers_kept_in_eval_mode_by_frozen_norm_handling():
    """A layer kept in eval mode by freeze_norm_stats, or by LayerwiseOptimizer because all its
    affine parameters are frozen, is still re-estimated; both keep working afterwards."""
    model = _net()
    reference = copy.deepcopy(model)  # without the hooks
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("1.*", frozen=True)])
    with freeze_norm_stats(model, "6"):
        precise_bn(model, _batches())
        torch.optim.swa_utils.update_bn(_batches(), reference)
        assert _same(_buffers(reference), _buffers(model))
        before = _buffers(model)
        model.train()(_x())
        after = _buffers(model)
    assert torch.equal(before["1.running_mean"], after["1.running_mean"])  # optimizer's frozen norm
    assert torch.equal(before["6.running_mean"], after["6.running_mean"])  # freeze_norm_stats
    assert not torch.equal(before["3.1.running_mean"], after["3.1.running_mean"])
    del opt


def test_precise_bn_with_momentum_continues_from_current_statistics():
    model = nn.Sequential(nn.BatchNorm1d(2))
    model[0].running_mean.fill_(10.0)
    x = torch.tensor([[0.0, 2.0], [2.0, 4.0]])
    precise_bn(model, [x], momentum=0.5)
    assert model[0].running_mean.tolist() == [5.5, 6.5]
    assert model[0].momentum == 0.1


def test_precise_bn_max_batches_and_selector():
    model = _net()
    before = _buffers(model)
    assert precise_bn(model, iter(_batches()), max_batches=2, selector="6") == 2
    after = _buffers(model)
    assert int(model[6].num_batches_tracked) == 2
    assert torch.equal(before["1.running_mean"], after["1.running_mean"])


@given(st.integers(0, 3))
def test_failed_estimation_leaves_statistics_unchanged(fail_at):
    """Whatever batch raises (or when there is none), buffers and modes are as before the call."""
    model = _net()
    model[1].running_mean.fill_(3.0)
    before = _buffers(model)
    data = _batches(fail_at) + [torch.randn(2, 5)]  # the bad batch raises inside the model
    with pytest.raises(RuntimeError):
        precise_bn(model, data)
    assert _same(before, _buffers(model)) and model.training
    with pytest.raises(ValueError, match="batches is empty"):
        precise_bn(model, [])
    assert _same(before, _buffers(model))


def test_precise_bn_bad_arguments():
    with pytest.raises(ValueError, match="momentum"):
        precise_bn(_net(), _batches(), momentum=0.0)
    with pytest.raises(ValueError, match="max_batches"):
        precise_bn(_net(), _batches(), max_batches=0)
    with pytest.raises(ValueError, match="tracks running statistics"):
        precise_bn(nn.Sequential(nn.BatchNorm1d(2, track_running_stats=False)), [torch.randn(3, 2)])


def _frozen_bn_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("1.*", frozen=True)])
    return model, opt


def test_a_frozen_norm_keeps_its_mode_after_a_forward_that_raises():
    """The optimizer's frozen-norm hook puts ``training`` back also when the forward raises (as
    freeze_norm_stats' hook does): one behaviour for both mechanisms."""
    model, opt = _frozen_bn_model()
    model.train()
    with pytest.raises(RuntimeError):
        model(torch.randn(5, 7))  # wrong width: the first Linear raises before the norm...
    with pytest.raises(RuntimeError):
        model[1:](torch.randn(5, 3))  # ...and the norm itself raises here (3 features, 4 expected)
    assert model[1].training


@pytest.mark.parametrize("mechanism", ["optimizer", "freeze_norm_stats"])
def test_an_explicit_re_estimation_wins_over_frozen_statistics(mechanism):
    """torch.optim.swa_utils.update_bn (and Lightning's StochasticWeightAveraging) re-estimate the
    statistics of a norm whose statistics are frozen, as they do without lrgroups and as
    lrgroups.precise_bn does: mean and batch count are those of the data, not the reset values."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    if mechanism == "optimizer":  # kept: the freeze lasts as long as its owner
        owner = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("1.*", frozen=True)])
    else:
        owner = lrgroups.freeze_norm_stats(model)
    data = [torch.randn(8, 3) + 2 for _ in range(3)]
    reference = copy.deepcopy(model)
    torch.optim.swa_utils.update_bn(data, model)
    plain = nn.Sequential(*[copy.deepcopy(m) for m in reference])  # no hooks: what update_bn gives without lrgroups
    torch.optim.swa_utils.update_bn(data, plain)
    assert int(model[1].num_batches_tracked) == 3
    assert torch.allclose(model[1].running_mean, plain[1].running_mean)
    model.train()(data[0])  # the freeze holds again afterwards
    assert torch.allclose(model[1].running_mean, plain[1].running_mean) and owner is not None
