"""lrgroups.rules: rules, selections and the plan (the pure part; the wrapper's use is in test_optimizer)."""

from __future__ import annotations

import pytest
import torch.nn as nn

import lrgroups
from lrgroups.rules import NoMatchError, Selector, no_match_message


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
        "selection ndim=3 matches no parameter (the model has 10 parameters: 0.weight, 1.weight, 2.weight and 7 more)")
    assert str(NoMatchError("plain")) == "plain"  # not KeyError's quoted form


# A Rule pickled when Rule subclassed Selector (commit 226c7fa): Rule('fc.*', ndim=2, lr=0.1,
# options={'momentum': 0.9}, name='x').
_OLD_RULE_PICKLE = bytes.fromhex(
    "80049515010000000000008c0e6c7267726f7570732e72756c6573948c0452756c659493942981947d94288c077061747465726e948c0466"
    "632e2a948c057265676578944e8c0b6d6f64756c655f74797065944e8c046e64696d944b028c056465707468944e8c057768657265944e8c"
    "026c7294473fb999999999999a8c076c725f6d756c74944e8c0c7765696768745f6465636179944e8c0777645f6d756c74944e8c0666726f"
    "7a656e944e8c076f7074696f6e739468008c0e5f46726f7a656e4f7074696f6e739493947d948c086d6f6d656e74756d94473feccccccccc"
    "cccd73859452948c096f7074696d697a6572944e8c046e616d65948c0178948c0b616c6c6f775f656d70747994898c0b6e656564735f6465"
    "707468948975622e"
)


def test_a_rule_holds_its_selector_and_every_old_spelling_works():
    """Selector is a field of Rule (rule.selector), not its base class; the flat spelling, the
    selector's fields and methods through the rule, isinstance(rule, Selector), a rule given where a
    selector is taken, replace(), hashing, the repr and rules pickled before all work as they did."""
    import dataclasses
    import pickle

    import torch

    rule = lrgroups.Rule("fc.*", ndim=2, lr=0.1, options={"momentum": 0.9}, name="x")
    assert Selector not in type(rule).__mro__ and rule.selector == Selector(pattern="fc.*", ndim=2)
    assert (rule.pattern, rule.ndim, rule.regex, rule.criteria()) == ("fc.*", 2, None, "pattern='fc.*', ndim=2")
    assert isinstance(rule, Selector) and hash(rule) == hash(lrgroups.Rule("fc.*", ndim=2, lr=0.1,
                                                                           options={"momentum": 0.9}, name="x"))
    assert rule == lrgroups.Rule(selector=Selector(pattern="fc.*", ndim=2), lr=0.1, options={"momentum": 0.9}, name="x")
    assert repr(lrgroups.Rule("fc.*", lr=1e-3)) == (
        "Rule(pattern='fc.*', regex=None, module_type=None, ndim=None, depth=None, where=None, lr=0.001, "
        "lr_mult=None, weight_decay=None, wd_mult=None, frozen=None, options=None, inner=None, name=None, "
        "allow_empty=False, needs_depth=False)")
    assert dataclasses.replace(rule, lr=0.2).lr == 0.2 and dataclasses.replace(rule, pattern="0.*").pattern == "0.*"
    assert pickle.loads(pickle.dumps(rule)) == rule
    old = pickle.loads(_OLD_RULE_PICKLE)
    assert old == rule and old.selector == rule.selector and old.options == {"momentum": 0.9}
    with pytest.raises(TypeError, match="selector must be a Selector"):
        lrgroups.Rule(selector="fc.*")
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    assert opt.freeze(lrgroups.Rule("1.*", lr=0.5)) == ["1.weight", "1.bias"]
    assert list(opt.select(lrgroups.Rule(ndim=1))) == ["0.bias", "1.bias"]


def test_one_no_match_error_for_a_selection_and_select_missing_empty():
    """Selector.no_match_error is the one message for a selection that matches nothing (a rule's names
    the rule, a schedule's stage names the stage); opt.select(..., missing="empty") returns {} instead."""
    import torch

    names = ["0.weight", "0.bias"]
    assert str(Selector(pattern="0.wieght").no_match_error(names)).startswith(
        "selection pattern='0.wieght' matches no parameter; closest names: 0.weight")
    assert str(lrgroups.Rule("0.wieght", lr=0.1).no_match_error(names)).startswith("rule Rule(pattern='0.wieght'")
    opt = lrgroups.LayerwiseOptimizer(nn.Sequential(nn.Linear(2, 2)), torch.optim.SGD, lr=0.1)
    assert opt.select("x.*", missing="empty") == {} and list(opt.select("0.*", missing="empty")) == names
    with pytest.raises(NoMatchError, match="closest names: 0.weight"):
        opt.select("0.wieght")
    with pytest.raises(ValueError, match="missing must be"):
        opt.select("0.*", missing="ignore")
    with pytest.raises(NoMatchError, match=r"stage 1 \(pattern='9\.\*'\) matches no parameter"):
        lrgroups.ProgressiveUnfreezing(opt, ["0.bias", "9.*"])


def test_inner_names_a_rules_inner_optimizer_and_optimizer_is_its_deprecated_name():
    """Rule(inner=name) routes to an inner optimizer by name; optimizer= (and reading rule.optimizer)
    still work and warn; to_dict writes inner, and from_dict reads the optimizer key old data has."""
    import pickle
    import warnings

    rule = lrgroups.Rule(ndim=2, inner="muon")
    with pytest.deprecated_call(match="Rule.__init__.optimizer is deprecated, use inner"):
        old = lrgroups.Rule(ndim=2, optimizer="muon")
    assert old == rule and hash(old) == hash(rule) and old.inner == "muon"
    with pytest.deprecated_call(match="Rule.optimizer is deprecated, use inner"):
        assert rule.optimizer == "muon"
    with pytest.raises(TypeError, match="give inner= only"):
        lrgroups.Rule(ndim=2, inner="a", optimizer="b")
    assert rule.to_dict() == {"ndim": 2, "inner": "muon"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading old data is not a deprecated call
        assert lrgroups.Rule.from_dict({"ndim": 2, "optimizer": "muon"}) == rule
        assert lrgroups.Rule.from_dict({"kind": "head", "optimizer": "adamw"}).inner == "adamw"
        assert pickle.loads(pickle.dumps(rule)) == rule
    with pytest.raises(ValueError, match="unknown key"):
        lrgroups.Rule.from_dict({"ndim": 2, "inner": "a", "optimizer": "b"})
