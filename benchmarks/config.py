"""A suite as a small TOML file: the same :class:`~benchmarks.suites.Suite` data, written by a user.

Every table maps one to one onto a dataclass of :mod:`benchmarks.suites` (same field names, see
:data:`TABLES`; every key with its type, default and allowed values: ``benchmarks/configs/README.md``,
written by :func:`reference`); lists become tuples. A strategy is a library recipe
(``recipe = "surgical"``, its keyword arguments in ``kwargs``), or one of the baselines
``kind = "scratch" | "probe" | "pixel"``. An experiment's ``lr_factors`` replaces the shared lr
grid (``LR_FACTORS``) of its fine-tuning strategies. A dataset is ``"animal"``, ``"mnist"`` or
``"imagefolder:<path>"`` (a torchvision ImageFolder directory, relative to the config file; see
``benchmarks.data.imagefolder_raw``), which the loader turns into a
:class:`~benchmarks.data.FolderDataset` named by its content hash. A ``timm:`` backbone's
``weights`` is a checkpoint file (relative to the config file), which the loader turns into a
:class:`~benchmarks.backbones.WeightsFile` named by its SHA-256. Everything is checked when the
config loads, so ``run --dry-run`` catches it: unknown keys, strategies, recipes, backbones,
datasets, corruptions, hypothesis metrics and strategies; classes the dataset lacks, a
``label_map`` that is no permutation, shots that do not fit into a class's training pool, an empty
test pool. Every error is a :class:`ConfigError` naming the table and key, and what is allowed.

Example:
    >>> text = '''
    ... name = "mine"
    ... [[experiments]]
    ... name = "e1"
    ... backbone = "resnet_tiny"
    ... seeds = [0, 1]
    ... source = {kind = "pretrain", dataset = "animal", classes = [0, 1], steps = 30, train_pool = [200, 800], test_pool = [0, 100]}
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

import json
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

import tomllib

from .backbones import BACKBONES as BUILT_IN_BACKBONES
from .backbones import WeightsFile, timm_model, weights_file
from .backbones import backbone as backbone_spec
from .catalog import SUITES
from .data import CORRUPTION_KINDS, IMAGEFOLDER, POOLED, class_counts, imagefolder
from .store import SUITE_TOML, read_suite_record
from .suites import (
    HYPOTHESIS_KINDS,
    HYPOTHESIS_METRICS,
    LINEAR_PROBE,
    PIXEL,
    Budget,
    Experiment,
    Hypothesis,
    Precondition,
    Source,
    Strategy,
    Suite,
    Target,
    derived_strategies,
    scratch,
)

#: Backbones a config may name besides ``timm:<model name>`` (:data:`benchmarks.backbones.BACKBONES`).
BACKBONES = tuple(BUILT_IN_BACKBONES)
#: Strategy kinds; a table without ``kind`` is the first.
STRATEGY_KINDS = ("finetune", "scratch", "probe", "pixel")
#: The baseline kinds' strategies: their default name and lr.
BASELINES = {"scratch": scratch(), "probe": LINEAR_PROBE, "pixel": PIXEL}
DATASETS = ("animal", "mnist")
SOURCE_KINDS = ("pretrain", "imagenet", "adapt")
BN_MODES = ("frozen", "train")
#: Every table of a config: its TOML name, the dataclass whose fields are its keys, and the fields
#: a config does not set.
TABLES: tuple[tuple[str, type, tuple[str, ...]], ...] = (
    ("(top level)", Suite, ("time_budget_s", "preregistration")),
    ("[[experiments]]", Experiment, ("lrs", "skip", "cell_seeds")),
    ("experiments.source", Source, ()),
    ("experiments.budget", Budget, ()),
    ("[[experiments.targets]]", Target, ()),
    ("[[experiments.strategies]]", Strategy, ()),
    ("[[hypotheses]]", Hypothesis, ()),
    ("[[hypotheses.preconditions]]", Precondition, ()),
)
#: Values the loader gives keys a table leaves out, where the dataclass has no default (or another).
LOADER_DEFAULTS: dict[type, dict[str, Any]] = {
    Suite: {"description": ""},
    Experiment: {"question": "", "source": {"kind": "imagenet"}},
    Strategy: {"kind": STRATEGY_KINDS[0], "kwargs": {}},
}
#: The file :func:`reference` is written to (``python -m benchmarks config-reference --write``).
REFERENCE = Path(__file__).resolve().parent / "configs" / "README.md"


class ConfigError(ValueError):
    """A suite config that does not describe a suite; the message names the offending entry."""


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _keys(cls: type) -> list[Field]:
    """The fields of ``cls`` a config sets (:data:`TABLES`)."""
    skip = next(skip for _, table_cls, skip in TABLES if table_cls is cls)
    return [f for f in fields(cls) if f.name not in skip]


def _check_keys(cls: type, table: Any, where: str) -> None:
    """A table with only keys of ``cls`` (:func:`_keys`), else a ConfigError naming ``where``."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    known = sorted(f.name for f in _keys(cls))
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {known}")


