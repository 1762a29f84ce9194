"""The benchmark suites, as data: experiments that mirror published findings, and their hypotheses.

A :class:`Suite` holds :class:`Experiment` s and pre-registered :class:`Hypothesis` es. An experiment
is a source model (pretrained by the suite from ``Experiment.source_seeds``, or ImageNet
EfficientNet-Lite0) fine-tuned on target tasks with strategies, over seeds, each strategy at the
same number of log-spaced learning rates around its own family's usual value. Every (target,
strategy, seed, lr) is one independent :class:`Cell` (see :mod:`benchmarks.runner`); the report
picks each strategy's lr on validation and tests the hypotheses on the test split (see
:mod:`benchmarks.report`).

The protocol, the same for every strategy:

* **Seeds** vary the target training/validation draw, the new head's initialisation, the batch
  order and, for suite-pretrained sources, the source model (seed ``s`` fine-tunes the source
  pretrained with ``source_seeds[s % len(source_seeds)]``), so the source model's variance is
  inside every interval; the test pool (>= 500 images) is fixed, so differences are paired.
* **Equal tuning**: every strategy gets ``len(LR_FACTORS)`` (or ``Experiment.lr_factors``) candidates:
  its family lr (``Strategy.lr``) times each factor; a choice at a grid edge extends the grid
  (:mod:`benchmarks.selection`). Closed-form probes get the ``PROBE_CS`` values of scikit-learn's
  inverse L2 strength ``C`` on standardised features (the pixel baseline ``C_FACTORS``).
* **Schedule**: AdamW, linear warm-up then cosine to 0, ``Budget.steps`` steps of ``batch_size``;
  validation every ``eval_every`` steps (the convergence curves), and with ``track_forgetting``
  also test accuracy and source retention (precise BN) at every evaluation.
* **BatchNorm**: frozen (eval mode, running statistics kept) for pretrained backbones
  (``lrgroups.norms.freeze_norm_stats``); trained for scratch rows.
* **Baselines** on every target: ``scratch`` (same architecture, random init, same budget and
  tuning) and ``pixel`` (logistic regression on raw pixels): the transfer gate.

Example:
    >>> [e.name for e in SUITES["quick"].experiments]
    ['q1_surgical', 'q2_ulmfit', 'q3_lp_ft']
    >>> q2 = SUITES["quick_replication"].experiment("q2_ulmfit")
    >>> q2.seeds[:3], q2.source_seeds[:3], q2.unit
    ((200, 201, 202), (200, 201, 202), 'seed (own source model)')
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Kwargs = tuple[tuple[str, Any], ...]

#: Where the committed pre-registrations live (one JSON file per confirmatory suite).
PREREGISTRATION_DIR = Path(__file__).parent / "preregistration"

#: ULMFiT's discriminative factor: each layer's lr is the next one's / 2.6 (Howard & Ruder, 2018).
ULMFIT_GAMMA = 1 / 2.6
#: The lr factors of every strategy: three log-spaced candidates around the family's usual value.
LR_FACTORS = (1 / 3, 1.0, 3.0)
#: The C factors of the pixel baseline (same count as LR_FACTORS).
C_FACTORS = (0.1, 1.0, 10.0)
#: The C values of every closed-form linear probe on standardised features: the linear_probe
#: strategy's grid, and the candidates LP-FT's probe is chosen from on validation, per seed.
PROBE_CS = (0.001, 0.01, 0.1, 1.0)
#: Metrics a hypothesis or precondition may name: per-run measurements of the runner, and what the
#: report derives per run (``retention_at_match``, ``effective_robustness`` = OOD / ID accuracy).
HYPOTHESIS_METRICS = ("test_accuracy", "ood_accuracy", "val_accuracy", "retention_precise_bn",
                      "retention_weights_only", "backward_transfer", "ood_cka", "test_cka", "id_cka", "val_auc",
                      "val_at_quarter", "retention_at_match", "effective_robustness")


#: Kinds of hypothesis: the effect is at least the minimum effect, or above minus the margin.
HYPOTHESIS_KINDS = ("superiority", "noninferiority")


def _kwargs(mapping: Mapping[str, Any]) -> Kwargs:
    return tuple(sorted(mapping.items()))


@dataclass(frozen=True)
class Strategy:
    """A fine-tuning strategy of a cell.

    ``kind``: ``"finetune"`` (``lrgroups.recipes.RECIPES[recipe](**kwargs)`` on the pretrained
    backbone), ``"scratch"`` (the same recipe on a randomly initialised backbone, BatchNorm trained),
    ``"probe"`` (closed-form logistic regression on the frozen backbone's standardised features,
    ``lrgroups.probe.fit_linear_probe``) or ``"pixel"`` (logistic regression on raw pixels).
    ``lr`` is the centre of the candidate grid: AdamW's lr, or ``C`` for the pixel baseline.
    ``wise`` also evaluates WiSE-FT interpolations between the start of the run and its end (for
    LP-FT the start is the zero-shot analogue: the pretrained body with the seed's
    validation-selected linear probe as head). ``fixed_lr``: a control run at this lr only, never
    tuned (lr 0 with BatchNorm statistics following the target batches is the BN-statistics-only
    control; lr 0 on the head alone is no adaptation).

    Two kwargs are read by the runner, not passed on as they are: for ``lp_ft``, the probe's ``C``
    is chosen per seed on validation from ``PROBE_CS`` (cached probes); for ``l2_sp``, ``pull``
    sets the strength per unit of the lr schedule, ``alpha = pull / sum_t(lr_t)``, so that the
    start's pull removes the same share ``1 - exp(-pull)`` of the drift at every candidate lr.
    """

    name: str
    kind: str
    recipe: str = ""
    kwargs: Kwargs = ()
    lr: float = 1e-3
    wise: bool = False
    fixed_lr: float | None = None

    @property
    def grid(self) -> tuple[float, ...]:
        """The candidate lrs (or Cs): ``lr`` times each factor; ``PROBE_CS`` for probes; a control's
        ``fixed_lr`` alone."""
        if self.fixed_lr is not None:
            return (self.fixed_lr,)
        if self.kind == "probe":
            return PROBE_CS
        factors = C_FACTORS if self.kind == "pixel" else LR_FACTORS
        return tuple(float(f"{self.lr * factor:.3g}") for factor in factors)


def finetune(name: str, recipe: str, lr: float = 1e-3, wise: bool = False, **kwargs: Any) -> Strategy:
    """A strategy built from a library recipe."""
    return Strategy(name, "finetune", recipe, _kwargs(kwargs), lr, wise)


def control(name: str, recipe: str, lr: float = 0.0, **kwargs: Any) -> Strategy:
    """A control at a fixed lr (never tuned): e.g. ``control("bn_only", "surgical", block="first")``
    trains nothing at lr 0 while the first block's BatchNorm statistics follow the target batches."""
    return Strategy(name, "finetune", recipe, _kwargs(kwargs), lr, False, fixed_lr=lr)


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
    source test set), AdamW with warm-up and cosine, seeded by ``seed``; it must reach
    ``min_accuracy`` on the source test set (the gate). ``kind="imagenet"``: the shipped ImageNet
    weights, nothing trained. ``kind="adapt"``: the shipped ImageNet weights of a whole
    EfficientNet-Lite trained on the source task the same way, with a new head (Lee et al.'s
    clean-source stage before the shifted targets).
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

    @property
    def trained(self) -> bool:
        """Whether the suite trains this source (``pretrain`` or ``adapt``): per source seed, gated."""
        return self.kind in ("pretrain", "adapt")


