"""Rules as data: every rule that holds no function round-trips through plain dicts, JSON, YAML and
TOML to an equal rule that plans the same settings; unknown keys and kinds are refused by name."""

import json

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

import lrgroups
from lrgroups.rules import RULE_KINDS, Rule, rules_from_data, rules_to_data
from tests.strategies import module_trees, rule_lists

FORMATS = ["json", "yaml", "toml"]

numbers = st.sampled_from([0.0, 1e-5, 1e-3, 0.05, 0.5, 2.0, 3])
optional = lambda strategy: st.none() | strategy  # noqa: E731


@st.composite
def data_rules(draw) -> Rule:
    """A random rule of data fields only (no function): every selector criterion and setting."""
    depth = draw(optional(st.integers(0, 5) | st.tuples(optional(st.integers(0, 3)), optional(st.integers(3, 6)))))
    options = draw(optional(st.dictionaries(st.sampled_from(["momentum", "betas", "eps", "nesterov"]),
                                            numbers | st.tuples(numbers, numbers) | st.booleans(), max_size=3)))
    return Rule(
        pattern=draw(optional(st.sampled_from(["*.bias", "fc.*", "layer[12].*"]))),
        regex=draw(optional(st.sampled_from([r"\.0\.", r"weight$"]))),
        module_type=draw(optional(st.sampled_from([nn.Linear, nn.BatchNorm2d, (nn.Linear, nn.Conv2d)]))),
        ndim=draw(optional(st.integers(1, 4) | st.tuples(st.integers(1, 2), st.integers(3, 4)))),
        depth=depth,
        lr=draw(optional(numbers)),
        lr_mult=draw(optional(numbers)),
        weight_decay=draw(optional(numbers)),
        wd_mult=draw(optional(numbers)),
        frozen=draw(optional(st.booleans())),
        options=options,
        inner=draw(optional(st.sampled_from(["adamw", "muon"]))),
        name=draw(optional(st.text("abc_ -", min_size=1, max_size=8))),
        allow_empty=draw(st.booleans()),
        needs_depth=draw(st.booleans()),
    )


@given(rule=data_rules(), format=st.sampled_from([None, *FORMATS]))
def test_a_data_rule_round_trips_to_an_equal_rule(rule, format):
    """from_dict(to_dict(r)) == r, and through each text format too (TOML, JSON, YAML)."""
    text = rules_to_data([rule], format)
    back = rules_from_data(text, format)
    assert back == [rule]
    assert hash(back[0]) == hash(rule)
    assert Rule.from_dict(rule.to_dict()) == rule
    json.dumps(rule.to_dict())  # plain data: JSON takes it as it is


@pytest.mark.filterwarnings("ignore::lrgroups.depth.DepthWarning")  # random trees cannot run
@given(model=module_trees(), data=st.data(), format=st.sampled_from([None, *FORMATS]))
def test_the_rules_read_back_plan_the_same_settings(model, data, format):
    """The random rule lists of the planning tests (built-ins among them: layer_decay, head, ...)
    round-trip and give every parameter the same lr, weight decay and frozen flag."""
    max_depth = max(lrgroups.param_depths(model).values())
    rules = data.draw(rule_lists(max_depth))
    back = rules_from_data(rules_to_data(rules, format), format)
    assert back == rules
    before = lrgroups.plan(model, lr=1e-3, weight_decay=0.05, rules=rules)
    after = lrgroups.plan(model, lr=1e-3, weight_decay=0.05, rules=back)
    assert [(r.name, r.lr, r.weight_decay, r.frozen) for r in before] == [(r.name, r.lr, r.weight_decay, r.frozen) for r in after]


def test_every_named_kind_round_trips():
    made = [lrgroups.layer_decay(0.75, pattern="blocks.*"), lrgroups.layer_decay_between(1e-5, 1e-3),
            lrgroups.no_weight_decay(), lrgroups.head(lr=1e-3, weight_decay=0.0)]
    assert {rule.to_dict()["kind"] for rule in made} == set(RULE_KINDS)
    for rule in made:
        assert Rule.from_dict(rule.to_dict()) == rule
    assert lrgroups.layer_decay(0.75) != lrgroups.layer_decay(0.5)