def _build(cls: type, table: Any, where: str) -> Any:
    """``cls(**table)`` with lists as tuples and the :data:`LOADER_DEFAULTS`; unknown and missing
    keys are ConfigErrors naming ``where``."""
    _check_keys(cls, table, where)
    table = {**LOADER_DEFAULTS.get(cls, {}), **table}
    required = {f.name for f in _keys(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(table))
    if missing:
        raise ConfigError(f"{where}: missing keys {missing}")
    return cls(**{k: _tuples(v) for k, v in table.items()})


def _strategy(table: Any, where: str) -> Strategy:
    from lrgroups.recipes import RECIPES

    _check_keys(Strategy, table, where)
    kind = table.get("kind", LOADER_DEFAULTS[Strategy]["kind"])
    if kind not in STRATEGY_KINDS:
        raise ConfigError(f"{where}.kind: unknown strategy kind {kind!r}; known: {list(STRATEGY_KINDS)}")
    if kind in BASELINES:
        defaults = BASELINES[kind]
        extra = sorted(set(table) - {"kind", "name", "lr"})
        if extra:
            raise ConfigError(f"{where}: a {kind} strategy takes only 'name' and 'lr', not {extra}")
        return Strategy(table.get("name", defaults.name), kind, defaults.recipe, (), float(table.get("lr", defaults.lr)))
    table = {**LOADER_DEFAULTS[Strategy], **table}
    if "name" not in table or "recipe" not in table:
        raise ConfigError(f"{where}: a finetune strategy needs 'name' and 'recipe'")
    if table["recipe"] not in RECIPES:
        raise ConfigError(f"{where}.recipe: unknown recipe {table['recipe']!r}; known: {sorted(RECIPES)}")
    kwargs = table["kwargs"]
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}.kwargs: must be a table")
    try:
        RECIPES[table["recipe"]](**kwargs)
    except TypeError as error:
        raise ConfigError(f"{where}.kwargs: recipe {table['recipe']!r} rejects kwargs {kwargs}: {error}") from None
    return Strategy(table["name"], kind, table["recipe"], tuple(sorted((k, _tuples(v)) for k, v in kwargs.items())),
                    float(table.get("lr", 1e-3)), bool(table.get("wise", False)))


def _dataset(name: Any, where: str, base: Path | None) -> str:
    """A known dataset name; ``imagefolder:<path>`` (a relative path starts at ``base``, the
    config file's folder) becomes its :class:`~benchmarks.data.FolderDataset` (content-hash name)."""
    if isinstance(name, str) and name.startswith(IMAGEFOLDER):
        path = Path(name[len(IMAGEFOLDER):]).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_dir():
            raise ConfigError(f"{where}: ImageFolder directory {str(path)!r} does not exist")
        try:
            return imagefolder(path)
        except (OSError, ValueError) as error:
            raise ConfigError(f"{where}: not an ImageFolder directory: {error}") from None
    if name not in DATASETS:
        raise ConfigError(f"{where}: unknown dataset {name!r}; known: {list(DATASETS)} or 'imagefolder:<path>'")
    return name