@dataclass(frozen=True)
class Target:
    """A target task: ``dataset`` classes ``classes`` (labels 0..n-1, or ``label_map[i]`` for class
    i: an output-level shift), optionally every image corrupted (``shift``: an input-level shift,
    see ``benchmarks.data.corrupt``). Per class, ``shots`` training and ``val_shots`` validation
    images are drawn by the cell seed from pool positions ``train_pool``; the test set is pool
    positions ``test_pool`` (fixed). An ImageFolder with ``train``/``test`` folders uses no pools
    (shots from ``train``, every ``test`` image): there both may be left out (``None``). ``ood``: corruptions of the test set, each reported as its
    own OOD accuracy (``ood_accuracy_<name>``) and averaged as ``ood_accuracy`` (a single name is
    accepted for one corruption)."""

    name: str
    dataset: str
    classes: tuple[int, ...]
    shots: int
    val_shots: int
    train_pool: tuple[int, int] | None = None
    test_pool: tuple[int, int] | None = None
    shift: str | None = None
    label_map: tuple[int, ...] | None = None
    ood: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.ood is None or isinstance(self.ood, str):
            object.__setattr__(self, "ood", () if not self.ood else (self.ood,))

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Budget:
    """Every fine-tuning cell of an experiment: AdamW steps and batch size, warm-up steps, weight
    decay, and a validation evaluation every ``eval_every`` steps; with ``track_forgetting``, test
    accuracy and source retention every ``forgetting_every`` steps (default: every evaluation)."""

    steps: int
    batch_size: int
    eval_every: int
    warmup_steps: int
    weight_decay: float = 0.0
    forgetting_every: int | None = None

    def scaled(self, factor: int) -> Budget:
        """The same schedule ``factor`` times as long (steps, warm-up and evaluation intervals)."""
        every = None if self.forgetting_every is None else self.forgetting_every * factor
        return dataclasses.replace(self, steps=self.steps * factor, warmup_steps=self.warmup_steps * factor,
                                   eval_every=self.eval_every * factor, forgetting_every=every)


@dataclass(frozen=True)
class Experiment:
    """One question: a backbone from ``source`` fine-tuned on ``targets`` with ``strategies`` over
    ``seeds``. ``keep_source_head``: the label space is the source's, the source head stays (Lee et
    al.'s protocol); else a new zero-initialised head. ``bn``: ``"frozen"`` (every BatchNorm of a
    pretrained backbone in eval mode) or ``"train"`` (statistics follow the target batches, as in
    Lee et al.'s fine-tuning; the library keeps the BatchNorm of frozen blocks in eval mode, so only
    the tuned block's statistics move). ``gate_margin``: how far the best pretrained
    strategy must beat the best of scratch and pixel (test accuracy) for the target to count as a
    transfer task. ``source_seeds``: the source-pretraining seeds (suite-pretrained sources);
    the seed at position ``i`` of ``seeds`` uses ``source_seeds[i % len(source_seeds)]`` (as many
    source seeds as seeds: every seed has its own source model, an independent unit).
    ``track_forgetting``: measure test accuracy and source retention at every evaluation (the
    matched-accuracy comparison). ``lrs``: pre-registered ``(target, strategy, lr)`` triples
    (:mod:`benchmarks.preregistration`): such a strategy runs at that lr only, on that target.
    ``skip``: ``(target, strategy)`` pairs that do not run (a control meaningless on that target).
    ``measure_retention``: measure source retention at the end of every cell (off where no
    hypothesis reads it: two precise-BN passes over the source data per cell saved). ``weights``:
    a ``timm:<name>`` backbone's pretrained weights from a local checkpoint file instead of the Hugging
    Face cache (a :class:`benchmarks.backbones.WeightsFile`: ``weights_file(path)``; a config gives the
    path), with an ``imagenet`` source; its SHA-256 is part of every cell key."""

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
    source_seeds: tuple[int, ...] = (0,)
    track_forgetting: bool = False
    lrs: tuple[tuple[str, str, float], ...] = ()
    skip: tuple[tuple[str, str], ...] = ()
    measure_retention: bool = True
    weights: str | None = None

    def strategy(self, name: str) -> Strategy:
        return next(s for s in self.strategies if s.name == name)

    def grid(self, strategy: Strategy, target: Target | str | None = None) -> tuple[float, ...]:
        """A strategy's candidate lrs on ``target``: the pre-registered lr alone when ``lrs`` has
        one; else ``strategy.grid``, or its lr times ``lr_factors`` when set (a config file's lr
        grid; probe and pixel keep their C values; a control keeps its fixed lr)."""
        name = target.name if isinstance(target, Target) else target
        registered = [lr for t, s, lr in self.lrs if s == strategy.name and t == name]
        if registered:
            return (float(registered[0]),)
        if self.lr_factors is None or strategy.kind in ("probe", "pixel") or strategy.fixed_lr is not None:
            return strategy.grid
        return tuple(float(f"{strategy.lr * factor:.3g}") for factor in self.lr_factors)

    def source_seed(self, seed: int) -> int | None:
        """The source-pretraining seed of cell seed ``seed`` (None for a shipped source)."""
        if not self.source.trained:
            return None
        position = self.seeds.index(seed) if seed in self.seeds else seed
        return self.source_seeds[position % len(self.source_seeds)]

    def source_for(self, seed: int) -> Source:
        """The source a cell of ``seed`` starts from (its pretraining seed set for suite-pretrained sources)."""
        if not self.source.trained:
            return self.source
        return dataclasses.replace(self.source, seed=self.source_seed(seed))

    @property
    def independent_sources(self) -> bool:
        """Whether no two seeds share a source model the suite pretrains (one source seed per seed)."""
        return len({self.source_seed(s) for s in self.seeds}) == len(self.seeds)

    @property
    def unit(self) -> str:
        """The statistical unit of the experiment's paired comparisons: ``seed`` when every seed is
        independent (its own source model, or shipped weights every seed shares by construction),
        else ``source model`` (seeds sharing a source are averaged into one unit)."""
        if not self.source.trained:
            return "seed (shared ImageNet weights)" if self.source.kind == "imagenet" else "seed"
        return "seed (own source model)" if self.independent_sources else "source model"

    def with_seeds(self, seeds: tuple[int, ...]) -> Experiment:
        """The experiment on ``seeds``, each with its own source model (source seed = seed)."""
        return dataclasses.replace(self, seeds=tuple(seeds), source_seeds=tuple(seeds))


