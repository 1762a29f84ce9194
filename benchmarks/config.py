"""A suite as a small TOML file: the same :class:`~benchmarks.suites.Suite` data, written by a user.

Every table maps one to one onto a dataclass of :mod:`benchmarks.suites` (same field names); lists
become tuples. A strategy is a library recipe (``recipe = "surgical"``, its keyword arguments in
``kwargs``), or one of the baselines ``kind = "scratch" | "probe" | "pixel"``. An experiment's
``lr_factors`` replaces the shared lr grid (``LR_FACTORS``) of its fine-tuning strategies. A
dataset is ``"animal"``, ``"mnist"`` or ``"imagefolder:<path>"`` (a torchvision ImageFolder
directory, relative to the config file; see ``benchmarks.data.imagefolder_raw``). Unknown
keys, strategies, recipes, backbones and datasets raise :class:`ConfigError` naming them and what is known.

Example:
    >>> text = '''
    ... name = "mine"
    ... [[experiments]]
    ... name = "e1"
    ... backbone = "resnet_tiny"
    ... seeds = [0, 1]
    ... source = {kind = "pretrain", dataset = "animal", classes = [0, 1], steps = 30}
    ... budget = {steps = 8, batch_size = 10, eval_every = 4, warmup_steps = 2}
    ... [[experiments.targets]]
    ... name = "t"
    ... dataset = "animal"
    ... classes = [0, 1]
    ... shots = 4
    ... val_shots = 4
    ... train_pool = [800, 1000]
    ... test_pool = [0, 100]
    ... [[experiments.strategies]]
    ... name = "head"
    ... recipe = "surgical"
    ... lr = 0.01
    ... kwargs = {block = "head"}
    ... [[experiments.strategies]]
    ... kind = "pixel"
    ... '''
    >>> suite = suite_from_toml(text)
    >>> len(suite.cells())
    12
"""

from __future__ import annotations

import tomllib
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from .backbones import TIMM
from .data import IMAGEFOLDER
from .suites import PIXEL, LINEAR_PROBE, Budget, Experiment, Hypothesis, Source, Strategy, Suite, Target, scratch

#: Backbones a config may name (see ``benchmarks.sources.source_backbone``).
BACKBONES = ("resnet_tiny", "lite0_top", "lite0_full", "lite2_full")
STRATEGY_KINDS = ("finetune", "scratch", "probe", "pixel")
DATASETS = ("animal", "mnist")