def test_the_optimizer_takes_rules_as_dicts_from_a_config_file(tmp_path):
    """A TOML file's [[rules]] tables go to LayerwiseOptimizer as they are (the plan coerces dicts),
    with the same groups as the rules written in Python."""
    path = tmp_path / "finetune.toml"
    path.write_text(
        '[[rules]]\nkind = "layer_decay"\ngamma = 0.5\n\n'
        '[[rules]]\nkind = "no_weight_decay"\n\n'
        '[[rules]]\nmodule_type = "torch.nn.Linear"\ndepth = {max = 0}\nfrozen = true\n'
    )
    import tomllib

    config = tomllib.loads(path.read_text())
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    from_file = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=0.05, rules=config["rules"])
    table = from_file.explain()[["name", "lr", "weight_decay", "frozen"]]
    from_file.close()
    in_python = lrgroups.LayerwiseOptimizer(
        model, torch.optim.AdamW, lr=1e-3, weight_decay=0.05,
        rules=[lrgroups.layer_decay(0.5), lrgroups.no_weight_decay(), Rule(module_type=nn.Linear, depth=(None, 0), frozen=True)],
    )
    assert table.equals(in_python.explain()[["name", "lr", "weight_decay", "frozen"]])
    assert table.set_index("name").loc["0.weight", "frozen"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"pattern": "fc.*", "lr_multt": 2.0}, r"unknown key\(s\) 'lr_multt' \(did you mean 'lr_mult'\?\)"),
        ({"kind": "layer_decay", "gama": 0.5}, r"unknown key\(s\) 'gama' \(did you mean 'gamma'\?\)"),
        ({"kind": "layer_dekay", "gamma": 0.5}, "unknown rule kind 'layer_dekay'; known: rule, head, layer_decay"),
        ({"module_type": "torch.nn.NotAModule"}, "names no nn.Module subclass"),
        ({"module_type": "collections.OrderedDict"}, "names no nn.Module subclass"),
        ({"depth": {"min": 1, "maximum": 3}}, r"unknown key\(s\) 'maximum'"),
    ],
)
def test_bad_data_is_refused_by_name(data, message):
    with pytest.raises(ValueError, match=message):
        Rule.from_dict(data)


def test_errors_name_the_rule_position_and_functions_are_not_data():
    with pytest.raises(ValueError, match="rule 1: .*unknown key"):
        rules_from_data([{"pattern": "*"}, {"patern": "*"}])
    with pytest.raises(TypeError, match="where is a function, which is not data"):
        Rule(where=lambda info: True, lr=1.0).to_dict()
    with pytest.raises(TypeError, match="a rule as data is a mapping"):
        Rule.from_dict(["pattern", "*"])
    with pytest.raises(ValueError, match="format must be"):
        rules_to_data([], "ini")


# ---------------------------------------------------------------- recipes as data
from lrgroups import recipes  # noqa: E402

NAMED_RECIPES = [
    recipes.full(), recipes.linear_probe(), recipes.lp_ft(0.1, C=2.0), recipes.l2_sp(0.2, 0.02, anchor="0.*"),
    recipes.layer_decay(0.6), recipes.discriminative(0.05), recipes.layer_decay_between(0.02),
    recipes.gradual_unfreezing(discriminative_gamma=1 / 2.6), recipes.gradual_unfreezing(unfreeze_fraction=0.5),
    recipes.plateau_unfreezing(patience=3), recipes.surgical("first", train_head=False), recipes.lora_plus(8.0),
]


@pytest.mark.parametrize("recipe", NAMED_RECIPES, ids=lambda r: r.name)
@pytest.mark.parametrize("format", [None, *FORMATS])
def test_a_named_recipe_round_trips(recipe, format):
    data = recipe.to_dict()
    text = data if format is None else {"json": json.dumps, "yaml": __import__("yaml").safe_dump,
                                       "toml": __import__("tomli_w").dumps}[format](data)
    loaded = text if format is None else {"json": json.loads, "yaml": __import__("yaml").safe_load,
                                          "toml": __import__("tomllib").loads}[format](text)
    assert recipes.Recipe.from_dict(loaded) == recipe