@dataclass(frozen=True)
class Precondition:
    """A pre-registered condition of a hypothesis: the mean over seeds of ``metric`` of ``better``
    is at least that of ``worse`` (each at its validation-selected lr); ``reason`` says why the
    paper's claim needs it."""

    better: str
    worse: str
    metric: str
    reason: str

    @property
    def text(self) -> str:
        return f"{self.metric}: {self.better} >= {self.worse}"


@dataclass(frozen=True)
class Hypothesis:
    """A pre-registered hypothesis: on ``experiment`` / ``target``, ``better`` beats ``worse`` on
    ``metric`` (paired over seeds, each at its validation-selected lr) by at least ``min_effect``.
    ``mirrors``: the published finding; ``published``: its number; ``min_effect_source``: where
    the minimum effect comes from. ``preconditions``: when one fails, the verdict is *out of
    scope*. ``exploratory``: reported with its interval but given no verdict and left out of the
    Holm family. ``versus``: an interaction: the paired difference on ``target`` minus the one on
    target ``versus`` (Lee et al.'s crossover). ``kind``: ``"superiority"`` (the effect is at least
    ``min_effect``) or ``"noninferiority"`` (the effect is above ``-min_effect``, the margin: "better
    matches or beats worse")."""

    name: str
    mirrors: str
    experiment: str
    target: str
    metric: str
    better: str
    worse: str
    min_effect: float
    published: str
    min_effect_source: str = ""
    preconditions: tuple[Precondition, ...] = ()
    exploratory: bool = False
    versus: str = ""
    kind: str = "superiority"

    def __post_init__(self) -> None:
        if self.kind not in HYPOTHESIS_KINDS:
            raise ValueError(f"hypothesis {self.name}: unknown kind {self.kind!r}; known: {', '.join(HYPOTHESIS_KINDS)}")

    @property
    def comparison(self) -> str:
        sign = ">=" if self.kind == "noninferiority" else ">"
        text = f"{self.better} {sign} {self.worse}"
        return f"({text}) on {self.target} - on {self.versus}" if self.versus else text


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

    @property
    def source(self) -> Source:
        return self.experiment.source_for(self.seed)

    def config(self) -> dict[str, Any]:
        """Everything that determines this run's numbers (besides the environment)."""
        experiment = self.experiment
        return {
            "experiment": experiment.name,
            "backbone": experiment.backbone,
            "image_size": experiment.image_size,
            "keep_source_head": experiment.keep_source_head,
            "bn": experiment.bn,
            "track_forgetting": experiment.track_forgetting,
            **({} if experiment.measure_retention else {"measure_retention": False}),
            **({} if experiment.weights is None else {"weights": str(experiment.weights)}),
            "source": asdict(self.source),
            "target": asdict(self.target),
            "strategy": {**{k: v for k, v in asdict(self.strategy).items() if not (k == "fixed_lr" and v is None)},
                         "kwargs": dict(self.strategy.kwargs)},
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
    ``time_budget_s``: size the seeds at run time from a timed training step (the GPU suite).

    Raises:
        ValueError: a hypothesis names an unknown experiment, target, strategy or metric.
    """

    name: str
    description: str
    experiments: tuple[Experiment, ...]
    hypotheses: tuple[Hypothesis, ...] = ()
    time_budget_s: float | None = None
    preregistration: str = ""
    #: Hypotheses the pre-registration made exploratory: no seed count up to its maximum decides them.
    futile: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = {e.name: e for e in self.experiments}
        for h in self.hypotheses:
            experiment = names.get(h.experiment)
            targets = {t.name for t in experiment.targets} if experiment is not None else set()
            if experiment is None or h.target not in targets or (h.versus and h.versus not in targets):
                raise ValueError(f"hypothesis {h.name}: no experiment/target {h.experiment}/{h.target}"
                                 + (f" (versus {h.versus})" if h.versus else ""))
            known = {s.name for s in experiment.strategies} | derived_strategies(experiment)
            named = {h.better, h.worse} | {n for p in h.preconditions for n in (p.better, p.worse)}
            if named - known:
                raise ValueError(f"hypothesis {h.name}: unknown strategies {sorted(named - known)}; "
                                 f"known: {sorted(known)}")
            metrics = {h.metric} | {p.metric for p in h.preconditions}
            unknown = {m for m in metrics if m not in HYPOTHESIS_METRICS and not m.startswith("ood_accuracy_")}
            if unknown:
                raise ValueError(f"hypothesis {h.name}: unknown metrics {sorted(unknown)}; "
                                 f"known: {', '.join(HYPOTHESIS_METRICS)}, ood_accuracy_<corruption>")

    def experiment(self, name: str) -> Experiment:
        return next(e for e in self.experiments if e.name == name)

    def cells(self) -> list[Cell]:
        seeds = sorted({seed for e in self.experiments for seed in e.seeds})
        return [Cell(e, target, strategy, seed, lr)
                for seed in seeds for e in self.experiments if seed in e.seeds
                for target in e.targets for strategy in e.strategies if (target.name, strategy.name) not in e.skip
                for lr in e.grid(strategy, target)]

    def replication(self, seed_offset: int = 100, source_seed_offset: int = 2) -> Suite:
        """The same suite on disjoint seeds (each + ``seed_offset``) and other source-pretraining
        seeds (each + ``source_seed_offset``; an experiment whose every seed has its own source model
        keeps it so: source seed = seed), named ``<name>_replication``."""
        experiments = tuple(e.with_seeds(tuple(s + seed_offset for s in e.seeds))
                            if e.source.trained and e.source_seeds == e.seeds else
                            dataclasses.replace(e, seeds=tuple(s + seed_offset for s in e.seeds),
                                                source_seeds=tuple(s + source_seed_offset for s in e.source_seeds))
                            for e in self.experiments)
        return dataclasses.replace(self, name=f"{self.name}_replication", experiments=experiments,
                                   description=f"{self.description} Replication: seeds + {seed_offset}, "
                                               f"source-pretraining seeds + {source_seed_offset}.")


#: WiSE-FT mixing coefficients evaluated after a ``wise`` strategy (Wortsman et al., 2022: 11 values).
WISE_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


def derived_strategies(experiment: Experiment) -> set[str]:
    """The strategy names the report derives from ``wise`` strategies: ``<name>+wise_<alpha>``."""
    return {f"{s.name}+wise_{alpha}" for s in experiment.strategies if s.wise for alpha in WISE_ALPHAS}


# --- Sources and targets -----------------------------------------------------------------------

#: Animal-MNIST, 1,000 per class: test pool 0:100, source training 200:800 (classes 0-4), 800:1000
#: kept for the input- and output-level shift targets of the same classes.
_ANIMAL04 = Source("pretrain", "animal", (0, 1, 2, 3, 4), train_pool=(200, 800), test_pool=(0, 100), steps=500,
                   batch_size=64, lr=3e-3, warmup_steps=50, min_accuracy=0.80)
_IMAGENET = Source("imagenet")
#: The OOD corruptions of Q3's test set, each reported separately: blur and contrast act on
#: texture and intensity, mild noise on pixels, Sobel edge maps keep only shape (as ImageNet-Sketch).
Q3_OOD = ("blur", "contrast", "gaussian_noise_mild", "sobel")

_LEE = "Lee et al. 2023 (surgical fine-tuning)"
_LEE_MIN = "no published number retrieved (Table 1 unavailable offline): 3 pp, 15 of 500 test images"
_ULMFIT = "Howard & Ruder 2018 (ULMFiT)"
_HALF_T7 = "half the published relative error cut (IMDb, Table 7) at Q2's full-FT error in a pilot run (22%)"
_NO_NUMBER = "no published number: {}"


def _animal04_target(name: str, shots: int = 20, **kwargs: Any) -> Target:
    """Animal-MNIST classes 0-4 (the source's classes): training pool 800:1000 (disjoint from the
    source's 200:800), test pool 0:100 (the source test images, shifted)."""
    return Target(name, "animal", (0, 1, 2, 3, 4), shots, 40, (800, 1000), (0, 100), **kwargs)


def _q1(seeds: tuple[int, ...], budget: Budget, shots: int = 20, more: bool = False,
        controls: bool = False) -> Experiment:
    """``more``: also the middle block and full fine-tuning (the full suite). ``controls``: full
    fine-tuning and the two controls that name the mechanism: ``bn_only`` (lr 0 on the first block:
    only its BatchNorm statistics follow the target batches) and ``no_adaptation`` (lr 0 on the head:
    the source model as it is)."""
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
         *((finetune("full", "full", lr=3e-3),) if more or controls else ()),
         *((control("bn_only", "surgical", block="first", train_head=False),
            control("no_adaptation", "surgical", block="head")) if controls else ()),
         scratch(), PIXEL),
        seeds, budget, keep_source_head=True, bn="train", source_seeds=(0, 1), track_forgetting=True,
    )