class ConfigError(ValueError):
    """A suite config that does not describe a suite; the message names the offending entry."""


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _build(cls: type, table: Any, where: str, skip: tuple[str, ...] = ()) -> Any:
    """``cls(**table)`` with lists as tuples; unknown and missing keys are ConfigErrors naming ``where``."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    known = {f.name for f in fields(cls)} - set(skip)
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING} - set(skip)
    missing = sorted(required - set(table))
    if missing:
        raise ConfigError(f"{where}: missing keys {missing}")
    return cls(**{k: _tuples(v) for k, v in table.items()})


def _strategy(table: Any, where: str) -> Strategy:
    from lrgroups.recipes import RECIPES

    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    table = dict(table)
    kind = table.pop("kind", "finetune")
    if kind not in STRATEGY_KINDS:
        raise ConfigError(f"{where}: unknown strategy kind {kind!r}; known: {list(STRATEGY_KINDS)}")
    defaults = {"scratch": scratch(), "probe": LINEAR_PROBE, "pixel": PIXEL}.get(kind)
    unknown = sorted(set(table) - {"name", "recipe", "kwargs", "lr", "wise"})
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: ['kind', 'kwargs', 'lr', 'name', 'recipe', 'wise']")
    if defaults is not None:
        extra = sorted(set(table) - {"name", "lr"})
        if extra:
            raise ConfigError(f"{where}: a {kind} strategy takes only 'name' and 'lr', not {extra}")
        return Strategy(table.get("name", defaults.name), kind, defaults.recipe, (), float(table.get("lr", defaults.lr)))
    if "name" not in table or "recipe" not in table:
        raise ConfigError(f"{where}: a finetune strategy needs 'name' and 'recipe'")
    if table["recipe"] not in RECIPES:
        raise ConfigError(f"{where}: unknown recipe {table['recipe']!r}; known: {sorted(RECIPES)}")
    kwargs = table.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: 'kwargs' must be a table")
    try:
        RECIPES[table["recipe"]](**kwargs)
    except TypeError as error:
        raise ConfigError(f"{where}: recipe {table['recipe']!r} rejects kwargs {kwargs}: {error}") from None
    return Strategy(table["name"], "finetune", table["recipe"], tuple(sorted((k, _tuples(v)) for k, v in kwargs.items())),
                    float(table.get("lr", 1e-3)), bool(table.get("wise", False)))


def _dataset(name: Any, where: str, base: Path | None) -> str:
    """A known dataset name; ``imagefolder:<path>`` with a relative path is made absolute against
    ``base`` (the config file's folder)."""
    if isinstance(name, str) and name.startswith(IMAGEFOLDER):
        path = Path(name[len(IMAGEFOLDER):]).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_dir():
            raise ConfigError(f"{where}: ImageFolder directory {str(path)!r} does not exist")
        return IMAGEFOLDER + str(path.resolve())
    if name not in DATASETS:
        raise ConfigError(f"{where}: unknown dataset {name!r}; known: {list(DATASETS)} or 'imagefolder:<path>'")
    return name


def _experiment(table: Any, where: str, base: Path | None = None) -> Experiment:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    table = dict(table)
    known = {f.name for f in fields(Experiment)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    name = table.get("name", "?")
    where = f"{where} ({name})"
    backbone = table.get("backbone")
    if isinstance(backbone, str) and backbone.startswith(TIMM):
        import timm

        if not timm.is_model(backbone[len(TIMM):]):
            raise ConfigError(f"{where}: timm has no model {backbone[len(TIMM):]!r} (see timm.list_models())")
        if table.get("source", {}).get("kind", "imagenet") != "imagenet":
            raise ConfigError(f"{where}: a timm backbone brings its own weights: source = {{kind = \"imagenet\"}}")
    elif backbone not in BACKBONES:
        raise ConfigError(f"{where}: unknown backbone {backbone!r}; known: {list(BACKBONES)} or 'timm:<model name>'")
    source = table.get("source", {"kind": "imagenet"})
    if isinstance(source, dict) and source.get("dataset"):
        source = {**source, "dataset": _dataset(source["dataset"], f"{where}.source", base)}
    table["source"] = _build(Source, source, f"{where}.source")
    table["budget"] = _build(Budget, table.get("budget"), f"{where}.budget")
    targets = [{**t, "dataset": _dataset(t.get("dataset"), f"{where}.targets[{i}]", base)} if isinstance(t, dict)
               else t for i, t in enumerate(table.get("targets") or [])]
    table["targets"] = tuple(_build(Target, t, f"{where}.targets[{i}]") for i, t in enumerate(targets))
    strategies = table.get("strategies") or []
    table["strategies"] = tuple(_strategy(s, f"{where}.strategies[{i}]") for i, s in enumerate(strategies))
    if not table["targets"] or not table["strategies"]:
        raise ConfigError(f"{where}: needs at least one target and one strategy")
    names = [s.name for s in table["strategies"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: strategy names repeat: {names}")
    table.setdefault("question", "")
    return _build(Experiment, table, where)


def suite_from_dict(config: dict[str, Any], base: Path | None = None) -> Suite:
    """The :class:`Suite` a parsed config describes (see the module docstring); relative
    ImageFolder paths are taken from ``base`` (default: the working directory)."""
    unknown = sorted(set(config) - {"name", "description", "experiments", "hypotheses"})
    if unknown:
        raise ConfigError(f"suite: unknown keys {unknown}; known: ['description', 'experiments', 'hypotheses', 'name']")
    if "name" not in config or not config.get("experiments"):
        raise ConfigError("suite: needs a 'name' and at least one [[experiments]] table")
    experiments = tuple(_experiment(e, f"experiments[{i}]", base) for i, e in enumerate(config["experiments"]))
    hypotheses = tuple(_build(Hypothesis, h, f"hypotheses[{i}]") for i, h in enumerate(config.get("hypotheses", [])))
    try:
        return Suite(config["name"], config.get("description", ""), experiments, hypotheses)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def suite_from_toml(text: str, base: Path | None = None) -> Suite:
    """The :class:`Suite` a TOML text describes."""
    try:
        return suite_from_dict(tomllib.loads(text), base)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"not valid TOML: {error}") from None


def load_suite(path: str | Path) -> Suite:
    """The :class:`Suite` of a TOML file; errors name the file."""
    try:
        return suite_from_toml(Path(path).read_text(), Path(path).resolve().parent)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