def _pool_size(count: int, pool: tuple[int, ...]) -> int:
    """How many of a class's ``count`` images pool positions ``pool`` = (start, stop) hold."""
    return len(range(count)[slice(*pool)])


def _class_counts(dataset: str, classes: tuple[int, ...], where: str) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The dataset's class names and per-split class counts (:func:`benchmarks.data.class_counts`)
    once ``classes`` are checked to be distinct classes of it."""
    try:
        names, counts = class_counts(dataset)
    except (KeyError, OSError, ValueError) as error:
        raise ConfigError(f"{where}.dataset: {error}") from None
    if not classes or len(set(classes)) != len(classes) or not set(classes) <= set(range(len(names))):
        known = ", ".join(f"{index}={name}" for index, name in enumerate(names))
        raise ConfigError(f"{where}.classes: {list(classes)} must be distinct classes of the dataset: "
                          f"0-{len(names) - 1} ({known})")
    return names, counts


def _check_source(source: Source, where: str) -> None:
    """A known source kind; a trained source's classes exist and each pool holds images of each."""
    if source.kind not in SOURCE_KINDS:
        raise ConfigError(f"{where}.kind: unknown source kind {source.kind!r}; known: {list(SOURCE_KINDS)}")
    if not source.trained:
        return
    _, counts = _class_counts(source.dataset, source.classes, where)
    total = sum(counts.values())  # a source's pools pick positions among all of a class's images
    for key in ("train_pool", "test_pool"):
        empty = [cls for cls in source.classes if not _pool_size(int(total[cls]), getattr(source, key))]
        if empty:
            raise ConfigError(f"{where}.{key}: {list(getattr(source, key))} holds no image of classes {empty}")


def _check_target(target: Target, where: str) -> None:
    """Classes of the dataset, a permutation as label_map, known corruptions, shots that fit into
    each class's training (and validation) pool, and a test pool with images of each class."""
    names, counts = _class_counts(target.dataset, target.classes, where)
    n = len(target.classes)
    if target.label_map is not None and sorted(target.label_map) != list(range(n)):
        raise ConfigError(f"{where}.label_map: {list(target.label_map)} must have one entry per class ({n}), "
                          f"a permutation of 0-{n - 1}")
    if target.shift is not None and target.shift not in CORRUPTION_KINDS:
        raise ConfigError(f"{where}.shift: unknown corruption {target.shift!r}; known: {list(CORRUPTION_KINDS)}")
    unknown = [name for name in target.ood if name not in CORRUPTION_KINDS]
    if unknown:
        raise ConfigError(f"{where}.ood: unknown corruptions {unknown}; known: {list(CORRUPTION_KINDS)}")
    if target.shots < 1 or target.val_shots < 1:
        raise ConfigError(f"{where}: shots and val_shots must be at least 1, got {target.shots} and {target.val_shots}")
    missing = [key for key in ("test_pool", "train_pool") if getattr(target, key) is None]
    if POOLED in counts and missing:
        raise ConfigError(f"{where}: missing keys {missing} (a dataset without train/test folders is split by its "
                          "pools)")
    for cls in target.classes:
        label = f"class {cls} ({names[cls]})"
        if POOLED in counts:
            train, test = (_pool_size(int(counts[POOLED][cls]), pool) for pool in (target.train_pool, target.test_pool))
            if target.shots + target.val_shots > train:
                raise ConfigError(f"{where}.train_pool: {list(target.train_pool)} holds {train} images of {label}, "
                                  f"fewer than shots + val_shots = {target.shots + target.val_shots}")
            if not test:
                raise ConfigError(f"{where}.test_pool: {list(target.test_pool)} holds no image of {label}")
        elif "val" in counts:  # split folders: shots from train, val_shots from val, every test image
            for key, shots, split in (("shots", target.shots, "train"), ("val_shots", target.val_shots, "val")):
                if shots > counts[split][cls]:
                    raise ConfigError(f"{where}.{key}: {shots} do not fit into the {counts[split][cls]} images of "
                                      f"{label} in the {split} folder")
        elif target.shots + target.val_shots > counts["train"][cls]:
            raise ConfigError(f"{where}.shots: shots + val_shots = {target.shots + target.val_shots} do not fit "
                              f"into the {counts['train'][cls]} images of {label} in the train folder")