def _q2(seeds: tuple[int, ...], budget: Budget, shots: int = 5, more: bool = False, test_images: int = 100,
        val_shots: int = 40) -> Experiment:
    """``more``: also layer decay 0.65 and 0.75 (the full suite, exploratory: a ViT recipe).
    ``test_images`` per class: pool positions ``[0, test_images)``, the shots and validation images
    drawn from the positions after them (at least from 200)."""
    return Experiment(
        "q2_ulmfit",
        "ULMFiT (discriminative rates, gradual unfreezing) and L2-SP on new classes: Animal-MNIST 0-4 -> 5-9, "
        f"{shots} shots per class",
        "resnet_tiny", _ANIMAL04,
        (Target("new_classes", "animal", (5, 6, 7, 8, 9), shots, val_shots, (max(200, test_images), 1000),
                (0, test_images)),),
        (finetune("full", "full", lr=3e-3),
         finetune("discriminative", "layer_decay", lr=1e-2, gamma=ULMFIT_GAMMA),
         finetune("gradual_unfreezing", "gradual_unfreezing", lr=1e-2, discriminative_gamma=ULMFIT_GAMMA,
                  unfreeze_fraction=0.5),
         *((finetune("layer_decay_0.65", "layer_decay", lr=3e-3, gamma=0.65),
            finetune("layer_decay_0.75", "layer_decay", lr=3e-3, gamma=0.75)) if more else ()),
         # alpha * sum_t lr_t = 1: the pull toward the start removes 1 - e^-1 = 63% of the drift at
         # every candidate lr (the paper's alpha = 0.1 was tuned for long SGD schedules)
         finetune("l2_sp", "l2_sp", lr=3e-3, pull=1.0, beta=0.01),
         LINEAR_PROBE, scratch(), PIXEL),
        seeds, budget, source_seeds=(0, 1), track_forgetting=True,
    )


def _q3(seeds: tuple[int, ...], budget: Budget, shots: int = 20, image_size: int = 64) -> Experiment:
    return Experiment(
        "q3_lp_ft",
        "Kumar et al. 2022 (LP-FT) and Wortsman et al. 2022 (WiSE-FT): ImageNet EfficientNet-Lite0 on "
        "Animal-MNIST, OOD = the same test images corrupted; stem and blocks 0-5 stay frozen (cached), so "
        "'top' FT and LP-FT train blocks 6+, conv_head and the head",
        "lite0_top", _IMAGENET,
        (Target("animal10", "animal", tuple(range(10)), shots, 20, (100, 200), (0, 50), ood=Q3_OOD),),
        (finetune("top_ft", "full", lr=1e-3),
         finetune("top_lp_ft", "lp_ft", lr=1e-3, wise=True, ft_lr_mult=1.0),
         LINEAR_PROBE, scratch(1e-3), PIXEL),
        seeds, budget, image_size=image_size,
    )


def _q1_hypotheses(experiment: str = "q1_surgical", suffix: str = "",
                   targets: tuple[str, ...] = ("contrast", "noise", "label_permutation")) -> tuple[Hypothesis, ...]:
    """Lee et al.'s hypotheses on ``experiment``, for those of its ``targets``; names end in ``suffix``."""
    lee_input = "input-level shifts (CIFAR-10-C, ImageNet-C): first block tuned best"
    out = (
        Hypothesis(f"H1a{suffix}", _LEE, experiment, "contrast", "test_accuracy", "surgical_first", "surgical_last",
                   0.03, lee_input, _LEE_MIN),
        Hypothesis(f"H1b{suffix}", _LEE, experiment, "noise", "test_accuracy", "surgical_first", "surgical_last", 0.03,
                   lee_input, _LEE_MIN),
        Hypothesis(f"H1c{suffix}", _LEE, experiment, "label_permutation", "test_accuracy", "surgical_head",
                   "surgical_last", 0.03, "output-level shift (CIFAR-Flip): last layer tuned best of all blocks",
                   _LEE_MIN),
    )
    return tuple(h for h in out if h.target in targets)


def _q1_control_hypotheses(experiment: str = "q1_surgical") -> tuple[Hypothesis, ...]:
    """Lee et al.'s crossover and headline, and the BatchNorm control, on Q1 with ``controls``."""
    return (
        Hypothesis("H1d", f"{_LEE}: the best block depends on the shift (crossover)", experiment, "contrast",
                   "test_accuracy", "surgical_first", "surgical_last", 0.03,
                   "first block best on input-level shifts, last layers best on output-level shifts (Fig. 1)",
                   _LEE_MIN, versus="label_permutation"),
        Hypothesis("H1e", f"{_LEE}: tuning the first block matches or beats full fine-tuning", experiment,
                   "contrast", "test_accuracy", "surgical_first", "full", 0.03,
                   "input-level shifts: surgical (first block) >= full fine-tuning (Table 1)",
                   "non-inferiority margin: " + _LEE_MIN, kind="noninferiority"),
        Hypothesis("H1f", "control: training the first block's weights adds to re-estimating its BatchNorm "
                   "statistics", experiment, "contrast", "test_accuracy", "surgical_first", "bn_only", 0.03,
                   "not a published claim: Lee et al. tune weights; a BN network's gain can be its statistics alone",
                   _NO_NUMBER.format("3 pp, as H1a")),
    )


