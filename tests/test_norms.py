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
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.SyncBatchNorm(4), nn.ReLU()),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6),
        nn.BatchNorm1d(6),
        nn.Linear(6, 2),
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


# ---------------------------------------------------------------- issue 27 item 2: nothing of lrgroups on the module
def _scriptable_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def _freeze(model, mechanism):
    """The two mechanisms that freeze norm statistics, on the first conv+BN block of ``model``."""
    if mechanism == "optimizer":
        return lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("[01].*", frozen=True)])
    return freeze_norm_stats(model, "1")


@pytest.mark.parametrize("mechanism", ["optimizer", "freeze_norm_stats"])
def test_torch_jit_script_works_while_norm_statistics_are_frozen(mechanism):
    """wandb#3148, pytorch#53421: torch.jit.script compiles every hook on a module, so hooks of
    lrgroups on the user's norm layers made scripting fail while an optimizer with frozen norms was
    alive. Scripting succeeds, the scripted model computes the eager model's function (eval mode,
    bitwise), and the eager model's frozen statistics stay frozen afterwards."""
    model = _scriptable_net()
    owner = _freeze(model, mechanism)
    model.train()(_x())  # a training forward first: the freeze has acted
    scripted = torch.jit.script(model)
    assert torch.equal(scripted.eval()(_x(seed=3)), model.eval()(_x(seed=3)))
    before = model[1].running_mean.clone()
    model.train()(_x(seed=4))
    assert torch.equal(model[1].running_mean, before) and int(model[1].num_batches_tracked) == 0
    assert int(model[4].num_batches_tracked) == 2 and owner is not None  # the unfrozen block trains as usual


@pytest.mark.parametrize("mechanism", ["optimizer", "freeze_norm_stats"])
def test_a_saved_model_loads_where_lrgroups_cannot_be_imported(tmp_path, mechanism):
    """torch.save(model) while norm statistics are frozen pickles the module and whatever it holds:
    no lrgroups object may be among it, so torch.load(weights_only=False) works in a process where
    lrgroups cannot be imported, and gives the same function (eval mode, bitwise)."""
    import pickle
    import subprocess
    import sys

    model = _scriptable_net()
    owner = _freeze(model, mechanism)
    model.train()(_x())
    assert b"lrgroups" not in pickle.dumps(model)
    torch.save(model, tmp_path / "model.pt")
    torch.save(model.eval()(_x(seed=3)), tmp_path / "expected.pt")
    code = (
        "import sys; sys.modules['lrgroups'] = None\n"
        "import torch\n"
        "model = torch.load('model.pt', weights_only=False)\n"
        "g = torch.Generator().manual_seed(3)\n"
        "x = torch.randn(4, 3, 8, 8, generator=g)\n"
        "assert torch.equal(model.eval()(x), torch.load('expected.pt')), 'another function'\n"
        "assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120)
    assert owner is not None


@pytest.mark.parametrize("how", ["torch.compile", "in_place"])
def test_frozen_statistics_hold_under_torch_compile(how):
    """The freeze acts in a compiled model as in the eager one: in train mode the frozen block's
    statistics stay bitwise, the other block's move as eager ones do, same outputs. Compiling in
    place (``model.compile()``) warns about nothing; ``torch.compile(model)`` warns (once) that global
    module hooks also fire for its wrapper, which lrgroups' hooks ignore."""
    import warnings

    model, reference = _scriptable_net(), _scriptable_net()
    opt = _freeze(model, "optimizer")
    ref_opt = _freeze(reference, "optimizer")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if how == "in_place":
            model.compile(backend="eager")
            compiled = model
        else:
            compiled = torch.compile(model, backend="eager")
        for seed in range(3):
            torch.testing.assert_close(
                compiled.train()(_x(seed=seed)), reference.train()(_x(seed=seed)), atol=0, rtol=0
            )
    messages = [str(w.message) for w in caught]
    assert all("global hooks" in m for m in messages) and (how == "in_place") == (not messages), messages
    assert int(model[1].num_batches_tracked) == 0 and int(model[4].num_batches_tracked) == 3
    assert torch.equal(model[4].running_mean, reference[4].running_mean) and opt is not ref_opt


def _lrgroups_global_hooks():
    hooks = list(nn.modules.module._global_forward_pre_hooks.values())
    hooks += list(nn.modules.module._global_forward_hooks.values())
    return [hook for hook in hooks if isinstance(getattr(hook, "__self__", None), lrgroups.FrozenNormStats)]


def test_global_hooks_go_on_close_and_a_collected_optimizer_never_changes_them_during_a_collection():
    """close() and remove() take lrgroups' global hooks out of torch's dictionaries (modules then take
    torch's hook-free path). A garbage-collected optimizer's freeze stops at once, but its hooks stay
    in torch's dictionaries until the next explicit removal or installation: a collection can run
    while torch.compile traces, and a hook dictionary changing then fails the compilation
    (InternalTorchDynamoError: KeyError on the hook's id)."""
    import gc

    model = _scriptable_net()
    gc.collect()
    freeze_norm_stats(model).remove()  # takes out what collected optimizers of other tests left
    assert _lrgroups_global_hooks() == []
    opt = _freeze(model, "optimizer")
    handle = freeze_norm_stats(model, "4")
    assert len(_lrgroups_global_hooks()) == 4
    handle.remove()
    opt.close()
    assert _lrgroups_global_hooks() == [] and repr(handle).endswith("removed)")
    opt = _freeze(model, "optimizer")
    installed = dict(nn.modules.module._global_forward_pre_hooks)
    del opt
    gc.collect()
    assert dict(nn.modules.module._global_forward_pre_hooks) == installed  # unchanged by the collection
    model.train()(_x())
    assert int(model[1].num_batches_tracked) == 1  # but the freeze has stopped
    freeze_norm_stats(model, "4").remove()  # an explicit removal takes the retired hooks out
    assert _lrgroups_global_hooks() == []


def test_a_forgotten_handle_keeps_no_model_alive():
    """freeze_norm_stats' handle holds its layers weakly: a model dropped without remove() is
    garbage-collected, and the handle then stops acting (a new object reusing the layer's id is not
    frozen)."""
    import gc
    import weakref

    model = _scriptable_net()
    handle = freeze_norm_stats(model)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None and handle.modules == {} and repr(handle).endswith("removed)")
    handle.remove()
    assert _lrgroups_global_hooks() == []
