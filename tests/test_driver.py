"""The one driver (lrgroups.driver.FineTuning): recipes and both framework callbacks go through it;
one step counter, one plateau per metric; the deprecated aliases (lrgroups._deprecated) warn and work;
a Recipe is a value."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
import torch.nn as nn

import lrgroups
from lrgroups import _deprecated
from lrgroups.driver import FineTuning, build_controllers


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def _step(model, opt):
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    opt.zero_grad()


def test_recipes_and_callbacks_share_one_driver():
    """Recipe.build returns the driver the callbacks use; lrgroups.recipes.FineTuning is it."""
    from lrgroups.integrations.transformers import LayerwiseCallback

    tuning = lrgroups.recipes.gradual_unfreezing().build(_mlp(), torch.optim.SGD, lr=0.1)
    assert type(tuning) is FineTuning is lrgroups.recipes.FineTuning
    assert type(LayerwiseCallback(unfreezing={"every_steps": 1})._driver) is FineTuning


def test_a_recipe_plateau_schedule_is_fed_by_after_validation():
    """A recipe whose schedule advances on a plateau (and no early stopping): after_validation feeds
    the schedule's plateau (it fed nothing before the drivers were merged, so the schedule never
    advanced)."""
    model = _mlp()
    recipe = lrgroups.recipes.Recipe("mine", unfreezing={"plateau": {"mode": "max", "patience": 1}})
    tuning = recipe.build(model, torch.optim.SGD, lr=0.1)
    assert tuning.after_validation(0.5) is False and tuning.unfreezing.stage == 0
    assert tuning.after_validation(0.5) is False and tuning.unfreezing.stage == 1


def test_one_plateau_per_metric_for_recipes_and_callables_too():
    """A schedule with a plateau and a stopper on one metric is refused whatever the spec: a recipe
    (at build) or a callable returning the schedule (when the driver builds it)."""
    recipe = lrgroups.recipes.Recipe("both", unfreezing={"plateau": {"patience": 2}}, early_stopping={"patience": 2})
    with pytest.raises(ValueError, match="one plateau per metric"):
        recipe.build(_mlp(), torch.optim.SGD, lr=0.1)
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)

    def schedule(optimizer):
        return lrgroups.ProgressiveUnfreezing(optimizer, plateau=lrgroups.Plateau(patience=2))

    with pytest.raises(ValueError, match="one plateau per metric"):
        build_controllers(opt, model, schedule, {"patience": 2})


def test_one_step_counter_fed_by_the_step_hook():
    """A driver built from specs counts optimizer steps through a step hook (its steps, the
    schedule's and the stopper's step come from the one counter); close() removes the hook."""
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    tuning = FineTuning.from_specs({"every_steps": 2}, {"mode": "max", "patience": 5})
    tuning.build(opt, model)
    for _ in range(3):
        _step(model, opt)
    assert tuning.steps == 3 == tuning.unfreezing.steps and tuning.unfreezing.stage == 1
    assert tuning.observe(0.5).step == 3
    tuning.close()
    _step(model, opt)
    assert tuning.steps == 3


def test_driver_state_round_trips_in_both_forms():
    """A recipe's driver saves the optimizer, schedule, stopper, steps and L2-SP; a driver from specs
    only the schedule and stopper (the framework saves the optimizer), kept until build."""
    model = _mlp()
    tuning = lrgroups.recipes.plateau_unfreezing(fallback_fraction=None).build(model, torch.optim.SGD, lr=0.1)
    for _ in range(2):
        _step(model, tuning.optimizer)
        tuning.after_step()
    tuning.after_validation(0.3)
    state = tuning.state_dict()
    assert sorted(state) == ["early_stopping", "l2sp", "optimizer", "steps", "unfreezing"] and state["steps"] == 2
    again = lrgroups.recipes.plateau_unfreezing(fallback_fraction=None).build(_mlp(), torch.optim.SGD, lr=0.1)
    again.load_state_dict(state)
    assert again.steps == 2 and again.early_stopping.best == 0.3

    spec = FineTuning.from_specs({"every_steps": 1}, None)
    assert spec.state_dict() == {}
    with pytest.raises(ValueError, match="saved state lacks unfreezing"):
        spec.load_state_dict({"unfreezing": None, "early_stopping": None})


@pytest.mark.parametrize("where, old, new", _deprecated.DEPRECATED)
def test_every_deprecated_alias_warns_and_still_works(where, old, new):
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    if where == "lrgroups.driver.FineTuning":
        tuning = lrgroups.recipes.Recipe("epochs", unfreezing={"every_epochs": 1}).build(model, torch.optim.SGD, lr=0.1)
        with pytest.deprecated_call(match=f"{old} is deprecated, use {new}"):
            unfrozen = getattr(tuning, old)()
        assert unfrozen == ["2.weight", "2.bias"] and tuning.unfreezing.stage == 1
    elif where == "lrgroups.ProgressiveUnfreezing":
        schedule = lrgroups.ProgressiveUnfreezing(opt)
        with pytest.deprecated_call(match=f"{old} is deprecated, use {new}"):
            assert getattr(schedule, old) is True
        with pytest.deprecated_call():
            setattr(schedule, old, False)
        assert schedule.reset_patience_on_advance is False
    elif where in ("lrgroups.LayerwiseOptimizer", "lrgroups.Rule"):  # tests/test_optimizer.py, tests/test_rules.py
        with pytest.deprecated_call(match=f"{old} is deprecated, use {new}"):
            made = lrgroups.LayerwiseOptimizer(model, lr=0.1, **{old: torch.optim.SGD}) if where.endswith(
                "Optimizer") else lrgroups.Rule("*", **{old: "x"})
        assert (made.inner if where.endswith("Rule") else type(made.inner)) in ("x", torch.optim.SGD)
    else:
        with pytest.deprecated_call(match=f"{old} is deprecated, use {new}"):
            schedule = lrgroups.ProgressiveUnfreezing(opt, plateau=lrgroups.Plateau(patience=1), **{old: False})
        assert schedule.reset_patience_on_advance is False
        with pytest.raises(TypeError, match="give reset_patience_on_advance= only"):
            lrgroups.ProgressiveUnfreezing(opt, reset_patience=False, reset_patience_on_advance=False)


def test_deprecated_aliases_live_in_one_place():
    """Every use of lrgroups._deprecated in the package is listed in DEPRECATED."""
    import re
    from pathlib import Path

    uses = []
    for path in Path(lrgroups.__file__).parent.rglob("*.py"):
        uses += re.findall(r"(\w+) = _deprecated\.alias\(\"(\w+)\"\)", path.read_text())
        uses += re.findall(r"_deprecated\.keyword\(\"\w+\", \"(\w+)\"", path.read_text())
    listed = {(old, new) for _, old, new in _deprecated.DEPRECATED} | {old for _, old, _ in _deprecated.DEPRECATED}
    assert uses and all((use in listed) for use in uses)


def test_a_recipe_is_a_value():
    """Recipes hash and compare by value; their settings are read-only (they were dicts that changed
    the recipe in place, and hash(recipe) raised TypeError)."""
    recipe = lrgroups.recipes.plateau_unfreezing()
    assert {recipe: 1}[recipe] == 1 and {lrgroups.recipes.linear_probe(): 1}[lrgroups.recipes.linear_probe()] == 1
    assert hash(lrgroups.recipes.full()) == hash(lrgroups.recipes.full())
    with pytest.raises(TypeError, match="read-only"):
        recipe.early_stopping["patience"] = 5
    nested = lrgroups.recipes.Recipe("n", unfreezing={"plateau": {"patience": 1}, "stages": ["4.*", "2.*"]})
    with pytest.raises(TypeError, match="read-only"):
        nested.unfreezing["plateau"]["patience"] = 3
    assert nested.unfreezing["stages"] == ("4.*", "2.*") and hash(nested)
    changed = dataclasses.replace(recipe, early_stopping={"patience": 5})
    assert changed.early_stopping == {"patience": 5} and changed != recipe
    assert pickle.loads(pickle.dumps(lrgroups.recipes.full())) == lrgroups.recipes.full()
    lrgroups.recipes.Recipe("n", rules=[lrgroups.head(lr=1.0)]).build(_mlp(), torch.optim.SGD, lr=0.1)