def _q2_hypotheses(more: bool = False, experiment: str = "q2_ulmfit", suffix: str = "") -> tuple[Hypothesis, ...]:
    """ULMFiT's and L2-SP's hypotheses on ``experiment`` (names end in ``suffix``); ``more``: layer
    decay 0.75 as an exploratory row."""
    table7 = "Table 7 (classifier fine-tuning), IMDb error: full 6.87% -> "
    faster = _NO_NUMBER.format("ULMFiT sec. 3.2 states faster convergence; 3 pp = 6 validation images")
    forgetting = _NO_NUMBER.format("ULMFiT sec. 3.2 states less catastrophic forgetting; 2 pp of source accuracy")
    out = (
        Hypothesis(f"H2a{suffix}", f"{_ULMFIT}: discriminative fine-tuning", experiment, "new_classes", "test_accuracy",
                   "discriminative", "full", 0.021, table7 + "full+discr 5.57% (-19%; TREC-6 -9.5%, AG -3.3%)",
                   _HALF_T7),
        Hypothesis(f"H2b{suffix}", f"{_ULMFIT}: gradual unfreezing", experiment, "new_classes", "test_accuracy",
                   "gradual_unfreezing", "full", 0.024, table7 + "Freez+discr 5.39% (-21.5%)", _HALF_T7),
        # retired to exploratory (science review 4, sec. 2.3): its effect sits on the minimum effect and
        # is lr-confounded (discriminative's head lr is 3.3x full's); no practical seed count decides it
        Hypothesis(f"X2c{suffix}", f"{_ULMFIT}: discriminative rates converge faster", experiment, "new_classes",
                   "val_at_quarter", "discriminative", "full", 0.03, "qualitative (sec. 3.2)", faster,
                   exploratory=True),
        Hypothesis(f"H2d{suffix}", f"{_ULMFIT}: gradual unfreezing converges faster", experiment, "new_classes",
                   "val_auc", "gradual_unfreezing", "full", 0.02, "qualitative (sec. 3.2, Fig. 3)",
                   _NO_NUMBER.format("2 pp of normalised validation AUC")),
        Hypothesis(f"H2e{suffix}", f"{_ULMFIT}: discriminative rates forget less", experiment, "new_classes",
                   "retention_at_match", "discriminative", "full", 0.02, "qualitative (sec. 3.2)", forgetting),
        Hypothesis(f"H2f{suffix}", f"{_ULMFIT}: gradual unfreezing forgets less", experiment, "new_classes",
                   "retention_at_match", "gradual_unfreezing", "full", 0.02, "qualitative (sec. 3.2)", forgetting),
        Hypothesis(f"H2g{suffix}", "Li et al. 2018 (L2-SP)", experiment, "new_classes", "test_accuracy", "l2_sp", "full",
                   0.022, "Table 2, Stanford Dogs, ResNet-101 error: L2 18.6% -> L2-SP 14.9% (-20%)",
                   "half the published relative error cut at Q2's full-FT error in a pilot run (22%)"),
        Hypothesis(f"X2a{suffix}", "Li et al. 2018 (L2-SP) keeps the solution near the start", experiment, "new_classes",
                   "retention_at_match", "l2_sp", "full", 0.02, "qualitative", "exploratory", exploratory=True),
        *((Hypothesis(f"X2b{suffix}", "Bao et al. 2022 / He et al. 2022 (BEiT/MAE layer decay; a ViT recipe)", experiment,
                      "new_classes", "test_accuracy", "layer_decay_0.75", "full", 0.02,
                      "layer decay 0.65-0.75 used for every ViT fine-tuning", "exploratory", exploratory=True),)
          if more else ()),
    )
    return out


def _q3_hypotheses(experiment: str = "q3_lp_ft", ft: str = "top_ft", lp_ft: str = "top_lp_ft",
                   suffix: str = "") -> tuple[Hypothesis, ...]:
    kumar = "Kumar et al. 2022 (LP-FT)"
    lp_beats_ft_ood = Precondition("linear_probe", ft, "ood_accuracy",
                                   "Kumar et al. claim the effect where good features and a large shift make LP beat "
                                   "FT out of distribution")
    theta0_robust = Precondition(f"{lp_ft}+wise_0.0", lp_ft, "effective_robustness",
                                 "WiSE-FT's gain comes from the start model's (the linear probe's) effective "
                                 "robustness (OOD / ID) over the fine-tuned end point")
    return (
        Hypothesis(f"H3a{suffix}", kumar, experiment, "animal10", "ood_accuracy", lp_ft, ft, 0.05,
                   "10 shifts, average: LP-FT +10 pp OOD, +1 pp ID over fine-tuning", "half the published OOD gain",
                   (lp_beats_ft_ood,)),
        Hypothesis(f"H3b{suffix}", f"{kumar}: FT distorts features", experiment, "animal10", "ood_cka", lp_ft, ft,
                   0.02, "LP-FT changes pretrained features less than FT",
                   _NO_NUMBER.format("0.02 of linear CKA")),
        Hypothesis(f"H3c{suffix}", "Wortsman et al. 2022 (WiSE-FT)", experiment, "animal10", "ood_accuracy",
                   f"{lp_ft}+wise_0.5", lp_ft, 0.02, "ImageNet shifts: +4 to 6 pp OOD over the fine-tuned end point",
                   "half the smallest published gain", (theta0_robust,)),
        # retired to exploratory: about 100 seeds to decide (science review 4, sec. 2.3)
        Hypothesis(f"X3d{suffix}", f"{kumar}: LP-FT reaches its accuracy sooner", experiment, "animal10", "val_auc",
                   lp_ft, ft, 0.02, "qualitative (the probe starts the fine-tuning near its end)",
                   _NO_NUMBER.format("2 pp of normalised validation AUC"), exploratory=True),
        Hypothesis(f"X3a{suffix}", f"{kumar}: ID accuracy", experiment, "animal10", "test_accuracy", lp_ft, ft, 0.01,
                   "+1 pp ID", "exploratory", exploratory=True),
        Hypothesis(f"X3b{suffix}", f"{kumar}: features change less on ID training images", experiment, "animal10",
                   "id_cka", lp_ft, ft, 0.02, "differential distortion (sec. 4)", "exploratory", exploratory=True),
    )


def _hypotheses(more: bool = False) -> tuple[Hypothesis, ...]:
    return _q1_hypotheses() + _q2_hypotheses(more) + _q3_hypotheses()


