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


def test_a_recipe_plateau_schedule_is_fed_by_observe():
    """A recipe whose schedule advances on a plateau (and no early stopping): observe feeds the
    schedule's plateau (it fed nothing before the drivers were merged, so the schedule never
    advanced) and returns no decision (there is no stopper)."""
    model = _mlp()
    recipe = lrgroups.recipes.Recipe("mine", unfreezing={"plateau": {"mode": "max", "patience": 1}})
    tuning = recipe.build(model, torch.optim.SGD, lr=0.1)
    assert tuning.observe(0.5) is None and tuning.unfreezing.stage == 0
    assert tuning.observe(0.5) is None and tuning.unfreezing.stage == 1


def test_the_driver_imports_no_recipe():
    """lrgroups.driver imports no recipe, at module level or inside a function (the driver <->
    recipes circle is gone), and any object with schedule() and has_plateau is a schedule spec."""
    import ast
    import inspect

    import lrgroups.driver as driver

    tree = ast.parse(inspect.getsource(driver))
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert "optimizer" in imported and not [name for name in imported if "recipes" in name]

    class Factory:
        has_plateau = True

        def schedule(self, optimizer, total_steps=None):
            return lrgroups.ProgressiveUnfreezing(optimizer, plateau={"patience": 1})

    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    assert isinstance(Factory(), lrgroups.driver.ScheduleFactory) and driver.has_plateau(Factory())
    with pytest.raises(ValueError, match="one plateau per metric"):
        driver.check_specs(Factory(), {"patience": 2})
    schedule, stopper = build_controllers(opt, model, Factory(), None)
    assert stopper is None and schedule.plateau.patience == 1


def test_recipe_specs_are_what_build_and_the_lightning_callback_run():
    """Recipe.specs() is the one recipe -> specs mapping: build() and from_recipe() use it."""
    from lrgroups.integrations.lightning import LayerwiseFinetuning

    recipe = lrgroups.recipes.plateau_unfreezing(fallback_fraction=None)
    unfreezing, early_stopping = recipe.specs()
    assert unfreezing is recipe and early_stopping == {"mode": "max", **recipe.early_stopping}
    callback = LayerwiseFinetuning.from_recipe(recipe)
    assert (callback.unfreezing_spec, callback.early_stopping_spec) == recipe.specs()
    tuning = recipe.build(_mlp(), torch.optim.SGD, lr=0.1)
    assert tuning.early_stopping.plateau.mode == "max" and tuning.early_stopping.plateau.patience == (
        recipe.early_stopping["patience"]
    )
    assert lrgroups.recipes.full().specs() == (None, None)


def test_a_plateau_is_built_from_a_dict_in_one_place():
    """Plateau.from_settings turns a configuration's plateau into a Plateau for the driver, recipes and
    ProgressiveUnfreezing alike; an unknown key is named with the closest accepted one."""
    opt = lrgroups.LayerwiseOptimizer(_mlp(), torch.optim.SGD, lr=0.1)
    schedule = lrgroups.ProgressiveUnfreezing(opt, plateau={"mode": "max", "patience": 2})
    assert isinstance(schedule.plateau, lrgroups.Plateau) and schedule.plateau.patience == 2
    plateau = lrgroups.Plateau("max")
    assert lrgroups.Plateau.from_settings(plateau) is plateau
    with pytest.raises(TypeError, match="'patients' \\(did you mean 'patience'\\?\\)"):
        FineTuning.from_specs({"plateau": {"patients": 2}}, None)
    with pytest.raises(TypeError, match="a Plateau or a dict"):
        lrgroups.Plateau.from_settings(3)


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
    tuning.observe(0.3)
    state = tuning.state_dict()
    assert sorted(state) == ["early_stopping", "l2sp", "optimizer", "steps", "unfreezing"] and state["steps"] == 2
    again = lrgroups.recipes.plateau_unfreezing(fallback_fraction=None).build(_mlp(), torch.optim.SGD, lr=0.1)
    again.load_state_dict(state)
    assert again.steps == 2 and again.early_stopping.best == 0.3

    spec = FineTuning.from_specs({"every_steps": 1}, None)
    assert spec.state_dict() == {}
    with pytest.raises(ValueError, match="saved state lacks unfreezing"):
        spec.load_state_dict({"unfreezing": None, "early_stopping": None})


def _fine_tuning_after_epoch(old):
    tuning = lrgroups.recipes.Recipe("epochs", unfreezing={"every_epochs": 1}).build(_mlp(), torch.optim.SGD, lr=0.1)
    unfrozen = getattr(tuning, old)()
    assert unfrozen == ["2.weight", "2.bias"] and tuning.unfreezing.stage == 1


