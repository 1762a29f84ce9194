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

The built-in suites written in this schema are :mod:`benchmarks.catalog`.

Example:
    >>> budget = Budget(steps=8, batch_size=10, eval_every=4, warmup_steps=2)
    >>> budget.scaled(2).steps, budget.scaled(2).eval_every
    (16, 8)
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

#: Metrics read from the forgetting curve (``Experiment.track_forgetting``): a confirmatory stage
#: measures the curve only where a confirmatory hypothesis reads one of them.
CURVE_METRICS = ("retention_at_match",)

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

    Two kwargs are read by :func:`benchmarks.cells.build_recipe`, not passed on as they are: for ``lp_ft``, the probe's ``C``
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
    ``cell_seeds``: pre-registered ``(target, strategy, n)``: that cell runs on the first ``n`` seeds
    only (:meth:`seeds_of`; a registration sized per cell, :mod:`benchmarks.preregistration`).
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
    cell_seeds: tuple[tuple[str, str, int], ...] = ()

    def strategy(self, name: str) -> Strategy:
        return next(s for s in self.strategies if s.name == name)

    def seeds_of(self, target: str, strategy: str) -> tuple[int, ...]:
        """The seeds the cell ``(target, strategy)`` runs on: the first ``n`` of ``seeds`` where
        ``cell_seeds`` lists ``(target, strategy, n)`` (a pre-registration sized per cell), else all.

        Example:
            >>> e = Experiment("e", "q", "b", Source("imagenet"), (), (), (5, 6, 7), Budget(1, 1, 1, 0),
            ...                cell_seeds=(("t", "full", 2),))
            >>> e.seeds_of("t", "full"), e.seeds_of("t", "scratch")
            ((5, 6), (5, 6, 7))
        """
        n = next((n for t, s, n in self.cell_seeds if t == target and s == strategy), len(self.seeds))
        return self.seeds[:n]

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
    ``time_budget_s``: size the seeds at run time from a timed training step (a config's suite; the
    built-in GPU run sizes its confirmatory seeds from its pilot instead, :mod:`benchmarks.gpu`).

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
                and seed in e.seeds_of(target.name, strategy.name) for lr in e.grid(strategy, target)]

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


def preregistered(name: str) -> dict[str, Any] | None:
    """The committed pre-registration ``benchmarks/preregistration/<name>.json`` (None if absent);
    see :mod:`benchmarks.preregistration`."""
    path = PREREGISTRATION_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def seed_range(experiment: Experiment) -> str:
    """How many seeds the experiment's cells run on: ``"9"``, or ``"6 to 19"`` where cells are sized
    on their own (:attr:`Experiment.cell_seeds`)."""
    counts = {len(experiment.seeds_of(t.name, s.name)) for t in experiment.targets for s in experiment.strategies
              if (t.name, s.name) not in experiment.skip} or {len(experiment.seeds)}
    return str(min(counts)) if len(counts) == 1 else f"{min(counts)} to {max(counts)}"


def confirmatory(tuning: Suite, registration: Mapping[str, Any], name: str, first_seed: int) -> Suite:
    """The confirmatory stage of ``tuning``: each experiment on ``registration["seeds"][experiment]``
    fresh seeds from ``first_seed`` (each with its own source model; a cell the registration sizes
    on its own, ``cell_seeds``, on the first of them), every strategy at its pre-registered lr only,
    the forgetting curve measured where ``registration["track_forgetting"]`` keeps it; the hypotheses the registration lists as ``futile`` (no seed count up
    to the maximum decides them, on the tuning stage's numbers) are exploratory."""
    futile = set(registration.get("futile", ()))
    hypotheses = tuple(dataclasses.replace(h, exploratory=True) if h.name in futile else h for h in tuning.hypotheses)
    experiments = []
    for e in tuning.experiments:
        lrs = tuple((r["target"], r["strategy"], float(r["lr"])) for r in registration["lrs"]
                    if r["experiment"] == e.name)
        seeds = tuple(range(first_seed, first_seed + int(registration["seeds"][e.name])))
        cell_seeds = tuple((r["target"], r["strategy"], int(r["seeds"])) for r in registration.get("cell_seeds", ())
                           if r["experiment"] == e.name)
        curve = bool(registration.get("track_forgetting", {}).get(e.name, e.track_forgetting))
        experiments.append(dataclasses.replace(e.with_seeds(seeds), lrs=lrs, cell_seeds=cell_seeds,
                                               track_forgetting=e.track_forgetting and curve))
    seeds = ", ".join(f"{e.name} {seed_range(e)}" for e in experiments)
    return dataclasses.replace(
        tuning, name=name, experiments=tuple(experiments), hypotheses=hypotheses,
        preregistration=str(registration.get("version", "")), futile=tuple(sorted(futile)),
        description=f"The confirmatory stage of {tuning.name}: fresh seeds ({seeds}), each with its own source "
        f"model, every strategy at its pre-registered lr (version {registration.get('version', '?')}).")

