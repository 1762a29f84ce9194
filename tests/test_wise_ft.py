"""wise_ft: weight-space interpolation between pretrained and fine-tuned state dicts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

import lrgroups
from lrgroups import wise_ft


def _pair():
    """A BN model before and after a few training steps (weights and running statistics moved)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    pretrained = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(4, 3, 8, 8)).square().mean().backward()
        opt.step(), opt.zero_grad()
    return model, pretrained, copy.deepcopy(model.state_dict())


_PAIR = _pair()  # read-only, for the property test


def _equal(a, b):
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_alpha_zero_and_one_give_the_endpoints_bitwise():
    model, theta0, theta1 = _pair()
    assert _equal(wise_ft(theta0, theta1, 0.0), theta0)
    assert _equal(wise_ft(theta0, theta1, 1.0), theta1)
    assert int(theta1["1.num_batches_tracked"]) == 3 and not torch.equal(theta0["3.weight"], theta1["3.weight"])


@given(st.floats(0.0, 1.0))
def test_interpolation_is_lerp_and_lies_between_the_endpoints(alpha):
    """Every floating entry is (1-alpha)*theta0 + alpha*theta1 (to float rounding) and lies between
    the two endpoints elementwise; integer buffers come from the nearer endpoint; nothing is shared
    with the inputs."""
    model, theta0, theta1 = _PAIR
    merged = wise_ft(theta0, theta1, alpha)
    for name, value in merged.items():
        if value.is_floating_point():
            assert torch.allclose(value, (1 - alpha) * theta0[name] + alpha * theta1[name], atol=1e-6)
            low, high = torch.minimum(theta0[name], theta1[name]), torch.maximum(theta0[name], theta1[name])
            assert ((value >= low - 1e-6) & (value <= high + 1e-6)).all()
        else:
            assert torch.equal(value, (theta1 if alpha >= 0.5 else theta0)[name])
        assert value.data_ptr() not in (theta0[name].data_ptr(), theta1[name].data_ptr())


def test_per_layer_alpha_by_name():
    model, theta0, theta1 = _pair()
    merged = wise_ft(theta0, theta1, lambda name: 1.0 if name.startswith("3.") else 0.0)
    assert torch.equal(merged["3.weight"], theta1["3.weight"]) and torch.equal(merged["0.weight"], theta0["0.weight"])
    assert torch.equal(merged["1.running_var"], theta0["1.running_var"])


def test_a_new_head_is_an_error_unless_the_finetuned_entries_are_kept():
    model, theta0, theta1 = _pair()
    theta0 = {**theta0, "3.weight": torch.zeros(10, 4 * 6 * 6), "3.bias": torch.zeros(10), "old.w": torch.zeros(1)}
    with pytest.raises(ValueError, match="shapes differ: 3.weight, 3.bias; only in pretrained: old.w"):
        wise_ft(theta0, theta1, 0.5)
    merged = wise_ft(theta0, theta1, 0.5, unmatched="finetuned")
    assert list(merged) == list(theta1) and torch.equal(merged["3.weight"], theta1["3.weight"])
    model.load_state_dict(merged)
    del theta0["3.bias"]
    with pytest.raises(ValueError, match="only in finetuned: 3.bias"):
        wise_ft(theta0, theta1, 0.5)


def test_bad_alpha_and_options_fail_clearly():
    model, theta0, theta1 = _pair()
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5 for '0.weight'"):
        wise_ft(theta0, theta1, 1.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        wise_ft(theta0, theta1, lambda name: float("nan"))
    with pytest.raises(ValueError, match="unmatched must be one of"):
        wise_ft(theta0, theta1, 0.5, unmatched="pretrained")
    with pytest.raises(ValueError, match="torch.int64 in pretrained, torch.float32"):
        wise_ft({**theta0, "3.bias": theta0["3.bias"].long()}, theta1, 0.5)


def test_interpolated_model_with_statistics_re_estimated():
    """The documented path for BN models: load the interpolation, then precise_bn on data."""
    model, theta0, theta1 = _pair()
    model.load_state_dict(wise_ft(theta0, theta1, 0.5))
    weights = copy.deepcopy(model[0].weight)
    lrgroups.precise_bn(model, [torch.randn(4, 3, 8, 8) for _ in range(2)])
    assert int(model[1].num_batches_tracked) == 2 and torch.equal(model[0].weight, weights)


def test_entries_that_are_not_tensors_come_from_the_nearer_end_point():
    """A module's extra state (get_extra_state: any object), ints and strings are not interpolated:
    each is a copy of the end point alpha is nearer to, as integer buffers are."""
    import torch

    from lrgroups import wise_ft

    theta0 = {"w": torch.zeros(2), "extra": {"step": 1, "tag": "a"}, "n": 3}
    theta1 = {"w": torch.ones(2), "extra": {"step": 9, "tag": "b"}, "n": 7}
    assert wise_ft(theta0, theta1, alpha=0.25)["extra"] == {"step": 1, "tag": "a"}
    merged = wise_ft(theta0, theta1, alpha=0.5)
    assert merged["extra"] == {"step": 9, "tag": "b"} and merged["n"] == 7 and merged["extra"] is not theta1["extra"]
    assert torch.equal(merged["w"], torch.full((2,), 0.5))