def _fine_tuning_after_validation(old):
    tuning = FineTuning(None, early_stopping=lrgroups.EarlyStopping("min", patience=1))
    assert getattr(tuning, old)(0.5) is False and getattr(tuning, old)(0.6) is True  # a bool, as it returned
    assert getattr(FineTuning(None), old)(0.5) is False  # nothing to feed: no stop


def _early_stopping_step(old):
    stopper, twin = lrgroups.EarlyStopping("min", patience=2), lrgroups.EarlyStopping("min", patience=2)
    values = [1.0, 0.5, 0.6, 0.7]
    assert [getattr(stopper, old)(v) for v in values] == [twin.observe(v) for v in values]
    assert getattr(stopper, old)(0.2, step=9).step == 9


def _plateau_update(old):
    plateau = lrgroups.Plateau("max", patience=1)
    assert [getattr(plateau, old)(v, step) for step, v in enumerate([0.5, 0.6, 0.6])] == [True, True, False]
    assert plateau.best_step == 1 and plateau.is_plateau


def _schedule_reset_patience(old):
    schedule = lrgroups.ProgressiveUnfreezing(lrgroups.LayerwiseOptimizer(_mlp(), torch.optim.SGD, lr=0.1))
    assert getattr(schedule, old) is True
    setattr(schedule, old, False)
    assert schedule.reset_patience_on_advance is False


def _schedule_reset_patience_keyword(old):
    opt = lrgroups.LayerwiseOptimizer(_mlp(), torch.optim.SGD, lr=0.1)
    schedule = lrgroups.ProgressiveUnfreezing(opt, plateau=lrgroups.Plateau(patience=1), **{old: False})
    assert schedule.reset_patience_on_advance is False


def _lightning_early_stopping(old):
    from lrgroups.integrations.lightning import LayerwiseFinetuning

    callback = LayerwiseFinetuning(unfreezing={"every_steps": 1}, early_stopping={"patience": 2})
    model = _mlp()
    callback._driver.build(lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1), model)
    assert getattr(callback, old) is callback.stopper is not None
    assert isinstance(callback.stopper, lrgroups.EarlyStopping)


def _transformers_spec(spec):
    def exercise(old):
        from lrgroups.integrations.transformers import LayerwiseCallback

        callback = LayerwiseCallback(unfreezing={"every_steps": 3}, early_stopping={"patience": 2})
        assert getattr(callback, old) == getattr(callback, spec) == callback.state()["args"][old]
        assert getattr(callback, old) in ({"every_steps": 3}, {"patience": 2})

    return exercise


def _optimizer_keyword(old):
    made = lrgroups.LayerwiseOptimizer(_mlp(), lr=0.1, **{old: torch.optim.SGD})
    assert type(made.inner) is torch.optim.SGD
    with pytest.raises(TypeError, match="give optimizer_cls= only"):
        lrgroups.LayerwiseOptimizer(_mlp(), torch.optim.SGD, lr=0.1, **{old: torch.optim.SGD})


def _rule_keyword(old):
    assert lrgroups.Rule("*", **{old: "x"}).inner == "x"


def _rule_attribute(old):
    assert getattr(lrgroups.Rule("*", inner="x"), old) == "x"


def _recipe_build_keyword(old):
    tuning = lrgroups.recipes.Recipe("plain").build(_mlp(), lr=0.1, **{old: torch.optim.SGD})
    assert type(tuning.optimizer.inner) is torch.optim.SGD
    with pytest.raises(TypeError, match="give optimizer_cls= only"):
        lrgroups.recipes.Recipe("plain").build(_mlp(), torch.optim.SGD, lr=0.1, **{old: torch.optim.SGD})
    with pytest.raises(TypeError, match="needs optimizer_cls"):
        lrgroups.recipes.Recipe("plain").build(_mlp(), lr=0.1)


_EXERCISES = {
    ("lrgroups.recipes.Recipe.build", "optimizer"): _recipe_build_keyword,
    ("lrgroups.optimizer.LayerwiseOptimizer.__init__", "optimizer"): _optimizer_keyword,
    ("lrgroups.rules.Rule.__init__", "optimizer"): _rule_keyword,
    ("lrgroups.rules.Rule", "optimizer"): _rule_attribute,
    ("lrgroups.driver.FineTuning", "after_epoch"): _fine_tuning_after_epoch,
    ("lrgroups.driver.FineTuning", "after_validation"): _fine_tuning_after_validation,
    ("lrgroups.early_stopping.EarlyStopping", "step"): _early_stopping_step,
    ("lrgroups.early_stopping.Plateau", "update"): _plateau_update,
    ("lrgroups.unfreezing.ProgressiveUnfreezing", "reset_patience"): _schedule_reset_patience,
    ("lrgroups.unfreezing.ProgressiveUnfreezing.__init__", "reset_patience"): _schedule_reset_patience_keyword,
    ("lrgroups.integrations.lightning.LayerwiseFinetuning", "early_stopping"): _lightning_early_stopping,
    ("lrgroups.integrations.transformers.LayerwiseCallback", "unfreezing"): _transformers_spec("unfreezing_spec"),
    ("lrgroups.integrations.transformers.LayerwiseCallback", "early_stopping"): _transformers_spec(
        "early_stopping_spec"
    ),
}