def test_a_recipe_of_data_fields_round_trips_and_builds_the_same_plan():
    recipe = recipes.Recipe(
        "mine", rules=(lrgroups.layer_decay(0.5), Rule(module_type=nn.Linear, ndim=1, weight_decay=0.0)),
        unfreezing={"stages": [lrgroups.Selector(depth=1), "0.*"], "every_steps": 2}, early_stopping={"patience": 2},
        description="the head, then the first layer after 2 steps",
    )
    back = recipes.Recipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert back == recipe
    built = []
    for r in (recipe, back):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        built.append(r.build(model, torch.optim.SGD, lr=0.1, weight_decay=0.01))
    assert built[0].optimizer.explain().equals(built[1].optimizer.explain())
    for tuning in built:
        tuning.close()


@pytest.mark.parametrize(
    ("data", "message"),
    [({"recipe": "layer_decy"}, "unknown recipe 'layer_decy'"),
     ({"recipe": "layer_decay", "gama": 0.5}, r"'gama' \(did you mean 'gamma'\?\)"),
     ({"rules": []}, "needs its own 'name'"),
     ({"name": "x", "unfreezing": {"stages": [{"dept": 1}]}}, r"'dept' \(did you mean 'depth'\?\)")],
)
def test_bad_recipe_data_is_refused_by_name(data, message):
    with pytest.raises(ValueError, match=message):
        recipes.Recipe.from_dict(data)


def test_lightning_cli_passes_rules_from_a_yaml_config(tmp_path):
    """Lightning's CLI (jsonargparse) reads rules as a list of mappings from a YAML config into the
    LightningModule's arguments; LayerwiseOptimizer takes them as they are."""
    from lightning.pytorch.cli import LightningCLI

    from tests.lightning_modules import RulesFromConfig

    config = tmp_path / "config.yaml"
    config.write_text(
        "model:\n  rules:\n    - {kind: layer_decay, gamma: 0.5}\n    - {pattern: '2.*', lr: 0.05}\n"
        "trainer:\n  logger: false\n  enable_checkpointing: false\n  enable_progress_bar: false\n"
    )
    cli = LightningCLI(RulesFromConfig, run=False, args=["--config", str(config)], save_config_callback=None)
    opt = cli.model.configure_optimizers()
    lrs = opt.explain().set_index("name")["lr"]
    assert lrs["0.weight"] == pytest.approx(0.5 * 1e-3) and lrs["2.weight"] == pytest.approx(0.05)


def test_the_hf_trainer_takes_rules_as_data_from_a_json_config(tmp_path):
    """Rules read from a JSON file go to the HF Trainer through optimizer_cls_and_kwargs as they are
    (mappings), and the trained optimizer has the groups the Python rules give."""
    import contextlib
    import io

    import transformers

    from lrgroups.integrations.transformers import LayerwiseOptimizerFactory
    from tests.test_integrations_transformers import _data, _model

    path = tmp_path / "rules.json"
    path.write_text(rules_to_data([lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()], "json"))
    rules = json.loads(path.read_text())["rules"]
    args = transformers.TrainingArguments(str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to="none",
                                          use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(
        model=_model(), args=args, train_dataset=_data(8, 0),
        optimizer_cls_and_kwargs=(LayerwiseOptimizerFactory, {"optimizer_cls": torch.optim.AdamW, "lr": 1e-3,
                                                                "weight_decay": 0.01, "rules": rules}))
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    trained = lrgroups.unwrap(trainer.optimizer)
    expected = lrgroups.LayerwiseOptimizer(_model(), torch.optim.AdamW, lr=1e-3, weight_decay=0.01,
                                           rules=[lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()])
    assert [g["name"] for g in trained.param_groups] == [g["name"] for g in expected.param_groups]
    assert trained.explain()["lr"].tolist() == expected.explain()["lr"].tolist()


@given(options=st.dictionaries(st.sampled_from(["momentum", "betas", "eps", "foreach"]),
                               st.integers(0, 3) | st.tuples(st.integers(0, 2), st.integers(0, 2)) | st.booleans(),
                               max_size=3))
def test_equal_options_hash_alike(options):
    """Rules whose options are equal (1 == 1.0, (0, 1) == (0.0, 1.0)) are equal and hash alike, so a set
    or dict of rules keeps one of them (a hash by repr split them)."""
    as_floats = {key: (tuple(float(v) for v in value) if isinstance(value, tuple) else
                       value if isinstance(value, bool) else float(value)) for key, value in options.items()}
    a, b = Rule("fc.*", options=options), Rule("fc.*", options=as_floats)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