# --- The suites --------------------------------------------------------------------------------

_FT_BUDGET = Budget(steps=60, batch_size=25, eval_every=5, warmup_steps=6, forgetting_every=10)

#: Seeds of the quick suite's tuning stage (each with its own source model); the confirmatory
#: stage's seeds start at QUICK_FIRST_SEED, its replication's at QUICK_FIRST_SEED + 100.
#: Eight for Q1 and Q2: the confirmatory seeds are sized on the upper confidence limit of the tuning
#: stage's sd (benchmarks.preregistration.SizingRule), 1.73x the sd at 4 seeds and 1.33x at 8. Q3
#: keeps 4 (its effects sit far from every boundary, and its cells cost the most).
QUICK_TUNING_SEEDS = tuple(range(8))
Q3_TUNING_SEEDS = tuple(range(4))
#: Q2's test images and validation shots per class. With 5 shots per class the paired difference of
#: two strategies' test accuracy on 100 test images per class was dominated by the test sample (a
#: pilot of 10 seeds at the registered lrs: per-seed sd 0.032 with 100 test images per class, 0.023
#: with 200); 500 test images and 100 validation images per class shrink that part.
Q2_TEST_IMAGES, Q2_VAL_SHOTS = 500, 100
QUICK_FIRST_SEED = 100
#: Q1 and Q3 read no curve metric: validation every 10 steps (the learning-curve figures), no
#: forgetting curve, and Q1 no retention at all (no Q1 hypothesis is about forgetting); Q2 keeps both
#: for H2d (validation AUC) and H2e/H2f (retention at matched accuracy). Q1's controls and full
#: fine-tuning run on the input-level shifts only (on the permuted labels lr 0 is at chance).
_Q1_BUDGET = dataclasses.replace(_FT_BUDGET, eval_every=10, forgetting_every=None)


def _quick_experiments(seeds: Mapping[str, tuple[int, ...]]) -> tuple[Experiment, ...]:
    """The quick suite's three questions, every seed with its own source model."""
    q1 = dataclasses.replace(_q1((), _Q1_BUDGET, controls=True), track_forgetting=False, measure_retention=False,
                             skip=tuple(("label_permutation", name) for name in ("full", "bn_only", "no_adaptation")))
    q3 = dataclasses.replace(_q3((), _FT_BUDGET), budget=_Q1_BUDGET)
    q2 = _q2((), _FT_BUDGET, shots=5, test_images=Q2_TEST_IMAGES, val_shots=Q2_VAL_SHOTS)
    return tuple(e.with_seeds(seeds[e.name]) for e in (q1, q2, q3))


def _quick_hypotheses() -> tuple[Hypothesis, ...]:
    return _q1_hypotheses() + _q1_control_hypotheses() + _q2_hypotheses() + _q3_hypotheses()


QUICK_TUNING = Suite(
    "quick_tuning",
    "The quick suite's tuning stage: every strategy on its lr grid (3 candidates, extended at grid edges), "
    f"{len(QUICK_TUNING_SEEDS)} seeds ({len(Q3_TUNING_SEEDS)} for Q3) each with its own source model; each strategy's "
    "lr is selected on validation "
    "pooled over the seeds and written into the pre-registration (benchmarks/preregistration/quick.json) that the "
    "confirmatory stage reads. Its verdicts are not results: its hypotheses size the confirmatory seeds.",
    _quick_experiments({"q1_surgical": QUICK_TUNING_SEEDS, "q2_ulmfit": QUICK_TUNING_SEEDS, "q3_lp_ft": Q3_TUNING_SEEDS}),
    _quick_hypotheses(),
)


def preregistered(name: str) -> dict[str, Any] | None:
    """The committed pre-registration ``benchmarks/preregistration/<name>.json`` (None if absent);
    see :mod:`benchmarks.preregistration`."""
    path = PREREGISTRATION_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def confirmatory(tuning: Suite, registration: Mapping[str, Any], name: str, first_seed: int) -> Suite:
    """The confirmatory stage of ``tuning``: each experiment on ``registration["seeds"][experiment]``
    fresh seeds from ``first_seed`` (each with its own source model), every strategy at its
    pre-registered lr only; the hypotheses the registration lists as ``futile`` (no seed count up
    to the maximum decides them, on the tuning stage's numbers) are exploratory."""
    experiments = []
    for e in tuning.experiments:
        lrs = tuple((r["target"], r["strategy"], float(r["lr"])) for r in registration["lrs"]
                    if r["experiment"] == e.name)
        seeds = tuple(range(first_seed, first_seed + int(registration["seeds"][e.name])))
        experiments.append(dataclasses.replace(e.with_seeds(seeds), lrs=lrs))
    seeds = ", ".join(f"{e.name} {len(e.seeds)}" for e in experiments)
    futile = set(registration.get("futile", ()))
    hypotheses = tuple(dataclasses.replace(h, exploratory=True) if h.name in futile else h for h in tuning.hypotheses)
    return dataclasses.replace(
        tuning, name=name, experiments=tuple(experiments), hypotheses=hypotheses,
        preregistration=str(registration.get("version", "")), futile=tuple(sorted(futile)),
        description=f"The confirmatory stage of {tuning.name}: fresh seeds ({seeds}), each with its own source "
        f"model, every strategy at its pre-registered lr (version {registration.get('version', '?')}).")


def _quick(registration: Mapping[str, Any]) -> Suite:
    suite = confirmatory(QUICK_TUNING, registration, "quick", QUICK_FIRST_SEED)
    n = {e.name: len(e.seeds) for e in suite.experiments}
    return dataclasses.replace(suite, description=(
        "Three questions mirroring published findings, confirmatory stage: surgical fine-tuning "
        f"({n['q1_surgical']} seeds, with full fine-tuning and the BN-statistics-only and no-adaptation controls), "
        f"ULMFiT and L2-SP ({n['q2_ulmfit']} seeds), LP-FT and WiSE-FT on ImageNet EfficientNet-Lite0 "
        f"({n['q3_lp_ft']} seeds); every seed with its own source model (Q3: the shipped ImageNet weights every seed "
        "shares); each strategy at the lr the tuning stage pre-registered (benchmarks/preregistration/quick.json, "
        f"version {registration.get('version', '?')}); scratch and pixel baselines on every target."))


_QUICK_REGISTRATION = preregistered("quick")
_QUICK_STAGES: tuple[Suite, ...] = ()
if _QUICK_REGISTRATION is not None:
    QUICK = _quick(_QUICK_REGISTRATION)
    QUICK_REPLICATION = QUICK.replication()
    _QUICK_STAGES = (QUICK, QUICK_REPLICATION)

