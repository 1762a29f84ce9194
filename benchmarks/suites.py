"""The benchmark suites, as data: backbones x strategies x tasks x seeds, with their budgets.

A :class:`Suite` is one or more :class:`Grid` s; a grid is the cross product of its backbones,
strategies (named :mod:`lrgroups.recipes`), tasks (source -> target pairs) and seeds, all run with
one :class:`Budget`. Every cell of every grid is one fine-tuning run (see :mod:`benchmarks.runner`).

How the budgets are chosen, the same way for every strategy:

* **Equal steps**: every strategy gets the grid's ``Budget.steps`` optimizer steps and batch size
  (early stopping may end a run sooner; its restored weights then stand for the rest).
* **Equal lr**: one AdamW lr per grid, constant, weight decay 0, fixed a priori (1e-3, AdamW's usual
  fine-tuning default for a fresh head) and never tuned per strategy, so no strategy gets more
  tuning than another. The recipes treat it as the head's lr; what a strategy does below the
  head (freeze, decay, unfreeze) is the only difference between the cells of a row.
* **Epochs** (for gradual unfreezing) are real passes over the target training set:
  ``len(train) // batch_size`` steps.
* **Data**: the task split is fixed (``data_seed``); a cell's seed drives the new head's
  initialisation and the batch order, so the 95% intervals are over fine-tuning randomness.
* **Source backbones** (random-init timm models) are pretrained once per (backbone, source task) by
  the suite itself (:class:`Pretraining`, cached on disk) and must reach ``min_accuracy`` on the
  source test set, else their cells are flagged ``source_ok: false``. EfficientNet-Lite0 comes truly
  pretrained on ImageNet (no source labels offline): its "source accuracy" is the top-1 agreement
  with the original model's ImageNet predictions on natural-image probes (1 before fine-tuning).

Example:
    >>> suite = SUITES["smoke"]
    >>> [cell.label for cell in suite.cells()][:2]
    ['convnext_cpu / new_classes / full / seed 0', 'convnext_cpu / new_classes / linear_probe / seed 0']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lrgroups import recipes

from .backbones import BACKBONES, CPU_BACKBONES, GPU_BACKBONES, GPU_IMAGE_SIZE
from .data import SOURCE_TARGET_PAIRS

#: Source name of the tasks whose backbone comes pretrained on ImageNet.
IMAGENET = "imagenet"
#: Truly pretrained backbones (source: ImageNet); each is loaded by `runner.load_pretrained`.
PRETRAINED_BACKBONES = ("efficientnet_lite0",)
#: ULMFiT's discriminative factor: each layer's lr is the next one's / 2.6.
ULMFIT_GAMMA = 1 / 2.6

Kwargs = tuple[tuple[str, Any], ...]


def _kwargs(mapping: Mapping[str, Any]) -> Kwargs:
    return tuple(sorted(mapping.items()))


@dataclass(frozen=True)
class Strategy:
    """A named fine-tuning strategy: ``lrgroups.recipes.RECIPES[recipe](**kwargs)``."""

    name: str
    recipe: str
    kwargs: Kwargs = ()

    def build_recipe(self) -> recipes.Recipe:
        return recipes.RECIPES[self.recipe](**dict(self.kwargs))


def strategy(recipe: str, **kwargs: Any) -> Strategy:
    """A Strategy named as the recipe names itself (e.g. ``layer_decay_0.5``, ``surgical_first``)."""
    return Strategy(recipes.RECIPES[recipe](**kwargs).name, recipe, _kwargs(kwargs))


def strategies(gammas: tuple[float, ...]) -> tuple[Strategy, ...]:
    """The strategies every suite compares, with a sweep of layer-decay gammas."""
    return (
        strategy("full"),
        strategy("linear_probe"),
        strategy("lp_ft"),
        *(strategy("layer_decay", gamma=gamma) for gamma in gammas),
        strategy("discriminative"),
        strategy("gradual_unfreezing"),
        strategy("gradual_unfreezing", discriminative_gamma=ULMFIT_GAMMA),
        strategy("plateau_unfreezing"),
        strategy("surgical", block="first"),
        strategy("surgical", block="last"),
    )


@dataclass(frozen=True)
class TaskSpec:
    """A source -> target pair: task names of ``benchmarks.data.TASKS`` (source may be ``IMAGENET``),
    with loader kwargs (sizes) for each side."""

    name: str
    source: str
    target: str
    source_kwargs: Kwargs = ()
    target_kwargs: Kwargs = ()


def pair(name: str, source: Mapping[str, Any] | None = None, target: Mapping[str, Any] | None = None) -> TaskSpec:
    """A pair of ``benchmarks.data.SOURCE_TARGET_PAIRS`` with loader kwargs for its two tasks."""
    source_task, target_task = SOURCE_TARGET_PAIRS[name]
    return TaskSpec(name, source_task, target_task, _kwargs(source or {}), _kwargs(target or {}))


def from_imagenet(target: str, **target_kwargs: Any) -> TaskSpec:
    """ImageNet (the pretrained backbone's own training) -> a target task of ``benchmarks.data.TASKS``."""
    return TaskSpec(f"imagenet_{target}", IMAGENET, target, (), _kwargs(target_kwargs))


@dataclass(frozen=True)
class Budget:
    """What every cell of a grid gets: optimizer steps, batch size, image size (source and target),
    the head's lr (AdamW, constant), weight decay, and evaluation on the validation split every
    ``eval_every`` steps."""

    steps: int
    batch_size: int
    image_size: int
    lr: float
    eval_every: int
    weight_decay: float = 0.0


@dataclass(frozen=True)
class Pretraining:
    """How the suite pretrains a random-init backbone on the source task (AdamW, linear warm-up then
    cosine decay),
    and the source test accuracy it must reach (else the cells are flagged ``source_ok: false``)."""

    steps: int
    batch_size: int
    lr: float
    min_accuracy: float
    warmup_steps: int = 0
    weight_decay: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class Probes:
    """Natural-image probes on which an ImageNet backbone's forgetting is measured."""

    num_crops: int = 64
    image_size: int = 224


@dataclass(frozen=True)
class Grid:
    """backbones x tasks x strategies x seeds, run with one budget.

    Random-init backbones need ``pretraining`` (and tasks with a real source); the truly pretrained
    ones (``PRETRAINED_BACKBONES``) need ``probes`` and ImageNet tasks (:func:`from_imagenet`).
    """

    backbones: tuple[str, ...]
    strategies: tuple[Strategy, ...]
    tasks: tuple[TaskSpec, ...]
    seeds: tuple[int, ...]
    budget: Budget
    pretraining: Pretraining | None = None
    probes: Probes | None = None
    data_seed: int = 0

    def __post_init__(self) -> None:
        imagenet = [backbone in PRETRAINED_BACKBONES for backbone in self.backbones]
        if any(imagenet) and not all(imagenet):
            raise ValueError("a grid mixes ImageNet-pretrained and suite-pretrained backbones")
        unknown = [b for b in self.backbones if b not in BACKBONES and b not in PRETRAINED_BACKBONES]
        if unknown:
            raise ValueError(f"unknown backbones {unknown}")
        from_imagenet_tasks = [task.source == IMAGENET for task in self.tasks]
        if all(imagenet):
            if self.probes is None or not all(from_imagenet_tasks):
                raise ValueError("ImageNet backbones need probes and ImageNet tasks (from_imagenet)")
        elif self.pretraining is None or any(from_imagenet_tasks):
            raise ValueError("suite-pretrained backbones need pretraining and tasks with a source")


@dataclass(frozen=True)
class Cell:
    """One fine-tuning run of a suite; ``key`` hashes its full config plus code-relevant versions."""

    backbone: str
    strategy: Strategy
    task: TaskSpec
    seed: int
    grid: Grid = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.backbone} / {self.task.name} / {self.strategy.name} / seed {self.seed}"

    def config(self) -> dict[str, Any]:
        """Everything that determines this run's numbers (except the device and versions)."""
        grid = self.grid
        return {
            "backbone": {"name": self.backbone, "timm": BACKBONES.get(self.backbone, "ImageNet weights")},
            "strategy": {"name": self.strategy.name, "recipe": self.strategy.recipe, "kwargs": dict(self.strategy.kwargs)},
            "task": {**asdict(self.task), "source_kwargs": dict(self.task.source_kwargs),
                     "target_kwargs": dict(self.task.target_kwargs), "data_seed": grid.data_seed},
            "seed": self.seed,
            "budget": asdict(grid.budget),
            "pretraining": None if grid.pretraining is None else asdict(grid.pretraining),
            "probes": None if grid.probes is None else asdict(grid.probes),
        }

    def key(self, environment: Mapping[str, Any]) -> str:
        """Hash of the config plus ``environment`` (device type, CPU threads, torch/timm/lrgroups versions)."""
        return config_hash({**self.config(), "environment": dict(environment)})