def _weights(path: Any, source: Any, where: str, base: Path | None) -> WeightsFile:
    """A timm backbone's checkpoint file (a path relative to ``base``, the config file's folder) as
    its :class:`~benchmarks.backbones.WeightsFile` (named by its SHA-256), for an ``imagenet`` source
    (weights the backbone brings; a source the suite pretrains starts from random init)."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: expected the path of a checkpoint file, got {path!r}")
    if not isinstance(source, dict) or source.get("kind", "imagenet") != "imagenet":
        raise ConfigError(f"{where}: a weights file is what the backbone starts from: it takes "
                          "source = {kind = \"imagenet\"} (the default), not a source the suite trains")
    file = Path(path).expanduser()
    if not file.is_absolute() and base is not None:
        file = base / file
    try:
        return weights_file(file)
    except FileNotFoundError:
        raise ConfigError(f"{where}: weights file {str(file)!r} does not exist") from None


def _experiment(table: Any, where: str, base: Path | None = None) -> Experiment:
    _check_keys(Experiment, table, where)
    table = {**LOADER_DEFAULTS[Experiment], **table}
    where = f"{where} ({table.get('name', '?')})"
    backbone = table.get("backbone")
    model = timm_model(backbone) if isinstance(backbone, str) else None
    if model is not None:
        import timm
        from timm.models import get_pretrained_cfg

        if not timm.is_model(model):
            raise ConfigError(f"{where}.backbone: timm has no model {model!r} (see timm.list_models())")
        cfg = get_pretrained_cfg(model)
        if "image_size" not in table and cfg is not None and cfg.input_size:
            table["image_size"] = int(cfg.input_size[-1])  # the backbone's own input size, not the 28 px default
        if "weights" in table:
            table["weights"] = _weights(table["weights"], table["source"], f"{where}.weights", base)
    elif "weights" in table:
        raise ConfigError(f"{where}.weights: only a timm:<model name> backbone takes a weights file, not {backbone!r}")
    elif backbone not in BACKBONES:
        raise ConfigError(f"{where}.backbone: unknown backbone {backbone!r}; known: {list(BACKBONES)} or "
                          "'timm:<model name>'")
    if table.get("bn", "frozen") not in BN_MODES:
        raise ConfigError(f"{where}.bn: unknown mode {table['bn']!r}; known: {list(BN_MODES)}")
    source = table["source"]
    if isinstance(source, dict) and source.get("dataset"):
        source = {**source, "dataset": _dataset(source["dataset"], f"{where}.source", base)}
    table["source"] = _build(Source, source, f"{where}.source")
    _check_source(table["source"], f"{where}.source")
    kind = table["source"].kind
    if kind not in backbone_spec(backbone).sources:
        fit = {k: ", ".join(b.name for b in BUILT_IN_BACKBONES.values() if k in b.sources)
               for k in ("pretrain", "adapt", "imagenet")}
        raise ConfigError(f"{where}.source: a {kind} source does not fit backbone {backbone!r} (pretrain: "
                          f"{fit['pretrain']}, timm:<model name>; adapt: {fit['adapt']}; imagenet: {fit['imagenet']}, "
                          "timm:<model name>)")
    table["budget"] = _build(Budget, table.get("budget"), f"{where}.budget")
    targets = []
    for i, target in enumerate(table.get("targets") or []):
        here = f"{where}.targets[{i}]"
        if isinstance(target, dict):
            target = {**target, "dataset": _dataset(target.get("dataset"), here, base)}
        targets.append(_build(Target, target, here))
        _check_target(targets[-1], here)
    table["targets"] = tuple(targets)
    strategies = table.get("strategies") or []
    table["strategies"] = tuple(_strategy(s, f"{where}.strategies[{i}]") for i, s in enumerate(strategies))
    if not table["targets"] or not table["strategies"]:
        raise ConfigError(f"{where}: needs at least one target and one strategy")
    names = [s.name for s in table["strategies"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: strategy names repeat: {names}")
    return _build(Experiment, table, where)


def _hypothesis(table: Any, where: str, experiments: dict[str, Experiment]) -> Hypothesis:
    """A hypothesis whose experiment, target, strategies and metrics (its preconditions' too) exist."""
    if isinstance(table, dict) and "preconditions" in table:
        table = {**table, "preconditions": [_build(Precondition, p, f"{where}.preconditions[{j}]")
                                            for j, p in enumerate(table["preconditions"])]}
    hypothesis = _build(Hypothesis, table, where)
    where = f"{where} ({hypothesis.name})"
    experiment = experiments.get(hypothesis.experiment)
    if experiment is None:
        raise ConfigError(f"{where}.experiment: unknown experiment {hypothesis.experiment!r}; "
                          f"known: {sorted(experiments)}")
    target = next((t for t in experiment.targets if t.name == hypothesis.target), None)
    if target is None:
        raise ConfigError(f"{where}.target: experiment {experiment.name!r} has no target {hypothesis.target!r}; "
                          f"known: {[t.name for t in experiment.targets]}")
    strategies = [s.name for s in experiment.strategies] + sorted(derived_strategies(experiment))
    metrics = [*HYPOTHESIS_METRICS, *(f"ood_accuracy_{name}" for name in target.ood)]
    for prefix, item in (("", hypothesis), *((f".preconditions[{j}]", p)
                                              for j, p in enumerate(hypothesis.preconditions))):
        for key in ("better", "worse"):
            if getattr(item, key) not in strategies:
                raise ConfigError(f"{where}{prefix}.{key}: unknown strategy {getattr(item, key)!r}; "
                                  f"known: {strategies}")
        if item.metric not in metrics:
            raise ConfigError(f"{where}{prefix}.metric: unknown metric {item.metric!r}; known: {metrics}")
    return hypothesis


def suite_from_dict(config: dict[str, Any], base: Path | None = None) -> Suite:
    """The :class:`Suite` a parsed config describes (see the module docstring); relative
    ImageFolder paths are taken from ``base`` (default: the working directory).

    Raises:
        ConfigError: anything the module docstring lists, naming the table and key.
    """
    _check_keys(Suite, config, "suite")
    if "name" not in config or not config.get("experiments"):
        raise ConfigError("suite: needs a 'name' and at least one [[experiments]] table")
    experiments = tuple(_experiment(e, f"experiments[{i}]", base) for i, e in enumerate(config["experiments"]))
    by_name = {e.name: e for e in experiments}
    hypotheses = tuple(_hypothesis(h, f"hypotheses[{i}]", by_name) for i, h in enumerate(config.get("hypotheses", [])))
    try:
        return _build(Suite, {**config, "experiments": experiments, "hypotheses": hypotheses}, "suite")
    except ValueError as error:
        raise ConfigError(str(error)) from None


def suite_from_toml(text: str, base: Path | None = None) -> Suite:
    """The :class:`Suite` a TOML text describes.

    Raises:
        ConfigError: not TOML, or see :func:`suite_from_dict`.
    """
    try:
        return suite_from_dict(tomllib.loads(text), base)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"not valid TOML: {error}") from None


