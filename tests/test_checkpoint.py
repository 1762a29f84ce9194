"""Checkpoints: resume equivalence across a real process boundary, and clear mismatch errors."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from strategies import module_trees, rule_lists

import lrgroups

WORKER = Path(__file__).with_name("resume_worker.py")


def _worker(tmp_path, *args):
    subprocess.run([sys.executable, str(WORKER), *map(str, args)], check=True, cwd=tmp_path)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("straight")
    _worker(directory, 20, 20, "-", "straight.pt")
    return torch.load(directory / "straight.pt", weights_only=True)


@pytest.mark.parametrize("stop_at", [7, 11])
def test_resume_in_fresh_process_is_bitwise_identical(tmp_path, straight_run, stop_at):
    """Save at a step (mid warm-up, or with a keep_state-frozen layer), load into a fresh model and
    wrapper in a fresh process, continue: parameters, optimizer state and lrs are bitwise the same as
    a run that never stopped."""
    _worker(tmp_path, 20, stop_at, "-", "first.pt")
    _worker(tmp_path, 20, 20, "first.pt", "resumed.pt")
    straight = straight_run
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    a, b = straight["optimizer"], resumed["optimizer"]
    assert a["lrgroups"]["frozen"] == b["lrgroups"]["frozen"] and a["lrgroups"]["names"] == b["lrgroups"]["names"]
    assert [g["lr"] for g in a["param_groups"]] == [g["lr"] for g in b["param_groups"]]
    assert [g["param_names"] for g in a["param_groups"]] == [g["param_names"] for g in b["param_groups"]]
    for key, state in a["state"].items():
        for field, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][key][field]))
    assert straight["unfreezing"] == resumed["unfreezing"]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def test_checkpoint_from_other_rules_fails_listing_differences_and_loads_nothing():
    model = _model()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-2, rules=[lrgroups.layer_decay(0.5)])
    opt.freeze("0.*")
    state = opt.state_dict()
    other = lrgroups.LayerwiseOptimizer(_model(), torch.optim.AdamW, lr=1e-2, rules=[lrgroups.layer_decay(0.9)])
    with pytest.raises(lrgroups.CheckpointMismatchError, match=r"0.weight: rules give \{'optimizer': None, 'lr': 0.0081"):
        other.load_state_dict(state)
    assert not any(other.is_frozen(name) for name in ("0.weight", "0.bias"))


def test_checkpoint_from_other_model_lists_missing_and_unexpected_names():
    opt = lrgroups.LayerwiseOptimizer(_model(), torch.optim.SGD, lr=0.1)
    bigger = nn.Sequential(*_model(), nn.Linear(2, 2))
    other = lrgroups.LayerwiseOptimizer(bigger, torch.optim.SGD, lr=0.1)
    with pytest.raises(lrgroups.CheckpointMismatchError) as error:
        other.load_state_dict(opt.state_dict())
    assert "missing from the checkpoint: 5.weight, 5.bias" in str(error.value)


def test_not_an_optimizer_state_dict_is_rejected():
    opt = lrgroups.LayerwiseOptimizer(_model(), torch.optim.SGD, lr=0.1)
    with pytest.raises(lrgroups.CheckpointMismatchError, match="not an optimizer state dict"):
        opt.load_state_dict({"model": {}})
    state = opt.state_dict()
    state["lrgroups"] = dict(state["lrgroups"], format="lrgroups.LayerwiseOptimizer/1")
    with pytest.raises(lrgroups.CheckpointMismatchError, match="not a LayerwiseOptimizer checkpoint"):
        opt.load_state_dict(state)


def _head_model(classes):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, classes))


def _steps(model, opt, steps=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        model(torch.randn(5, 4, generator=generator)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def _snapshot(opt):
    state = opt.state_dict()
    return state["lrgroups"]["frozen"], [dict(g) for g in state["param_groups"]], {
        k: {f: v.clone() if isinstance(v, torch.Tensor) else v for f, v in s.items()} for k, s in state["state"].items()
    }


def _same(a, b):
    (frozen_a, groups_a, state_a), (frozen_b, groups_b, state_b) = a, b
    assert frozen_a == frozen_b and groups_a == groups_b and state_a.keys() == state_b.keys()
    for key in state_a:
        for field in state_a[key]:
            assert torch.equal(torch.as_tensor(state_a[key][field]), torch.as_tensor(state_b[key][field]))


def test_state_tensor_of_another_shape_fails_naming_parameter_and_shapes_and_changes_nothing():
    """A 10-class head's checkpoint does not load into the same model with a 3-class head:
    CheckpointMismatchError names the parameter and both shapes; the optimizer is unchanged."""
    ten = _head_model(10)
    opt = lrgroups.LayerwiseOptimizer(ten, torch.optim.AdamW, lr=1e-2, rules=[lrgroups.Rule("0.*", frozen=True)])
    _steps(ten, opt)
    three = _head_model(3)
    other = lrgroups.LayerwiseOptimizer(three, torch.optim.AdamW, lr=1e-2, rules=[lrgroups.Rule("0.*", frozen=True)])
    _steps(three, other)
    before = _snapshot(other)
    with pytest.raises(lrgroups.CheckpointMismatchError, match=r"2.weight: state 'exp_avg' has shape \(10, 8\), the parameter \(3, 8\)"):
        other.load_state_dict(opt.state_dict())
    _same(before, _snapshot(other))


def test_kept_aside_state_is_cast_on_load_as_torch_casts_state():
    """State kept aside by freeze(keep_state=True) follows torch's load policy: moved to the
    parameter's dtype (and device); ``step`` stays as saved for a non-fused group."""
    model = _head_model(3)
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-2)
    _steps(model, opt)
    opt.freeze("2.*", keep_state=True)
    state = opt.state_dict()
    double = _head_model(3).double()
    loaded = lrgroups.LayerwiseOptimizer(double, torch.optim.AdamW, lr=1e-2)
    loaded.load_state_dict(state)
    loaded.unfreeze("2.*")
    moments = loaded.state[double[2].weight]
    assert moments["exp_avg"].dtype == torch.float64 and moments["exp_avg_sq"].dtype == torch.float64
    assert moments["step"].dtype == state["lrgroups"]["kept"]["2.weight"]["step"].dtype
    trainable = loaded.state[double[0].weight]
    assert trainable["exp_avg"].dtype == torch.float64  # torch's own cast, for comparison