#: The standard suite's suite-pretrained families: backbone (``benchmarks.backbones.SUITE_ARCHITECTURES``),
#: the tag of its experiments and hypotheses, its input size, and its source (the ViT needs twice
#: the pretraining steps at a lower lr to pass the source gate: 0.82 after 500 steps at 3e-3, 0.86-0.87
#: after 1,000 at 2e-3).
STANDARD_FAMILIES: tuple[tuple[str, str, int, Source], ...] = (
    ("resnet_tiny", "resnet", 28, _ANIMAL04),
    ("convnext_tiny", "convnext", 32, _ANIMAL04),
    ("vit_tiny", "vit", 28, dataclasses.replace(_ANIMAL04, lr=2e-3, steps=1000, warmup_steps=100)),
)
_BEIT = "Bao et al. 2022 (BEiT) / He et al. 2022 (MAE): layer-wise lr decay"


def _q2_lite0(seeds: tuple[int, ...]) -> Experiment:
    """ULMFiT and L2-SP on a real pretrained network: the ImageNet EfficientNet-Lite0 top (blocks 6+,
    conv_head, head; the lower features cached) on MNIST digits, a real domain change (photographs
    to handwriting). No source data: no retention."""
    q2 = _q2(seeds, _FT_BUDGET)
    return dataclasses.replace(
        q2, name="s2_lite0", backbone="lite0_top", source=_IMAGENET, image_size=64, track_forgetting=False,
        question="ULMFiT (discriminative rates, gradual unfreezing) and L2-SP on the ImageNet EfficientNet-Lite0 "
                 "top: MNIST digits, 10 shots per class",
        targets=(Target("digits", "mnist", tuple(range(10)), 10, 20, (100, 500), (0, 50)),),
        strategies=tuple(dataclasses.replace(s, lr=s.lr / 10) if s.kind in ("finetune", "scratch") else s
                         for s in q2.strategies))


def _standard_tuning() -> Suite:
    """The standard suite's tuning stage (the committed grid run ``results/standard-tuning``): per
    suite-pretrained family, Lee et al.'s contrast question (6 seeds) and the ULMFiT / L2-SP question
    (10 seeds), the ViT with BEiT/MAE layer decay, two source seeds alternating over the seeds; the
    ULMFiT / L2-SP question on the ImageNet EfficientNet-Lite0 top with MNIST digits (8 seeds); LP-FT
    and WiSE-FT on the ImageNet EfficientNet-Lite0 top (8 seeds). Hypotheses are named ``<quick
    name>-<family tag>``; the report states each per family, with a sign count across families."""
    experiments: list[Experiment] = []
    hypotheses: list[Hypothesis] = []
    for backbone, tag, image_size, source in STANDARD_FAMILIES:
        on_family = dict(backbone=backbone, image_size=image_size, source=source)
        q1 = _q1(tuple(range(6)), _FT_BUDGET)
        experiments.append(dataclasses.replace(
            q1, name=f"s1_{tag}", targets=q1.targets[:1], **on_family,
            strategies=tuple(s for s in q1.strategies if s.name in ("surgical_first", "surgical_last", "scratch",
                                                                     "pixel"))))
        q2 = _q2(tuple(range(10)), _FT_BUDGET)
        decay = (finetune("layer_decay_0.75", "layer_decay", lr=3e-3, gamma=0.75),) if tag == "vit" else ()
        experiments.append(dataclasses.replace(q2, name=f"s2_{tag}", strategies=q2.strategies[:4] + decay
                                               + q2.strategies[4:], **on_family))
        hypotheses += _q1_hypotheses(f"s1_{tag}", f"-{tag}", ("contrast",)) + _q2_hypotheses(False, f"s2_{tag}",
                                                                                             f"-{tag}")
        if decay:
            hypotheses.append(Hypothesis(
                f"H4-{tag}", _BEIT, f"s2_{tag}", "new_classes", "test_accuracy", "layer_decay_0.75", "full", 0.02,
                "layer decay 0.65 (BEiT) / 0.75 (MAE, ViT-B) in every ViT fine-tuning recipe",
                _NO_NUMBER.format("no ablation number retrieved offline; 2 pp, as Q2's accuracy hypotheses")))
    experiments.append(_q2_lite0(tuple(range(8))))
    hypotheses += tuple(dataclasses.replace(h, target="digits") for h in _q2_hypotheses(False, "s2_lite0", "-lite0")
                        if h.metric != "retention_at_match")
    experiments.append(dataclasses.replace(_q3(tuple(range(8)), _FT_BUDGET), name="s3_lite0"))
    hypotheses += _q3_hypotheses("s3_lite0", suffix="-lite0")
    return Suite(
        "standard_tuning",
        "The standard suite's tuning stage (every strategy on its lr grid): three architectures the suite "
        "pretrains on Animal-MNIST 0-4 (a ResNet-10-T, a ConvNeXt and a ViT, two source seeds each, alternating over "
        "the seeds) on Lee et al.'s contrast shift (6 seeds) and ULMFiT / L2-SP new classes (10 seeds; the ViT also "
        "with BEiT/MAE layer decay), and one ImageNet network, the EfficientNet-Lite0 top, on ULMFiT / L2-SP with "
        "MNIST digits and on LP-FT / WiSE-FT (8 seeds each). Its lrs are the standard suite's pre-registration "
        "(benchmarks/preregistration/standard.json).",
        tuple(experiments), tuple(hypotheses))


STANDARD_TUNING = _standard_tuning()
#: The standard suite's confirmatory seeds start here (disjoint from the quick suite's seeds and
#: source models: no experiment is analysed in two suites).
STANDARD_FIRST_SEED = 1000
_STANDARD_REGISTRATION = preregistered("standard")
_STANDARD_STAGES: tuple[Suite, ...] = ()
if _STANDARD_REGISTRATION is not None:
    STANDARD = dataclasses.replace(
        confirmatory(STANDARD_TUNING, _STANDARD_REGISTRATION, "standard", STANDARD_FIRST_SEED),
        description="Three self-pretrained toy architectures and one ImageNet network, confirmatory stage: a "
        "ResNet-10-T, a ConvNeXt and a ViT pretrained by the suite on Animal-MNIST 0-4 (80k-270k parameters, "
        "28-32 px; every seed with its own source model) on Lee et al.'s contrast shift and ULMFiT / L2-SP new "
        "classes (the ViT also with BEiT/MAE layer decay), and the ImageNet EfficientNet-Lite0 top on ULMFiT / "
        "L2-SP with MNIST digits and on LP-FT / WiSE-FT; each strategy at the lr the tuning stage pre-registered "
        "(benchmarks/preregistration/standard.json, version "
        f"{_STANDARD_REGISTRATION.get('version', '?')}). Verdicts per family, a sign count across families, a "
        "descriptive pooled mean.")
    STANDARD_REPLICATION = STANDARD.replication()
    _STANDARD_STAGES = (STANDARD, STANDARD_REPLICATION)

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
                                          ood=("contrast", "sobel")),)})
    machinery = "machinery check"
    hypotheses = (
        Hypothesis("S1", "Lee et al. 2023", "q1_surgical", "label_permutation", "test_accuracy", "surgical_head",
                   "surgical_first", 0.0, machinery),
        Hypothesis("S2", "Kumar et al. 2022", "q3_lp_ft", "animal10", "ood_accuracy", "top_lp_ft", "top_ft", 0.0,
                   machinery, preconditions=(Precondition("linear_probe", "top_ft", "ood_accuracy", machinery),)),
        Hypothesis("S3", "Wortsman et al. 2022", "q3_lp_ft", "animal10", "ood_accuracy", "top_lp_ft+wise_0.5",
                   "top_lp_ft", 0.0, machinery),
        Hypothesis("S4", "forgetting", "q1_surgical", "label_permutation", "retention_at_match", "surgical_head",
                   "surgical_first", 0.0, machinery),
    )
    return Suite("smoke", "CI: the quick suite's machinery at toy size (2 seeds, a few steps); checks code, not "
                 "science.", (q1, q3), hypotheses)


