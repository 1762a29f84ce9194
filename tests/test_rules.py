"""lrgroups.rules: rules, selections and the plan (the pure part; the wrapper's use is in test_optimizer):
composition, layer decay (gamma, depth, single-depth models, equivalence with timm), reserved options."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from strategies import module_trees

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
@given(module_trees(), st.sampled_from([0.3, 0.5, 0.9, 1.0]))
def test_layer_decay_lr_non_decreasing_with_depth(tree, gamma):
    """Under layer decay, lr is a non-decreasing function of depth, equals base * gamma ** (max -
    depth), and the top depth (the head) gets the base lr."""
    depths = lrgroups.param_depths(tree)
    if max(depths.values()) == 0:
        with pytest.raises(ValueError, match="has no effect"):
            lrgroups.plan(tree, lr=1e-3, rules=[lrgroups.layer_decay(gamma)])
        return
    rows = lrgroups.plan(tree, lr=1e-3, rules=[lrgroups.layer_decay(gamma)])
    top = max(row.depth for row in rows)
    ordered = sorted(rows, key=lambda row: row.depth)
    assert all(a.lr <= b.lr for a, b in zip(ordered, ordered[1:], strict=False))  # strict=False: consecutive rows
    assert all(row.lr == 1e-3 for row in rows if row.depth == top)
    assert all(row.lr == pytest.approx(1e-3 * gamma ** (top - row.depth), rel=1e-12) for row in rows)


def _one_model_per_timm_family() -> dict[str, str]:
    """The first model name of each module timm registers models in (its public registry API)."""
    families = {module: timm.list_models(module=module) for module in timm.list_modules()}
    return {module: names[0] for module, names in families.items() if names}


TIMM_ALL_FAMILIES = _one_model_per_timm_family()


def test_the_timm_families_cover_the_common_architectures_with_group_matcher():
    """The every-family check below is not vacuous for the architectures users fine-tune most: each is
    one of its families and is checked against timm's grouping (it defines group_matcher)."""
    common = {"vision_transformer", "resnet", "convnext", "efficientnet", "swin_transformer"}
    assert common <= set(TIMM_ALL_FAMILIES)
    for family in common:
        with torch.device("meta"):
            assert hasattr(timm.create_model(TIMM_ALL_FAMILIES[family], pretrained=False), "group_matcher"), family


@pytest.mark.parametrize("family", sorted(TIMM_ALL_FAMILIES))
def test_layer_decay_matches_timm_on_every_family(family):
    """Every architecture family timm registers that defines group_matcher: layer_decay(gamma) and
    no_weight_decay() equal timm's param_groups_layer_decay per parameter (models built on the meta
    device, so this costs no memory). Families without group_matcher use lrgroups' generic
    structural depth instead of timm's fallback (12 parameters per group, by name order)."""
    from timm.optim import param_groups_layer_decay

    with torch.device("meta"):
        model = timm.create_model(TIMM_ALL_FAMILIES[family], pretrained=False)
    if not hasattr(model, "group_matcher"):
        assert max(lrgroups.param_depths(model).values()) > 0
        return
    expected = {}
    no_wd = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    for group in param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=no_wd, layer_decay=0.8):
        for param in group["params"]:
            expected[id(param)] = (group["lr_scale"], group["weight_decay"])
    rows = lrgroups.plan(model, lr=1.0, weight_decay=0.05, rules=[lrgroups.layer_decay(0.8), lrgroups.no_weight_decay()])
    params = dict(model.named_parameters())
    for row in rows:
        scale, decay = expected[id(params[row.name])]
        assert (row.lr, row.weight_decay) == (pytest.approx(scale, rel=1e-12), decay), row.name


def test_rule_composition_override_and_multiply():
    """Later rules override earlier ones attribute by attribute; multipliers compose."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    rows = lrgroups.plan(
        model, lr=1.0, weight_decay=0.1,
        rules=[
            lrgroups.Rule("0.*", lr_mult=0.5),
            lrgroups.Rule("*.bias", lr_mult=0.5, weight_decay=0.0),
            lrgroups.Rule("1.weight", lr=3.0, wd_mult=2.0),
        ],
    )
    settings = {row.name: (row.lr, row.weight_decay, row.rules) for row in rows}
    assert settings["0.weight"][:2] == (0.5, 0.1)
    assert settings["0.bias"][:2] == (0.25, 0.0)
    assert settings["1.bias"][:2] == (0.5, 0.0)
    assert settings["1.weight"][:2] == (3.0, 0.2)
    assert len(settings["0.bias"][2]) == 2


@pytest.mark.parametrize("gamma", [0.0, -0.5, 1.5, float("nan")])
def test_gamma_outside_unit_interval_raises(gamma):
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\]"):
        lrgroups.layer_decay(gamma)


def test_layer_decay_on_single_depth_model_raises():
    """timm's fallback is silent for models whose parameters share one depth; ours is an error."""
    with pytest.raises(ValueError, match="has no effect"):
        lrgroups.LayerwiseOptimizer(nn.Linear(3, 3), torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])


def test_layer_decay_between_on_single_depth_model_raises_clearly():
    with pytest.raises(ValueError, match="has no effect"):
        lrgroups.plan(nn.Linear(3, 3), lr=0.1, rules=[lrgroups.layer_decay_between(1e-5, 1e-3)])


def test_options_may_not_set_lr_weight_decay_or_params():
    with pytest.raises(ValueError, match="use the rule's lr=/weight_decay= fields"):
        lrgroups.Rule("x", options={"lr": 0.1})
    with pytest.raises(TypeError, match="mapping"):
        lrgroups.Rule("x", options=[("eps", 1e-6)])