def test_a_load_that_fails_half_way_leaves_nothing_applied():
    """When torch's load (here a load post-hook) raises after the frozen set was applied, the frozen
    set, requires_grad, param groups and state are back as they were."""
    model = _head_model(3)
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-2)
    _steps(model, opt)
    opt.freeze("0.*")
    state = opt.state_dict()
    opt.unfreeze("0.*")
    _steps(model, opt, seed=1)
    before = _snapshot(opt)

    def fail(optimizer):
        raise RuntimeError("post-hook failed")

    opt.register_load_state_dict_post_hook(fail)
    with pytest.raises(RuntimeError, match="post-hook failed"):
        opt.load_state_dict(state)
    _same(before, _snapshot(opt))
    assert model[0].weight.requires_grad and not opt.is_frozen("0.weight")
    _steps(model, opt, steps=1)


def test_bare_torch_optimizer_checkpoint_loads_by_position_and_name():
    """A run started with AdamW(model.parameters()) continues under the wrapper bitwise: its
    per-parameter state moves onto the wrapper's layout (by position, or by param_names); state of
    a parameter the wrapper keeps frozen is kept aside and comes back on unfreeze."""
    model, reference = _head_model(3), _head_model(3)
    bare = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    _steps(reference, bare)
    model.load_state_dict(reference.state_dict())
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-2)
    opt.load_state_dict(copy.deepcopy(bare.state_dict()))  # torch's load shares tensors it need not cast
    _steps(model, opt, seed=1)
    _steps(reference, bare, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters(), strict=True))

    named = torch.optim.AdamW(list(reference.named_parameters()), lr=1e-2)
    _steps(reference, named)
    frozen_model = _head_model(3)
    frozen = lrgroups.LayerwiseOptimizer(frozen_model, torch.optim.AdamW, lr=1e-2, rules=[lrgroups.Rule("0.*", frozen=True)])
    frozen.load_state_dict(copy.deepcopy(named.state_dict()))
    assert frozen.is_frozen("0.weight") and frozen_model[0].weight not in frozen.state
    frozen.unfreeze("0.*")
    assert torch.equal(frozen.state[frozen_model[0].weight]["exp_avg"], named.state[reference[0].weight]["exp_avg"])

    with pytest.raises(lrgroups.CheckpointMismatchError, match="hold 2 parameters without names"):
        opt.load_state_dict(torch.optim.AdamW(reference[2].parameters()).state_dict())