def load_suite(path: str | Path) -> Suite:
    """The :class:`Suite` of a TOML file; errors name the file.

    Raises:
        ConfigError: see :func:`suite_from_toml`. OSError: the file cannot be read.
    """
    try:
        return suite_from_toml(Path(path).read_text(), Path(path).resolve().parent)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def recorded_suite(out: str | Path) -> Suite:
    """The suite run folder ``out`` holds (:func:`benchmarks.store.read_suite_record`): the copy of
    the config it ran (relative ImageFolder paths from the original config's folder), or a
    built-in suite by name.

    Raises:
        ConfigError: no record, a recorded name that is no built-in suite, or a copy that no
        longer loads (e.g. its ImageFolder directory moved).
    """
    record = read_suite_record(out)
    if record is None:
        raise ConfigError(f"{out}: records no suite (no suite.json); give --suite or --config")
    if record.config_text is not None:
        try:
            return suite_from_toml(record.config_text, Path(record.config_path).parent)
        except ConfigError as error:
            raise ConfigError(f"{Path(out) / SUITE_TOML} (a copy of {record.config_path}): {error}") from None
    if record.name not in SUITES:
        raise ConfigError(f"{out}: records suite {record.name!r}, which is not built in ({', '.join(sorted(SUITES))}) "
                          "and has no config copy; give --config")
    return SUITES[record.name]