SMOKE = _smoke()
_GPU_BUDGET = Budget(steps=200, batch_size=64, eval_every=20, warmup_steps=20, forgetting_every=40)

_FULL_BUDGET = Budget(steps=300, batch_size=25, eval_every=20, warmup_steps=30)
FULL = Suite(
    "full",
    "The quick suite with 10 seeds, 50 shots per class and 5x the steps; layer decay on "
    "the CNN as an exploratory comparison.",
    (_q1(tuple(range(10)), _FULL_BUDGET, shots=50, more=True), _q2(tuple(range(10)), _FULL_BUDGET, shots=50, more=True),
     _q3(tuple(range(10)), _FULL_BUDGET, shots=50, image_size=96)),
    _hypotheses(more=True),
)


def _gpu_lp_ft(backbone: str, image_size: int) -> Experiment:
    """Kumar et al.'s protocol on a whole ImageNet Lite: LP-FT's FT stage on FT's own lr grid, the
    probe's C chosen on validation per seed (cached probes), 100 shots per class so that the probe
    does not interpolate (training cross-entropy > ``benchmarks.probes.DEGENERATE_CE``)."""
    q3 = _q3(tuple(range(8)), _GPU_BUDGET, shots=100, image_size=image_size)
    target = dataclasses.replace(q3.targets[0], train_pool=(100, 400))
    strategies = (finetune("ft", "full", lr=1e-4),
                  finetune("lp_ft", "lp_ft", lr=1e-4, wise=True, ft_lr_mult=1.0),
                  LINEAR_PROBE, scratch(1e-3), PIXEL)
    return dataclasses.replace(q3, name=f"g_lp_ft_{backbone}", backbone=backbone, targets=(target,),
                               strategies=strategies,
                               question=f"Kumar et al. 2022 / Wortsman et al. 2022 on the whole ImageNet {backbone}")


#: Lee et al.'s clean-source stage: ImageNet Lite0 trained on clean Animal-MNIST (all ten classes,
#: pool positions 300:900) before the corrupted targets, whose test images are the source test
#: images (pool 0:50) corrupted.
_ANIMAL_CLEAN = Source("adapt", "animal", tuple(range(10)), train_pool=(300, 900), test_pool=(0, 50), steps=300,
                       batch_size=64, lr=1e-3, warmup_steps=30, min_accuracy=0.85)


def _gpu_surgical() -> Experiment:
    """Lee et al.'s protocol on ImageNet Lite0 at 224 px: the model fine-tuned on the clean source
    first (:data:`_ANIMAL_CLEAN`), then one block tuned on each corrupted target with the source
    head kept; forgetting of the clean source tracked along training."""
    head = dict(train_head=False, lr=1e-3)
    return Experiment(
        "g_surgical_lite0_full", "Lee et al. 2023 on ImageNet EfficientNet-Lite0 at 224 px: fine-tuned on clean "
        "Animal-MNIST first, then one block tuned on input-level corruptions with the source head kept",
        "lite0_full", _ANIMAL_CLEAN,
        (Target("contrast10", "animal", tuple(range(10)), 50, 20, (100, 300), (0, 50), shift="contrast"),
         Target("noise10", "animal", tuple(range(10)), 50, 20, (100, 300), (0, 50), shift="gaussian_noise")),
        (finetune("surgical_first", "surgical", block="first", **head),
         finetune("surgical_last", "surgical", block="last", **head),
         finetune("surgical_head", "surgical", block="head", lr=1e-2),
         scratch(1e-3), PIXEL),
        tuple(range(8)), _GPU_BUDGET, image_size=224, keep_source_head=True, bn="train", source_seeds=(0, 1),
        track_forgetting=True,
    )


def _gpu_hypotheses() -> tuple[Hypothesis, ...]:
    out: list[Hypothesis] = []
    for backbone in ("lite0_full", "lite2_full"):
        out += _q3_hypotheses(f"g_lp_ft_{backbone}", "ft", "lp_ft", f"-{backbone.split('_')[0]}")
    lee_input = "input-level shifts: first block tuned best"
    out += [Hypothesis(f"G1{letter}-lite0", _LEE, "g_surgical_lite0_full", target, "test_accuracy", "surgical_first",
                       "surgical_last", 0.03, lee_input, _LEE_MIN) for letter, target in (("a", "contrast10"),
                                                                                         ("b", "noise10"))]
    out += [Hypothesis("G1c-lite0", f"{_LEE}: the first block converges sooner on an input-level shift",
                       "g_surgical_lite0_full", "contrast10", "val_auc", "surgical_first", "surgical_last", 0.02,
                       "qualitative", _NO_NUMBER.format("2 pp of normalised validation AUC")),
            Hypothesis("XG1-lite0", "forgetting of the clean source: tuning the first block keeps more of it",
                       "g_surgical_lite0_full", "contrast10", "retention_at_match", "surgical_first", "surgical_last",
                       0.02, "not a claim of Lee et al.", "exploratory", exploratory=True)]
    return tuple(out)


GPU = Suite(
    "gpu",
    "One GPU (bf16 autocast, channels_last): real ImageNet EfficientNet-Lite0 (224 px) and "
    "Lite2 (260 px), whole networks: LP / FT / LP-FT / WiSE-FT on Animal-MNIST ID and corrupted OOD, and "
    "Lee et al.'s surgical protocol after a clean-source stage (Lite0 trained on clean Animal-MNIST first, its head "
    "kept, forgetting of the clean source tracked); up to 8 seeds, sized at run time from a timed training step.",
    (_gpu_lp_ft("lite0_full", 224), _gpu_lp_ft("lite2_full", 260), _gpu_surgical()),
    _gpu_hypotheses(),
    time_budget_s=420.0,
)

SUITES: dict[str, Suite] = {suite.name: suite for suite in (SMOKE, QUICK_TUNING, *_QUICK_STAGES, STANDARD_TUNING,
                                                             *_STANDARD_STAGES, FULL, GPU)}