def test_torch_distributed_checkpoint_round_trip_with_frozen_parameters_and_an_empty_group(tmp_path):
    """get_optimizer_state_dict / set_optimizer_state_dict (gloo, CPU) round-trip bitwise with a
    frozen layer whose group is empty: DCP drops that group's hyperparameters on load (a torch
    bug that also hits bare optimizers); the wrapper keeps its own, so the next step works. torch's
    loader takes at most one empty group: with two it raises its own ValueError, and inside
    lrgroups.distributed.dcp_layout the round trip works (tests/test_distributed.py: FSDP2, flattened)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    def build():
        model = _head_model(2)
        return model, lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, rules=[lrgroups.Rule("0.*", lr=1e-4, frozen=True)])

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model, opt = build()
        _steps(model, opt)
        saved = copy.deepcopy(get_optimizer_state_dict(model, opt))
        assert saved["param_groups"][0]["params"] == [] and "2.weight" in saved["state"]
        fresh, loaded = build()
        fresh.load_state_dict(model.state_dict())
        set_optimizer_state_dict(fresh, loaded, saved)
        two_frozen = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        layered = lrgroups.LayerwiseOptimizer(two_frozen, torch.optim.AdamW, lr=1e-3, rules=[
            lrgroups.layer_decay(0.5), lrgroups.Rule("[01].*", frozen=True)])
        with pytest.raises(ValueError, match="exactly one param group with zero parameters"):
            set_optimizer_state_dict(two_frozen, layered, get_optimizer_state_dict(two_frozen, layered))
        with lrgroups.distributed.dcp_layout(layered):  # where every group lists its frozen parameters too
            set_optimizer_state_dict(two_frozen, layered, get_optimizer_state_dict(two_frozen, layered))
        assert [len(group["params"]) for group in layered.param_groups] == [0, 0, 2]
    finally:
        dist.destroy_process_group()
    _same(_snapshot(opt), _snapshot(loaded))
    _steps(model, opt, seed=1)
    _steps(fresh, loaded, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True))


@given(st.data())
def test_state_dict_round_trip_property(data):
    """For any model tree, rule list, training steps and frozen subset (with owners and kept-aside
    state): saving, torch.load(weights_only=True) and loading into a fresh wrapper over an equal
    model reproduces the state dict exactly (layout, frozen owners, kept state, per-parameter state),
    and the next step is bitwise the same in both."""
    import io

    tree, rules = _tree_and_rules(data)
    twin = copy.deepcopy(tree)
    opt = lrgroups.LayerwiseOptimizer(tree, torch.optim.AdamW, lr=1e-2, weight_decay=0.1, rules=rules)
    fresh = lrgroups.LayerwiseOptimizer(twin, torch.optim.AdamW, lr=1e-2, weight_decay=0.1, rules=rules)
    names = [row.name for row in opt.plan]
    for step in range(2):
        _set_grads(tree, step)
        opt.step()
    chosen = data.draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
    for name in chosen:
        opt.freeze(name, keep_state=data.draw(st.booleans()), owner=data.draw(st.sampled_from(["user", "schedule"])))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin.load_state_dict(tree.state_dict())
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    _assert_same(opt.state_dict(), fresh.state_dict())
    _set_grads(tree, 9)
    _set_grads(twin, 9)
    opt.step()
    fresh.step()
    assert all(torch.equal(a, b) for a, b in zip(tree.parameters(), twin.parameters(), strict=True))


def _set_grads(model, step):
    generator = torch.Generator().manual_seed(step)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=generator) if param.requires_grad else None


def _tree_and_rules(data):
    tree = data.draw(module_trees())
    max_depth = max(lrgroups.param_depths(tree).values())
    return tree, data.draw(rule_lists(max_depth))


def _assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("saved_rules, new_rules, message", [
    ([lrgroups.Rule("0.*", frozen=True)], [], "frozen at build in the checkpoint (its rules or the model), trainable "
                                              "under these rules: 0.weight, 0.bias"),
    ([], [lrgroups.Rule("0.*", frozen=True)], "frozen at build by these rules (or the model), trainable in the "
                                              "checkpoint: 0.weight, 0.bias"),
])
def test_a_checkpoint_does_not_override_changed_frozen_rules(saved_rules, new_rules, message):
    """detectron2#898 (resume with FREEZE_AT changed): what the rules froze at build must match the
    checkpoint's; a changed frozen rule is a mismatch, as a changed lr is, and nothing is loaded. A
    schedule's later freezes and unfreezes are not rule changes: such a checkpoint loads."""
    saved = lrgroups.LayerwiseOptimizer(_model(), torch.optim.AdamW, lr=1e-2, rules=saved_rules)
    other = lrgroups.LayerwiseOptimizer(_model(), torch.optim.AdamW, lr=1e-2, rules=new_rules)
    frozen_before = [other.is_frozen(n) for n in ("0.weight", "2.weight")]
    with pytest.raises(lrgroups.CheckpointMismatchError) as error:
        other.load_state_dict(saved.state_dict())
    assert message in str(error.value)
    assert [other.is_frozen(n) for n in ("0.weight", "2.weight")] == frozen_before
    saved.unfreeze() if saved_rules else saved.freeze("2.*", owner="schedule")
    same = lrgroups.LayerwiseOptimizer(_model(), torch.optim.AdamW, lr=1e-2, rules=saved_rules)
    same.load_state_dict(saved.state_dict())
    assert same.is_frozen("2.weight") == (not saved_rules) and not same.is_frozen("0.weight")