def config_hash(config: Mapping[str, Any]) -> str:
    """16 hex digits of the sha256 of the canonical JSON of ``config``."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Suite:
    """A named list of grids; its cells are run in order (seeds outermost, so the first seed's
    table is complete early)."""

    name: str
    description: str
    grids: tuple[Grid, ...]

    def cells(self) -> list[Cell]:
        seeds = sorted({seed for grid in self.grids for seed in grid.seeds})
        return [
            Cell(backbone, strat, task, seed, grid)
            for seed in seeds
            for grid in self.grids
            if seed in grid.seeds
            for task in grid.tasks
            for backbone in grid.backbones
            for strat in grid.strategies
        ]

    def __iter__(self) -> Iterator[Cell]:
        return iter(self.cells())


# --- The suites --------------------------------------------------------------------------------

_DIGITS_FEW_SHOT = {"shots_per_class": 20, "test_per_class": 40}
_MNIST04_SOURCE = {"shots_per_class": 200, "test_per_class": 50}
_MNIST_SOURCE = {"shots_per_class": 200, "test_per_class": 50}
_DIGITS_DOMAIN_TARGET = {"shots_per_class": 20, "test_per_class": 50}
_TEXTURES = {"shots_per_class": 32, "test_per_class": 32, "crop_size": 64}


def _pairs(*names: str) -> tuple[TaskSpec, ...]:
    specs = {
        "new_classes": pair("new_classes", _MNIST04_SOURCE, _DIGITS_FEW_SHOT),
        "rotation": pair("rotation", _MNIST04_SOURCE, _DIGITS_FEW_SHOT),
        "inversion": pair("inversion", _MNIST04_SOURCE, _DIGITS_FEW_SHOT),
        "noise": pair("noise", _MNIST04_SOURCE, _DIGITS_FEW_SHOT),
        "digits_domain": pair("digits_domain", _MNIST_SOURCE, _DIGITS_DOMAIN_TARGET),
        "textures": pair("textures", _MNIST_SOURCE, _TEXTURES),
    }
    return tuple(specs[name] for name in names)


SMOKE = Suite(
    "smoke",
    "CI: three tiny backbones, one task, five strategies, one seed, a handful of steps; plus one "
    "EfficientNet-Lite0 cell at 32 px. Checks the machinery, not the science.",
    (
        Grid(
            backbones=("convnext_cpu", "resnet_cpu", "vit_cpu"),
            strategies=(strategy("full"), strategy("linear_probe"), strategy("gradual_unfreezing"),
                        strategy("plateau_unfreezing"), strategy("surgical", block="last")),
            tasks=(pair("new_classes", {"shots_per_class": 40, "test_per_class": 20},
                        {"shots_per_class": 8, "test_per_class": 20}),),
            seeds=(0,),
            budget=Budget(steps=12, batch_size=16, image_size=32, lr=1e-3, eval_every=3),
            pretraining=Pretraining(steps=40, batch_size=32, lr=3e-3, warmup_steps=4, min_accuracy=0.3),
        ),
        Grid(
            backbones=("efficientnet_lite0",),
            strategies=(strategy("linear_probe"),),
            tasks=(from_imagenet("textures", shots_per_class=8, test_per_class=8, crop_size=64),),
            seeds=(0,),
            budget=Budget(steps=4, batch_size=8, image_size=32, lr=1e-3, eval_every=2),
            probes=Probes(num_crops=8, image_size=64),
        ),
    ),
)

QUICK = Suite(
    "quick",
    "The default: three suite-pretrained timm families (ResNet, ConvNeXt, ViT) on an output-level "
    "shift (new classes, few-shot) and an input-level shift (inverted digits), 11 strategies, 3 seeds, "
    "30 steps of 16; plus ImageNet EfficientNet-Lite0 fine-tuned on sklearn digits at 64 px with 5 strategies, "
    "1 seed. About 6.5 minutes on 2 CPU cores, pretraining included (the limit is 10).",
    (
        Grid(
            backbones=("resnet_cpu", "convnext_cpu", "vit_cpu"),
            strategies=strategies(gammas=(0.5, 0.75)),
            tasks=_pairs("new_classes", "inversion"),
            seeds=(0, 1, 2),
            budget=Budget(steps=30, batch_size=16, image_size=32, lr=1e-3, eval_every=6),
            pretraining=Pretraining(steps=300, batch_size=64, lr=5e-3, warmup_steps=30, min_accuracy=0.85),
        ),
        Grid(
            backbones=("efficientnet_lite0",),
            strategies=(strategy("full"), strategy("linear_probe"), strategy("lp_ft"),
                        strategy("layer_decay", gamma=0.75), strategy("surgical", block="last")),
            tasks=(from_imagenet("sklearn_digits", shots_per_class=20, test_per_class=20),),
            seeds=(0,),
            budget=Budget(steps=20, batch_size=16, image_size=64, lr=1e-3, eval_every=4),
            probes=Probes(num_crops=32, image_size=160),
        ),
    ),
)

FULL = Suite(
    "full",
    "Every CPU backbone (MobileNetV3 too), every pair, a wider layer-decay sweep, 3 seeds; "
    "EfficientNet-Lite0 on textures and sklearn digits with every strategy, probes at 224 px. "
    "Several hours on 2 CPU cores (about 4, by the quick suite's per-step costs).",
    (
        Grid(
            backbones=tuple(CPU_BACKBONES),
            strategies=strategies(gammas=(0.3, 0.5, 0.65, 0.75, 0.9)),
            tasks=_pairs("new_classes", "rotation", "inversion", "noise", "digits_domain", "textures"),
            seeds=(0, 1, 2),
            budget=Budget(steps=150, batch_size=32, image_size=32, lr=1e-3, eval_every=10),
            pretraining=Pretraining(steps=600, batch_size=64, lr=5e-3, warmup_steps=60, min_accuracy=0.9),
        ),
        Grid(
            backbones=("efficientnet_lite0",),
            strategies=strategies(gammas=(0.5, 0.75)),
            tasks=(from_imagenet("textures", **_TEXTURES),
                   from_imagenet("sklearn_digits", shots_per_class=20, test_per_class=50)),
            seeds=(0, 1, 2),
            budget=Budget(steps=60, batch_size=16, image_size=96, lr=1e-3, eval_every=6),
            probes=Probes(num_crops=64, image_size=224),
        ),
    ),
)

GPU = Suite(
    "gpu",
    "One H200 for about 8 minutes (bf16 autocast, channels_last): the real-size GPU_BACKBONES at "
    "224 px, suite-pretrained on MNIST 0-4, on the new-classes and inverted-digits targets, 11 "
    "strategies, 2 seeds; EfficientNet-Lite0 on textures at 224 px with the same strategies. "
    "Sized by estimate (about 2-3 s a cell); not runnable on CPU in reasonable time.",
    (
        Grid(
            backbones=tuple(GPU_BACKBONES),
            strategies=strategies(gammas=(0.5, 0.75)),
            tasks=_pairs("new_classes", "inversion"),
            seeds=(0, 1),
            budget=Budget(steps=50, batch_size=64, image_size=GPU_IMAGE_SIZE, lr=1e-3, eval_every=10),
            pretraining=Pretraining(steps=200, batch_size=128, lr=1e-3, warmup_steps=20, min_accuracy=0.9),
        ),
        Grid(
            backbones=("efficientnet_lite0",),
            strategies=strategies(gammas=(0.5, 0.75)),
            tasks=(from_imagenet("textures", **{**_TEXTURES, "crop_size": 224}),),
            seeds=(0, 1),
            budget=Budget(steps=50, batch_size=64, image_size=GPU_IMAGE_SIZE, lr=1e-3, eval_every=10),
            probes=Probes(num_crops=64, image_size=GPU_IMAGE_SIZE),
        ),
    ),
)

SUITES: dict[str, Suite] = {suite.name: suite for suite in (SMOKE, QUICK, FULL, GPU)}
