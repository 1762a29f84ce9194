"""lrgroups.rules: rules, selections and the plan (the pure part; the wrapper's use is in test_optimizer)."""

from __future__ import annotations

import pytest
import torch.nn as nn

import lrgroups
from lrgroups.rules import NoMatchError, no_match_message


def test_a_module_name_as_a_rule_suggests_its_glob():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(NoMatchError, match=r"did you mean '1\.\*'"):
        lrgroups.plan(model, lr=0.1, rules=[lrgroups.Rule("1", lr=0.2)])


def test_a_rule_matching_nothing_names_the_rule_and_the_closest_names():
    with pytest.raises(ValueError, match=r"rule Rule\(pattern='wieght', lr=0.2\) matches no parameter; closest "
                                         r"names: weight \(the model has 2 parameters"):
        lrgroups.plan(nn.Linear(2, 2), lr=0.1, rules=[lrgroups.Rule("wieght", lr=0.2)])


def test_no_match_message_without_a_probe_lists_a_sample_of_names():
    names = [f"{i}.weight" for i in range(10)]
    assert no_match_message("selection ndim=3", None, names) == (
        "selection ndim=3 matches no parameter (the model has 10 parameters, e.g. 0.weight, 1.weight, 2.weight)")
    assert str(NoMatchError("plain")) == "plain"  # not KeyError's quoted form