def test_a_mismatch_names_the_first_differences_and_counts_the_rest():
    wide = nn.Sequential(*[nn.Linear(3, 3) for _ in range(12)])
    opt = lrgroups.LayerwiseOptimizer(wide, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])
    other = lrgroups.LayerwiseOptimizer(copy.deepcopy(wide), torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.9)])
    with pytest.raises(lrgroups.CheckpointMismatchError) as error:
        other.load_state_dict(opt.state_dict())
    lines = str(error.value).splitlines()
    assert len(lines) <= 8 and "... and 17 more parameters whose settings differ" in str(error.value)


# The "lrgroups" key this model, these rules and this history wrote before the checkpoint format code
# moved from optimizer.py into lrgroups.checkpoint (captured from commit 226c7fa): the format is unchanged.
_LAYOUT_BEFORE_THE_SPLIT = {
    "format": "lrgroups.LayerwiseOptimizer/2",
    "names": ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"],
    "settings": [{"optimizer": None, "lr": lr, "weight_decay": wd, "options": {}}
                 for lr, wd in [(0.0005, 0.01), (0.0005, 0.0), (0.0005, 0.01), (0.0005, 0.0), (0.001, 0.01), (0.001, 0.0)]],
    "groups": [0, 1, 0, 1, 2, 3],
    "frozen": {"0.weight": "user", "1.weight": "rule", "1.bias": "rule"},
    "planned_frozen": ["1.weight", "1.bias"],
    "stepped": True,
}


def _layout_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, rules=[
        lrgroups.layer_decay(0.5), lrgroups.Rule("*.bias", weight_decay=0.0), lrgroups.Rule("1.*", frozen=True)])
    return model, opt


def test_checkpoint_format_is_the_one_written_before_the_split():
    """state_dict()["lrgroups"] is exactly what the optimizer wrote before its checkpoint code moved
    to lrgroups.checkpoint (the inner optimizer's default weight decay recorded where no rule set one),
    and such a checkpoint loads."""
    model, opt = _layout_model()
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    opt.freeze("0.weight", keep_state=True)
    saved = opt.state_dict()
    assert {k: v for k, v in saved["lrgroups"].items() if k != "kept"} == _LAYOUT_BEFORE_THE_SPLIT
    assert sorted(saved["lrgroups"]["kept"]) == ["0.weight"]
    assert opt.explain().weight_decay.tolist() == [0.01, 0.0, 0.01, 0.0, 0.01, 0.0]
    _, fresh = _layout_model()
    fresh.load_state_dict(copy.deepcopy(saved))
    assert fresh.frozen_by("0.weight") == "user"
    assert fresh.state_dict()["lrgroups"]["settings"] == _LAYOUT_BEFORE_THE_SPLIT["settings"]


def test_translate_is_a_pure_function_of_the_layout():
    """lrgroups.checkpoint.translate reads a checkpoint onto an optimizer's slots without changing
    the optimizer, and names every difference when it does not fit."""
    from lrgroups import checkpoint

    model, opt = _layout_model()
    saved = opt.state_dict()
    before = copy.deepcopy(opt.state_dict())
    per_parameter = {slot.row.name for slot in opt._slots}
    frozen, kept, torch_part = checkpoint.translate(saved, opt._slots, opt._settings, opt.param_groups, per_parameter)
    assert frozen == {"1.weight": "rule", "1.bias": "rule"} and kept == {}
    assert [g["param_names"] for g in torch_part["param_groups"]] == [["0.weight"], ["0.bias"], ["3.weight"], ["3.bias"]]
    assert opt.state_dict()["lrgroups"] == before["lrgroups"]
    other = dict(saved, lrgroups=dict(saved["lrgroups"], names=["x"] + saved["lrgroups"]["names"][1:]))
    with pytest.raises(lrgroups.CheckpointMismatchError, match="missing from the checkpoint: 0.weight"):
        checkpoint.translate(other, opt._slots, opt._settings, opt.param_groups, per_parameter)