# --- The generated reference of every key ----------------------------------------------------------

_TOML_SCALARS = {"str": "string", "int": "integer", "float": "float", "bool": "boolean", "Kwargs": "table"}


def _toml_type(annotation: str) -> str:
    """A dataclass field's annotation in TOML's words.

    Raises:
        ValueError: an annotation without a TOML form here (extend ``_TOML_SCALARS``).
    """
    annotation = annotation.removesuffix(" | None")
    tables = {cls.__name__ for _, cls, _ in TABLES}
    if annotation in _TOML_SCALARS:
        return _TOML_SCALARS[annotation]
    if annotation in tables:
        return "table"
    if annotation.startswith("tuple[") and annotation.endswith(", ...]"):
        element = annotation[len("tuple["):-len(", ...]")]
        if element in tables:
            return "array of tables"
        return f"array of {_toml_type(element)}s"
    if annotation.startswith("tuple["):
        parts = annotation[len("tuple["):-1].split(", ")
        if len(set(parts)) == 1:
            return f"array of {len(parts)} {_toml_type(parts[0])}s"
    raise ValueError(f"no TOML type for annotation {annotation!r}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _default(cls: type, field: Field) -> str:
    """A key's default as the reference shows it: the loader's, the dataclass's, or ``required``."""
    if field.name in LOADER_DEFAULTS.get(cls, {}):
        value = LOADER_DEFAULTS[cls][field.name]
    elif field.default is not MISSING:
        value = field.default
    elif field.default_factory is not MISSING:
        value = field.default_factory()
    else:
        return "required"
    return "not set" if value is None else f"`{_toml_value(value)}`"


def _allowed() -> dict[tuple[type, str], str]:
    """What the loader accepts for the keys it checks beyond their type."""
    from lrgroups.recipes import RECIPES

    def listing(values: Any) -> str:
        return ", ".join(f"`{value}`" for value in values)

    datasets = listing([*DATASETS, "imagefolder:<path>"]) + " (a path relative to the config file)"
    corruptions = listing(CORRUPTION_KINDS)
    strategies = "a strategy of the experiment, or `<name>+wise_<alpha>` of a `wise` one"
    metrics = listing(HYPOTHESIS_METRICS) + ", `ood_accuracy_<corruption>` of one of the target's `ood`"
    baselines = "; ".join(f"{kind}: `{strategy.name}`, lr `{strategy.lr:g}`" for kind, strategy in BASELINES.items())
    return {
        (Experiment, "backbone"): listing([*BACKBONES, "timm:<model name>"]) + " (timm: with an imagenet or "
                                  "pretrain source)",
        (Experiment, "weights"): "a checkpoint file (safetensors, or a torch state dict) of the timm: backbone, "
                                 "relative to the config file; imagenet source only; its SHA-256 keys the cells",
        (Experiment, "bn"): listing(BN_MODES),
        (Experiment, "image_size"): "pixels (square); for a timm: backbone the default is the input size of its "
                                    "pretrained config (224 for most ImageNet models); an ImageFolder is read at it",
        (Source, "kind"): listing(SOURCE_KINDS),
        (Source, "dataset"): datasets + "; required for pretrain",
        (Source, "classes"): "distinct class indices of the dataset",
        (Source, "train_pool"): "[start, stop) positions per class; must hold images of each class",
        (Source, "test_pool"): "[start, stop) positions per class; must hold images of each class",
        (Target, "dataset"): datasets,
        (Target, "classes"): "distinct class indices of the dataset (ImageFolder: its class folders, sorted)",
        (Target, "shots"): "at least 1; shots + val_shots fit into each class's training pool",
        (Target, "val_shots"): "at least 1 (from the val folder of an ImageFolder that has one)",
        (Target, "train_pool"): "[start, stop) positions per class after a fixed shuffle; required unless the "
                                "dataset has train/test folders (then not used)",
        (Target, "test_pool"): "[start, stop) positions per class; must hold images of each class; required "
                               "unless the dataset has train/test folders (then not used: all of test)",
        (Target, "shift"): corruptions,
        (Target, "label_map"): "a permutation of 0 .. len(classes) - 1",
        (Target, "ood"): corruptions + " (one string or an array)",
        (Strategy, "name"): f"required for finetune; a baseline defaults to its own ({baselines})",
        (Strategy, "kind"): listing(STRATEGY_KINDS),
        (Strategy, "recipe"): listing(sorted(RECIPES)) + "; required for finetune",
        (Strategy, "kwargs"): "the recipe's keyword arguments (finetune only)",
        (Strategy, "wise"): "finetune only",
        (Hypothesis, "experiment"): "an experiment's name",
        (Hypothesis, "target"): "a target's name in that experiment",
        (Hypothesis, "better"): strategies,
        (Hypothesis, "worse"): strategies,
        (Hypothesis, "metric"): metrics,
        (Hypothesis, "versus"): "another target of the experiment (an interaction: the difference on target minus "
                                "the one on versus)",
        (Hypothesis, "kind"): ", ".join(f"`{k}`" for k in HYPOTHESIS_KINDS),
        (Strategy, "fixed_lr"): "a control run at this lr only, never tuned (e.g. 0)",
        (Precondition, "better"): strategies,
        (Precondition, "worse"): strategies,
        (Precondition, "metric"): metrics,
    }


def reference() -> str:
    """The markdown reference of every table and key a config takes, one table row per key: its
    type and default from the dataclass fields and :data:`LOADER_DEFAULTS`, what is allowed from
    the loader's lists (``benchmarks/configs/README.md``)."""
    allowed = _allowed()
    rows = [f"| `{table}` | `{field.name}` | {_toml_type(field.type)} | {_default(cls, field)} | "
            f"{allowed.get((cls, field.name), '')} |"
            for table, cls, _ in TABLES for field in _keys(cls)]
    classes = ", ".join(f"`{cls.__name__}`" for _, cls, _ in TABLES)
    return "\n".join([
        "# Suite config keys",
        "",
        "Every table and key a suite config (TOML, `benchmarks/config.py`) takes. Generated from the",
        "dataclasses of `benchmarks/suites.py` and the loader's lists by",
        "`python -m benchmarks config-reference --write`; a test checks that this file is current.",
        f"What a key means: the docstring of its table's dataclass ({classes}).",
        "Lists become tuples; any other key is an error.",
        "",
        "| table | key | type | default | allowed |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])
