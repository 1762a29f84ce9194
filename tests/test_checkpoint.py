"""Checkpoints: resume equivalence across a real process boundary, and clear mismatch errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

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