@pytest.mark.parametrize("where, old, new", _deprecated.listed())
def test_every_deprecated_name_warns_and_still_works(where, old, new):
    """Each deprecated name (every row, so a new alias without an exercise here fails) warns with
    DeprecationWarning naming its replacement, and does what it did."""
    exercise = _EXERCISES[(where, old)]
    with pytest.deprecated_call(match=f"{where}.{old} is deprecated, use {new}"):
        exercise(old)


def test_every_deprecated_name_is_listed_and_its_replacement_exists():
    """The list cannot drift: every alias on a class of lrgroups is a row of DEPRECATED (the alias
    put it there), every row names a class whose replacement exists, and a keyword rename that is
    not listed is refused."""
    import importlib
    import inspect

    def resolve(where):  # the longest importable module prefix, then attributes
        parts = where.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                found = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for name in parts[cut:]:
                found = getattr(found, name)
            return found
        raise AssertionError(where)

    rows = _deprecated.listed()
    aliases = set()
    for where, old, new in rows:
        owner = resolve(where)
        if (where, old, new) in _deprecated.KEYWORDS:  # a renamed keyword of a constructor or method
            assert {old, new} <= set(inspect.signature(owner).parameters)
        else:
            assert isinstance(owner.__dict__[old], _deprecated.alias)
            assert hasattr(owner, new) or new in inspect.signature(owner).parameters  # a method or an argument kept
    for module_name in {where.rpartition(".")[0] for where, *_ in rows if (where, *_) not in _deprecated.KEYWORDS}:
        for owner in vars(importlib.import_module(module_name)).values():
            if inspect.isclass(owner) and owner.__module__ == module_name:
                aliases |= {(f"{module_name}.{owner.__qualname__}", old, value.new)
                            for old, value in vars(owner).items() if isinstance(value, _deprecated.alias)}
    assert aliases and aliases <= set(rows) and set(_EXERCISES) == {(where, old) for where, old, _ in rows}
    with pytest.raises(RuntimeError, match="KEYWORDS lacks"):
        _deprecated.keyword("lrgroups.Nothing", "old", 1, "new", None, 0)
    with pytest.raises(TypeError, match="give reset_patience_on_advance= only"):
        lrgroups.ProgressiveUnfreezing(lrgroups.LayerwiseOptimizer(_mlp(), torch.optim.SGD, lr=0.1),
                                       reset_patience=False, reset_patience_on_advance=False)


def test_the_project_itself_uses_no_deprecated_name():
    """Driving a recipe, a schedule and a stopper through the new names emits no DeprecationWarning
    from lrgroups."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="lrgroups", category=DeprecationWarning)
        model = _mlp()
        tuning = lrgroups.recipes.plateau_unfreezing(fallback_fraction=None).build(model, torch.optim.SGD, lr=0.1)
        for _ in range(3):
            _step(model, tuning.optimizer)
            tuning.after_step()
            tuning.observe(0.5)
        tuning.end_epoch()
        tuning.state_dict()


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


def test_both_callbacks_name_objects_and_specs_alike():
    """LayerwiseFinetuning and LayerwiseCallback expose the built objects as .schedule / .stopper and
    their configuration as .unfreezing_spec / .early_stopping_spec, as FineTuning does."""
    from lrgroups.integrations.lightning import LayerwiseFinetuning
    from lrgroups.integrations.transformers import LayerwiseCallback

    for make in (LayerwiseFinetuning, LayerwiseCallback):
        callback = make(unfreezing={"every_steps": 2}, early_stopping={"patience": 3})
        assert callback.unfreezing_spec == {"every_steps": 2} and callback.early_stopping_spec == {"patience": 3}
        assert callback.schedule is None and callback.stopper is None  # built when training starts
        model = _mlp()
        callback._driver.build(lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1), model)
        assert isinstance(callback.schedule, lrgroups.ProgressiveUnfreezing) and callback.schedule.every_steps == 2
        assert isinstance(callback.stopper, lrgroups.EarlyStopping) and callback.stopper.plateau.patience == 3
        callback._driver.close()


def test_the_probe_math_lives_in_lrgroups_probe_and_recipes_re_exports_it():
    import warnings

    import lrgroups.probe as probe

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from lrgroups.recipes import fit_linear_probe, head_features, set_linear_head
    assert (fit_linear_probe, head_features, set_linear_head) == (
        probe.fit_linear_probe, probe.head_features, probe.set_linear_head)
    assert all(f.__module__ == "lrgroups.probe" for f in (fit_linear_probe, head_features, set_linear_head))
