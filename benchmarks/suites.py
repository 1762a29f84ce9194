"""The benchmark suites, as data: experiments that mirror published findings, and their hypotheses.

A :class:`Suite` holds :class:`Experiment` s and pre-registered :class:`Hypothesis` es. An experiment
is one source model (pretrained by the suite, or ImageNet EfficientNet-Lite0) fine-tuned on target
tasks with strategies, over seeds, each strategy at the same number of log-spaced learning rates
around its own family's usual value. Every (target, strategy, seed, lr) is one independent
:class:`Cell` (see :mod:`benchmarks.runner`); the report picks each strategy's lr on validation and
tests the hypotheses on the test split (see :mod:`benchmarks.report`).

The protocol, the same for every strategy:

* **Seeds** vary the target training/validation draw, the new head's initialisation and the batch
  order; the test pool (>= 500 images) is fixed, so differences are paired.
* **Equal tuning**: every strategy gets ``len(LR_FACTORS)`` (or ``Experiment.lr_factors``) candidates: its family lr
  (``Strategy.lr``) times each factor. For closed-form probes and the pixel baseline the candidates
  are the inverse L2 strength ``C`` of scikit-learn's logistic regression.
* **Schedule**: AdamW, linear warm-up then cosine to 0, ``Budget.steps`` steps of ``batch_size``.
* **BatchNorm**: frozen (eval mode, running statistics kept) for pretrained backbones
  (``lrgroups.norms.freeze_norm_stats``); trained for scratch rows.
* **Baselines** on every target: ``scratch`` (same architecture, random init, same budget and
  tuning) and ``pixel`` (logistic regression on raw pixels): the transfer gate.

Example:
    >>> [e.name for e in SUITES["quick"].experiments]
    ['q1_surgical', 'q2_ulmfit', 'q3_lp_ft']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

Kwargs = tuple[tuple[str, Any], ...]

#: ULMFiT's discriminative factor: each layer's lr is the next one's / 2.6 (Howard & Ruder, 2018).
ULMFIT_GAMMA = 1 / 2.6
#: The lr factors of every strategy: three log-spaced candidates around the family's usual value.
LR_FACTORS = (1 / 3, 1.0, 3.0)
#: The C factors of closed-form probes and the pixel baseline (same count as LR_FACTORS).
C_FACTORS = (0.1, 1.0, 10.0)


def _kwargs(mapping: Mapping[str, Any]) -> Kwargs:
    return tuple(sorted(mapping.items()))


@dataclass(frozen=True)
class Strategy:
    """A fine-tuning strategy of a cell.

    ``kind``: ``"finetune"`` (``lrgroups.recipes.RECIPES[recipe](**kwargs)`` on the pretrained
    backbone), ``"scratch"`` (the same recipe on a randomly initialised backbone, BatchNorm trained),
    ``"probe"`` (closed-form logistic regression on the frozen backbone's features,
    ``lrgroups.recipes.fit_linear_probe``) or ``"pixel"`` (logistic regression on raw pixels).
    ``lr`` is the centre of the candidate grid: AdamW's lr, or ``C`` for probe and pixel.
    ``wise`` also evaluates WiSE-FT interpolations between the start and the end of the run.
    """

    name: str
    kind: str
    recipe: str = ""
    kwargs: Kwargs = ()
    lr: float = 1e-3
    wise: bool = False

    @property
    def grid(self) -> tuple[float, ...]:
        """The candidate lrs (or Cs): ``lr`` times each factor."""
        factors = C_FACTORS if self.kind in ("probe", "pixel") else LR_FACTORS
        return tuple(float(f"{self.lr * factor:.3g}") for factor in factors)


def finetune(name: str, recipe: str, lr: float = 1e-3, wise: bool = False, **kwargs: Any) -> Strategy:
    """A strategy built from a library recipe."""
    return Strategy(name, "finetune", recipe, _kwargs(kwargs), lr, wise)


def scratch(lr: float = 1e-2) -> Strategy:
    """The scratch baseline: full fine-tuning of a randomly initialised backbone (family lr ``lr``)."""
    return Strategy("scratch", "scratch", "full", (), lr)


PIXEL = Strategy("pixel", "pixel", lr=1.0)
LINEAR_PROBE = Strategy("linear_probe", "probe", lr=1.0)


@dataclass(frozen=True)
class Source:
    """Where a cell's backbone comes from.

    ``kind="pretrain"``: the suite trains ``backbone`` from scratch on ``dataset`` classes
    ``classes`` (per class, pool positions ``train_pool`` for training and ``test_pool`` for the
    source test set), AdamW with warm-up and cosine; it must reach ``min_accuracy`` on the source
    test set (the gate). ``kind="imagenet"``: the shipped ImageNet weights, nothing trained.
    """

    kind: str
    dataset: str = ""
    classes: tuple[int, ...] = ()
    train_pool: tuple[int, int] = (0, 0)
    test_pool: tuple[int, int] = (0, 0)
    steps: int = 0
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 0
    weight_decay: float = 0.05
    min_accuracy: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Target:
    """A target task: ``dataset`` classes ``classes`` (labels 0..n-1, or ``label_map[i]`` for class
    i: an output-level shift), optionally every image corrupted (``shift``: an input-level shift,
    see ``benchmarks.data.corrupt``). Per class, ``shots`` training and ``val_shots`` validation
    images are drawn by the cell seed from pool positions ``train_pool``; the test set is pool
    positions ``test_pool`` (fixed). ``ood``: a corruption of the test set reported as OOD accuracy."""

    name: str
    dataset: str
    classes: tuple[int, ...]
    shots: int
    val_shots: int
    train_pool: tuple[int, int]
    test_pool: tuple[int, int]
    shift: str | None = None
    label_map: tuple[int, ...] | None = None
    ood: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Budget:
    """Every fine-tuning cell of an experiment: AdamW steps and batch size, warm-up steps, weight
    decay, and a validation evaluation every ``eval_every`` steps."""

    steps: int
    batch_size: int
    eval_every: int
    warmup_steps: int
    weight_decay: float = 0.0


@dataclass(frozen=True)
class Experiment:
    """One question: a backbone from ``source`` fine-tuned on ``targets`` with ``strategies`` over
    ``seeds``. ``keep_source_head``: the label space is the source's, the source head stays (Lee et
    al.'s protocol); else a new zero-initialised head. ``bn``: ``"frozen"`` (every BatchNorm of a
    pretrained backbone in eval mode) or ``"train"`` (statistics follow the target batches, as in
    Lee et al.'s fine-tuning; the library keeps the BatchNorm of frozen blocks in eval mode, so only
    the tuned block's statistics move). ``gate_margin``: how far the best pretrained
    strategy must beat the best of scratch and pixel (test accuracy) for the target to count as a
    transfer task."""

    name: str
    question: str
    backbone: str
    source: Source
    targets: tuple[Target, ...]
    strategies: tuple[Strategy, ...]
    seeds: tuple[int, ...]
    budget: Budget
    image_size: int = 28
    keep_source_head: bool = False
    gate_margin: float = 0.05
    bn: str = "frozen"
    lr_factors: tuple[float, ...] | None = None

    def strategy(self, name: str) -> Strategy:
        return next(s for s in self.strategies if s.name == name)

    def grid(self, strategy: Strategy) -> tuple[float, ...]:
        """A strategy's candidate lrs: ``strategy.grid``, or its lr times ``lr_factors`` when set (a
        config file's lr grid; probe and pixel keep their C factors)."""
        if self.lr_factors is None or strategy.kind in ("probe", "pixel"):
            return strategy.grid
        return tuple(float(f"{strategy.lr * factor:.3g}") for factor in self.lr_factors)


@dataclass(frozen=True)
class Hypothesis:
    """A pre-registered hypothesis: on ``experiment`` / ``target``, ``better`` beats ``worse`` on
    ``metric`` (paired over seeds, each at its validation-selected lr) by at least ``min_effect``.
    ``mirrors``: the published finding; ``published``: its number."""

    name: str
    mirrors: str
    experiment: str
    target: str
    metric: str
    better: str
    worse: str
    min_effect: float
    published: str

    @property
    def comparison(self) -> str:
        return f"{self.better} > {self.worse}"


@dataclass(frozen=True)
class Cell:
    """One run: an experiment's target, strategy, seed and candidate lr."""

    experiment: Experiment = field(repr=False)
    target: Target
    strategy: Strategy
    seed: int
    lr: float

    @property
    def label(self) -> str:
        return f"{self.experiment.name} / {self.target.name} / {self.strategy.name} / seed {self.seed} / lr {self.lr:g}"

    def config(self) -> dict[str, Any]:
        """Everything that determines this run's numbers (besides the environment)."""
        experiment = self.experiment
        return {
            "experiment": experiment.name,
            "backbone": experiment.backbone,
            "image_size": experiment.image_size,
            "keep_source_head": experiment.keep_source_head,
            "bn": experiment.bn,
            "source": asdict(experiment.source),
            "target": asdict(self.target),
            "strategy": {**asdict(self.strategy), "kwargs": dict(self.strategy.kwargs)},
            "budget": asdict(experiment.budget),
            "seed": self.seed,
            "lr": self.lr,
        }

    def key(self, environment: Mapping[str, Any]) -> str:
        return config_hash({**self.config(), "environment": dict(environment)})


def config_hash(config: Mapping[str, Any]) -> str:
    """16 hex digits of the sha256 of the canonical JSON of ``config``."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Suite:
    """A named set of experiments and hypotheses; ``cells()`` lists every run, seeds outermost.
    ``time_budget_s``: size the seeds at run time from a timed training step (the GPU suite)."""

    name: str
    description: str
    experiments: tuple[Experiment, ...]
    hypotheses: tuple[Hypothesis, ...] = ()
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        names = {e.name: e for e in self.experiments}
        for h in self.hypotheses:
            experiment = names.get(h.experiment)
            if experiment is None or h.target not in {t.name for t in experiment.targets}:
                raise ValueError(f"hypothesis {h.name}: no experiment/target {h.experiment}/{h.target}")
            missing = {h.better, h.worse} - {s.name for s in experiment.strategies} - _derived(experiment)
            if missing:
                raise ValueError(f"hypothesis {h.name}: unknown strategies {sorted(missing)}")

    def experiment(self, name: str) -> Experiment:
        return next(e for e in self.experiments if e.name == name)

    def cells(self) -> list[Cell]:
        seeds = sorted({seed for e in self.experiments for seed in e.seeds})
        return [Cell(e, target, strategy, seed, lr)
                for seed in seeds for e in self.experiments if seed in e.seeds
                for target in e.targets for strategy in e.strategies for lr in e.grid(strategy)]


#: WiSE-FT mixing coefficients evaluated after a ``wise`` strategy (Wortsman et al., 2022).
WISE_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _derived(experiment: Experiment) -> set[str]:
    """Rows the report derives from ``wise`` strategies: ``<name>+wise_<alpha>``."""
    return {f"{s.name}+wise_{alpha}" for s in experiment.strategies if s.wise for alpha in WISE_ALPHAS}


# --- Sources and targets -----------------------------------------------------------------------

#: Animal-MNIST, 1,000 per class: test pool 0:100, source training 200:800 (classes 0-4), 800:1000
#: kept for the input- and output-level shift targets of the same classes.
_ANIMAL04 = Source("pretrain", "animal", (0, 1, 2, 3, 4), train_pool=(200, 800), test_pool=(0, 100), steps=500,
                   batch_size=64, lr=3e-3, warmup_steps=50, min_accuracy=0.80)
_IMAGENET = Source("imagenet")


def _animal04_target(name: str, shots: int = 20, **kwargs: Any) -> Target:
    """Animal-MNIST classes 0-4 (the source's classes): training pool 800:1000 (disjoint from the
    source's 200:800), test pool 0:200 (the source test images, shifted)."""
    return Target(name, "animal", (0, 1, 2, 3, 4), shots, 40, (800, 1000), (0, 100), **kwargs)


def _q1(seeds: tuple[int, ...], budget: Budget, shots: int = 20, more: bool = False) -> Experiment:
    """``more``: also the middle block and full fine-tuning (the full suite)."""
    head = dict(train_head=False, lr=1e-2)
    return Experiment(
        "q1_surgical",
        "Lee et al. 2023: which block to tune depends on the shift (input-level: first; output-level: head); "
        "the tuned block's BatchNorm statistics follow the target batches (frozen blocks stay in eval mode)",
        "resnet_tiny", _ANIMAL04,
        (_animal04_target("contrast", shots, shift="contrast"),
         _animal04_target("noise", shots, shift="gaussian_noise"),
         *((_animal04_target("inversion", shots, shift="invert"),) if more else ()),
         _animal04_target("label_permutation", shots, label_map=(1, 2, 3, 4, 0))),
        (finetune("surgical_first", "surgical", block="first", **head),
         *((finetune("surgical_middle", "surgical", block="middle", **head),) if more else ()),
         finetune("surgical_last", "surgical", block="last", **head),
         finetune("surgical_head", "surgical", block="head", lr=1e-2),
         *((finetune("full", "full", lr=3e-3),) if more else ()),
         scratch(), PIXEL),
        seeds, budget, keep_source_head=True, bn="train",
    )


def _q2(seeds: tuple[int, ...], budget: Budget, shots: int = 20, more: bool = False) -> Experiment:
    """``more``: also layer decay 0.65 (the full suite)."""
    return Experiment(
        "q2_ulmfit",
        "ULMFiT (discriminative rates, gradual unfreezing), BEiT/MAE layer decay, L2-SP, LP-FT, WiSE-FT "
        "on new classes: Animal-MNIST 0-4 -> 5-9",
        "resnet_tiny", _ANIMAL04,
        (Target("new_classes", "animal", (5, 6, 7, 8, 9), shots, 40, (200, 1000), (0, 100)),),
        (finetune("full", "full", lr=3e-3),
         finetune("discriminative", "layer_decay", lr=1e-2, gamma=ULMFIT_GAMMA),
         finetune("gradual_unfreezing", "gradual_unfreezing", lr=1e-2, discriminative_gamma=ULMFIT_GAMMA),
         *((finetune("layer_decay_0.65", "layer_decay", lr=3e-3, gamma=0.65),) if more else ()),
         finetune("layer_decay_0.75", "layer_decay", lr=3e-3, gamma=0.75),
         # decoupled L2-SP pulls p toward p0 by lr * alpha per step: alpha = 3 pulls about half
         # way over 60 steps at lr 3e-3 (the paper's alpha = 0.1 was tuned for long SGD schedules)
         finetune("l2_sp", "l2_sp", lr=3e-3, alpha=3.0, beta=0.01),
         finetune("lp_ft", "lp_ft", lr=1e-2, wise=True, ft_lr_mult=0.1),
         LINEAR_PROBE, scratch(), PIXEL),
        seeds, budget,
    )


def _q3(seeds: tuple[int, ...], budget: Budget, shots: int = 20, image_size: int = 64) -> Experiment:
    return Experiment(
        "q3_lp_ft",
        "Kumar et al. 2022 (LP-FT) and Wortsman et al. 2022 (WiSE-FT): ImageNet EfficientNet-Lite0 on "
        "Animal-MNIST, OOD = the same test images corrupted",
        "lite0_top", _IMAGENET,
        (Target("animal10", "animal", tuple(range(10)), shots, 20, (100, 200), (0, 50), ood="mixed"),),
        (finetune("ft", "full", lr=1e-3),
         finetune("lp_ft", "lp_ft", lr=3e-3, wise=True, ft_lr_mult=0.1),
         LINEAR_PROBE, scratch(1e-3), PIXEL),
        seeds, budget, image_size=image_size,
    )


def _hypotheses(q3_name: str = "q3_lp_ft") -> tuple[Hypothesis, ...]:
    lee = "Lee et al. 2023 (surgical fine-tuning)"
    return (
        Hypothesis("H1a", lee, "q1_surgical", "contrast", "test_accuracy", "surgical_first", "surgical_last", 0.03,
                   "input-level shifts (CIFAR-10-C, ImageNet-C): first block tuned best"),
        Hypothesis("H1b", lee, "q1_surgical", "noise", "test_accuracy", "surgical_first", "surgical_last", 0.03,
                   "input-level shifts (CIFAR-10-C, ImageNet-C): first block tuned best"),
        Hypothesis("H1c", lee, "q1_surgical", "label_permutation", "test_accuracy", "surgical_head",
                   "surgical_first", 0.03, "output-level shift (CIFAR-Flip): last layer tuned best"),
        Hypothesis("H2a", "Howard & Ruder 2018 (ULMFiT discriminative fine-tuning)", "q2_ulmfit", "new_classes",
                   "test_accuracy", "discriminative", "full", 0.02,
                   "Table 6, IMDb val error: full 5.86% -> full+discr 5.55%"),
        Hypothesis("H2b", "Howard & Ruder 2018 (ULMFiT gradual unfreezing)", "q2_ulmfit", "new_classes",
                   "test_accuracy", "gradual_unfreezing", "full", 0.02,
                   "Table 7, IMDb val error: Freez+discr+stlr 5.00% (lowest of the classifier fine-tunings)"),
        Hypothesis("H2c", "Bao et al. 2022 / He et al. 2022 (BEiT/MAE layer decay)", "q2_ulmfit", "new_classes",
                   "test_accuracy", "layer_decay_0.75", "full", 0.02, "layer decay 0.65-0.75 used for every fine-tuning"),
        Hypothesis("H2d", "Li et al. 2018 (L2-SP)", "q2_ulmfit", "new_classes", "retention_precise_bn",
                   "l2_sp", "full", 0.02, "L2-SP keeps the solution near the pretrained weights"),
        Hypothesis("H3a", "Kumar et al. 2022 (LP-FT)", q3_name, "animal10", "ood_accuracy", "lp_ft", "ft", 0.02,
                   "10 shifts, average: LP-FT +10 pp OOD, +1 pp ID over fine-tuning"),
        Hypothesis("H3b", "Kumar et al. 2022 (FT distorts features)", q3_name, "animal10", "ood_cka", "lp_ft", "ft",
                   0.02, "LP-FT changes pretrained features less than FT"),
        Hypothesis("H3c", "Wortsman et al. 2022 (WiSE-FT)", q3_name, "animal10", "ood_accuracy", "lp_ft+wise_0.5",
                   "lp_ft", 0.01, "ImageNet shifts: +4 to 6 pp OOD over the fine-tuned end point"),
    )


# --- The suites --------------------------------------------------------------------------------

_FT_BUDGET = Budget(steps=60, batch_size=25, eval_every=15, warmup_steps=6)

QUICK = Suite(
    "quick",
    "Three questions mirroring published findings, 5 seeds (8 for Q3), 3 lrs per strategy, scratch and pixel "
    "baselines on every target; at most 10 minutes on 2 CPU cores, source pretraining included.",
    (_q1((0, 1, 2, 3, 4), _FT_BUDGET), _q2((0, 1, 2, 3, 4), _FT_BUDGET, shots=10),
     _q3(tuple(range(8)), _FT_BUDGET)),
    _hypotheses(),
)

_SMOKE_BUDGET = Budget(steps=8, batch_size=10, eval_every=4, warmup_steps=2)
_SMOKE_Q1 = _q1((0, 1), _SMOKE_BUDGET, shots=4)


def _smoke() -> Suite:
    q1 = Experiment(**{**{f: getattr(_SMOKE_Q1, f) for f in _SMOKE_Q1.__dataclass_fields__},
                       "source": Source(**{**asdict(_ANIMAL04), "steps": 30, "min_accuracy": 0.3,
                                           "train_pool": (200, 240), "test_pool": (0, 20)}),
                       "targets": _SMOKE_Q1.targets[2:],
                       "strategies": tuple(s for s in _SMOKE_Q1.strategies
                                           if s.name in ("surgical_first", "surgical_head", "scratch", "pixel"))})
    q3 = _q3((0, 1), _SMOKE_BUDGET, shots=4, image_size=32)
    q3 = Experiment(**{**{f: getattr(q3, f) for f in q3.__dataclass_fields__},
                       "targets": (Target("animal10", "animal", tuple(range(10)), 4, 4, (100, 110), (0, 10),
                                          ood="mixed"),)})
    hypotheses = (
        Hypothesis("S1", "Lee et al. 2023", "q1_surgical", "label_permutation", "test_accuracy", "surgical_head",
                   "surgical_first", 0.0, "machinery check"),
        Hypothesis("S2", "Kumar et al. 2022", "q3_lp_ft", "animal10", "ood_accuracy", "lp_ft", "ft", 0.0,
                   "machinery check"),
        Hypothesis("S3", "Wortsman et al. 2022", "q3_lp_ft", "animal10", "ood_accuracy", "lp_ft+wise_0.5", "lp_ft",
                   0.0, "machinery check"),
    )
    return Suite("smoke", "CI: the quick suite's machinery at toy size (2 seeds, a few steps); checks code, not "
                 "science.", (q1, q3), hypotheses)


SMOKE = _smoke()

_FULL_BUDGET = Budget(steps=300, batch_size=25, eval_every=20, warmup_steps=30)
FULL = Suite(
    "full",
    "The quick suite with 10 seeds, 50 shots per class and 3x the steps (hours on 2 CPU cores).",
    (_q1(tuple(range(10)), _FULL_BUDGET, shots=50, more=True), _q2(tuple(range(10)), _FULL_BUDGET, shots=50, more=True),
     _q3(tuple(range(10)), _FULL_BUDGET, shots=50, image_size=96)),
    _hypotheses(),
)

def _gpu_lp_ft(backbone: str, image_size: int) -> Experiment:
    q3 = _q3(tuple(range(8)), Budget(steps=200, batch_size=64, eval_every=50, warmup_steps=20), shots=50,
             image_size=image_size)
    strategies = (finetune("ft", "full", lr=1e-4), finetune("lp_ft", "lp_ft", lr=3e-4, wise=True, ft_lr_mult=0.1),
                  LINEAR_PROBE, scratch(1e-3), PIXEL)
    return Experiment(**{**{f: getattr(q3, f) for f in q3.__dataclass_fields__},
                         "name": f"g_lp_ft_{backbone}", "backbone": backbone, "strategies": strategies})


def _gpu_surgical() -> Experiment:
    """Lee et al.'s protocol on ImageNet Lite0 at 224 px: new head trained with the tuned block."""
    head = dict(train_head=True, lr=1e-3)
    return Experiment(
        "g_surgical_lite0_full", "Lee et al. 2023 on ImageNet EfficientNet-Lite0 at 224 px: Animal-MNIST with "
        "input-level corruptions, a new head trained with the tuned block", "lite0_full", _IMAGENET,
        (Target("contrast10", "animal", tuple(range(10)), 50, 20, (100, 300), (0, 50), shift="contrast"),
         Target("noise10", "animal", tuple(range(10)), 50, 20, (100, 300), (0, 50), shift="gaussian_noise")),
        (finetune("surgical_first", "surgical", block="first", **head),
         finetune("surgical_last", "surgical", block="last", **head),
         finetune("surgical_head", "surgical", block="head", lr=1e-2),
         scratch(1e-3), PIXEL),
        tuple(range(8)), Budget(steps=200, batch_size=64, eval_every=50, warmup_steps=20), image_size=224, bn="train",
    )


def _gpu_hypotheses() -> tuple[Hypothesis, ...]:
    out = []
    for backbone in ("lite0_full", "lite2_full"):
        for h in _hypotheses(f"g_lp_ft_{backbone}")[-3:]:
            out.append(Hypothesis(**{**asdict(h), "name": f"{h.name}-{backbone.split('_')[0]}"}))
    lee = "Lee et al. 2023 (surgical fine-tuning)"
    out += [Hypothesis("G1a", lee, "g_surgical_lite0_full", "contrast10", "test_accuracy", "surgical_first",
                       "surgical_last", 0.03, "input-level shifts: first block tuned best"),
            Hypothesis("G1b", lee, "g_surgical_lite0_full", "noise10", "test_accuracy", "surgical_first",
                       "surgical_last", 0.03, "input-level shifts: first block tuned best")]
    return tuple(out)


GPU = Suite(
    "gpu",
    "One GPU (bf16 autocast, channels_last), about 8 minutes: real ImageNet EfficientNet-Lite0 (224 px) and "
    "Lite2 (260 px), whole networks: LP / FT / LP-FT / WiSE-FT on Animal-MNIST ID and corrupted OOD, and "
    "Lee et al.'s surgical protocol; up to 8 seeds, sized at run time from a timed training step.",
    (_gpu_lp_ft("lite0_full", 224), _gpu_lp_ft("lite2_full", 260), _gpu_surgical()),
    _gpu_hypotheses(),
    time_budget_s=420.0,
)

SUITES: dict[str, Suite] = {suite.name: suite for suite in (SMOKE, QUICK, FULL, GPU)}
