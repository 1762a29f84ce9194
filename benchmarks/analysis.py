"""Runs -> tables: the analysis behind a suite's reports, as data frames (no files, no prose).

From a suite's run records (:func:`benchmarks.selection.runs_frame`, each strategy's lr selected):
the derived metrics (convergence along the curves, retention at a matched target accuracy, WiSE-FT
variants), the per-strategy table at the selected lr, the paired per-unit differences a hypothesis
reads, the transfer and source gates, the verdicts (:mod:`benchmarks.stats`), convergence,
forgetting, the lr-grid Pareto front, OOD accuracy per corruption and the budget check.
:mod:`benchmarks.report` writes them as CSV, markdown and figures.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .backbones import family as backbone_family
from .selection import BUDGET_CHECK_FACTOR
from .stats import (
    ALPHA,
    FRAGILE_BELOW,
    NOT_RUN,
    gate_probability,
    gate_state,
    holm,
    holm_levels,
    mean_ci,
    minimum_detectable_effect,
    paired_difference,
    precondition_probability,
    replication_probability,
    seeds_needed,
    t_half_width,
    verdict,
)
from .suites import Hypothesis, Suite

#: Metrics of the per-strategy tables, in order (``ood_accuracy_<corruption>`` go to ood.csv).
METRICS = ("test_accuracy", "ood_accuracy", "val_accuracy", "val_auc", "val_at_quarter", "retention_precise_bn",
           "retention_weights_only", "backward_transfer", "retention_at_match", "effective_robustness", "ood_cka",
           "test_cka", "id_cka", "probe_C", "probe_train_ce", "train_seconds", "wall_seconds")
#: Kinds of strategies that start from the pretrained backbone (the transfer gate compares these).
PRETRAINED_KINDS = ("finetune", "probe", "derived")
#: Retention is compared at this fraction of the lowest peak of the strategies' mean test curves.
MATCH_FRACTION = 0.9
#: Convergence: steps until validation accuracy first reaches this fraction of the best strategy's
#: mean final validation accuracy (the same threshold for every strategy of a target).
THRESHOLD_FRACTION = 0.9
#: A corruption is "at chance" when no strategy beats 1 / classes by more than this.
CHANCE_MARGIN = 0.05


def crossing(steps: list[float], values: list[float], level: float) -> float:
    """The first step at which a piecewise-linear curve reaches ``level`` (nan if it never does)."""
    for i, value in enumerate(values):
        if value >= level:
            if i == 0:
                return float(steps[0])
            v0, s0 = values[i - 1], steps[i - 1]
            return float(s0 + (level - v0) / (value - v0) * (steps[i] - s0))
    return math.nan


def value_at_crossing(steps: list[float], values: list[float], other: list[float], level: float) -> float:
    """``other`` interpolated at the first step where ``values`` reaches ``level`` (nan if never)."""
    step = crossing(steps, values, level)
    return math.nan if math.isnan(step) else float(np.interp(step, steps, other))


def mean_curve(curves: pd.Series) -> np.ndarray | None:
    arrays = [np.asarray(c, dtype=float) for c in curves if isinstance(c, list) and len(c)]
    if not arrays or len({len(a) for a in arrays}) != 1:
        return None
    return np.mean(arrays, axis=0)


def add_derived_metrics(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-run metrics computed from other runs: ``effective_robustness`` (OOD / ID accuracy) and
    ``retention_at_match`` (retention along the run's trajectory where its test accuracy first
    reaches the matched level of its (experiment, target)); and the table of matched levels."""
    runs = runs.copy()
    runs["effective_robustness"] = runs.ood_accuracy / runs.test_accuracy
    runs["retention_at_match"] = math.nan
    levels = []
    tracked = runs[runs.selected & (runs.kind == "finetune") & runs.curve_retention_precise_bn.notna()]
    for (experiment, target), part in tracked.groupby(["experiment", "target"], sort=False):
        peaks = {s: float(np.max(c)) for s, g in part.groupby("strategy")
                 if (c := mean_curve(g.curve_test_accuracy)) is not None}
        if not peaks:
            continue
        lowest = min(peaks, key=peaks.get)
        level = MATCH_FRACTION * peaks[lowest]
        levels.append({"experiment": experiment, "target": target, "matched_test_accuracy": level,
                       "lowest_peak_strategy": lowest, "lowest_peak": peaks[lowest]})
        rows = (runs.experiment == experiment) & (runs.target == target) & runs.curve_retention_precise_bn.notna()
        runs.loc[rows, "retention_at_match"] = [
            value_at_crossing(r.curve_forgetting_step, r.curve_test_accuracy, r.curve_retention_precise_bn, level)
            for r in runs[rows].itertuples()]
    return runs, pd.DataFrame(levels)


def selected_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% half-width over seeds of every metric at the selected lr."""
    rows = []
    chosen = runs[runs.selected]
    for (experiment, target, strategy), group in chosen.groupby(["experiment", "target", "strategy"], sort=False):
        row = {"experiment": experiment, "target": target, "strategy": strategy, "kind": group.kind.iloc[0],
               "lr": group.lr.iloc[0], "edge": bool(group.edge.iloc[0]), "capped": bool(group.capped.iloc[0]),
               "lrs_run": int(group.lrs_run.iloc[0]), "seeds": len(group)}
        for metric in [*METRICS, *sorted(c for c in group if c.startswith("ood_accuracy_"))]:
            values = group[metric].dropna() if metric in group else pd.Series(dtype=float)
            if len(values):
                row[metric], row[f"{metric}_ci"] = mean_ci(values.tolist())
        rows.append(row)
    return pd.DataFrame(rows)


def unit_values(suite: Suite, runs: pd.DataFrame, experiment_name: str, values: pd.Series) -> pd.Series:
    """Per-seed ``values`` (indexed by seed) as per-unit values: unchanged when the experiment's
    seeds are independent units; the mean over the seeds of each source model when seeds share
    source models (the balanced mixed model's test: the t on source-model means, k - 1 degrees of
    freedom), indexed by source seed."""
    experiment = suite.experiment(experiment_name)
    if not experiment.source.trained or experiment.independent_sources or values.empty:
        return values
    part = runs[(runs.experiment == experiment_name) & runs.source_seed.notna()]
    source = part.drop_duplicates("seed").set_index("seed").source_seed.reindex(values.index)
    return values.groupby(source.to_numpy()).mean()


def strategy_differences(runs: pd.DataFrame, experiment: str, target: str, metric: str, better: str,
                 worse: str) -> pd.Series:
    """``better - worse`` of ``metric`` per seed among ``runs`` (the seeds both sides have)."""
    part = runs[(runs.experiment == experiment) & (runs.target == target)]
    b, w = (part[part.strategy == name].set_index("seed")[metric].dropna() for name in (better, worse))
    seeds = sorted(set(b.index) & set(w.index))
    return (b[seeds] - w[seeds]).astype(float)


def seed_differences(runs: pd.DataFrame, h: Hypothesis) -> pd.Series:
    """The hypothesis' paired differences per seed among ``runs``: ``better - worse`` (for an
    interaction, the difference on ``h.target`` minus the one on ``h.versus``)."""
    d = strategy_differences(runs, h.experiment, h.target, h.metric, h.better, h.worse)
    if h.versus:
        other = strategy_differences(runs, h.experiment, h.versus, h.metric, h.better, h.worse)
        seeds = sorted(set(d.index) & set(other.index))
        d = d[seeds] - other[seeds]
    return d


def hypothesis_differences(suite: Suite, runs: pd.DataFrame, h: Hypothesis) -> tuple[pd.Series, int]:
    """(the hypothesis' paired differences per unit, the seeds behind them), among ``runs``:
    :func:`seed_differences`, averaged per source model when seeds share one (:func:`unit_values`)."""
    d = seed_differences(runs, h)
    return unit_values(suite, runs, h.experiment, d), len(d)


def _best_on_shared_seeds(chosen: pd.DataFrame, experiment: str, target: str, names: pd.Series) -> str:
    """The strategy among ``names`` with the best mean test accuracy over the seeds all of them ran
    (cells sized on their own run on different seeds: means over different seeds would not compare
    like with like); over each one's own seeds where they share none."""
    part = chosen[(chosen.experiment == experiment) & (chosen.target == target) & chosen.strategy.isin(set(names))]
    wide = part.pivot_table(index="seed", columns="strategy", values="test_accuracy").dropna()
    means = wide.mean() if len(wide) and wide.shape[1] == len(set(names)) else \
        part.groupby("strategy").test_accuracy.mean()
    return str(means.idxmax())


def gates(suite: Suite, runs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per target: the best pretrained strategy against the best of scratch and pixel (each by mean
    test accuracy at its selected lr, over the seeds the candidates share), decided on an interval: the transfer gate passes when the
    lower end of the 95% Student-t interval of their paired difference (per unit) is at least
    ``Experiment.gate_margin``, fails when its upper end is below it, and is undecided otherwise
    (:func:`benchmarks.stats.gate_state`), never on a point estimate; and the source gate (every
    source-pretraining seed at least ``Source.min_accuracy``)."""
    rows = []
    chosen = runs[runs.selected]
    for experiment in suite.experiments:
        for target in experiment.targets:
            part = table[(table.experiment == experiment.name) & (table.target == target.name)]
            if part.empty:
                continue
            pretrained = part[part.kind.isin(PRETRAINED_KINDS)].dropna(subset=["test_accuracy"])
            baselines = part[part.kind.isin(("scratch", "pixel"))].dropna(subset=["test_accuracy"])
            if pretrained.empty or baselines.empty:  # an unfinished suite: no gate yet
                continue
            best = pretrained[pretrained.strategy == _best_on_shared_seeds(chosen, experiment.name, target.name,
                                                                           pretrained.strategy)].iloc[0]
            baseline = baselines[baselines.strategy == _best_on_shared_seeds(chosen, experiment.name, target.name,
                                                                             baselines.strategy)].iloc[0]
            sources = runs[(runs.experiment == experiment.name) & runs.source_accuracy.notna()]
            source_accuracy = float(sources.source_accuracy.min()) if len(sources) else math.nan
            source_ok = math.isnan(source_accuracy) or source_accuracy >= experiment.source.min_accuracy
            d = unit_values(suite, runs, experiment.name, strategy_differences(
                chosen, experiment.name, target.name, "test_accuracy", best.strategy, baseline.strategy))
            margin = float(d.mean()) if len(d) else math.nan
            sd = float(d.std(ddof=1)) if len(d) >= 2 else math.nan
            half = t_half_width(sd, len(d)) if len(d) >= 2 else math.nan
            state = gate_state(margin - half, margin + half, experiment.gate_margin)
            rows.append({"experiment": experiment.name, "target": target.name, "best_pretrained": best.strategy,
                         "best_pretrained_accuracy": best.test_accuracy, "best_baseline": baseline.strategy,
                         "best_baseline_accuracy": baseline.test_accuracy, "margin": margin, "margin_sd": sd,
                         "units": len(d), "margin_ci_low": margin - half, "margin_ci_high": margin + half,
                         "required_margin": experiment.gate_margin, "transfer": state,
                         "transfer_ok": state == "pass",
                         "source_accuracy": source_accuracy, "source_min_accuracy": experiment.source.min_accuracy,
                         "source_ok": source_ok})
    return pd.DataFrame(rows, columns=["experiment", "target", "best_pretrained", "best_pretrained_accuracy",
                                       "best_baseline", "best_baseline_accuracy", "margin", "margin_sd", "units",
                                       "margin_ci_low", "margin_ci_high", "required_margin", "transfer",
                                       "transfer_ok", "source_accuracy", "source_min_accuracy", "source_ok"])


def _preconditions(suite: Suite, runs: pd.DataFrame, h: Hypothesis) -> tuple[bool, str, float]:
    """(all hold, text with the means, the probability that an independent run finds a failing
    precondition failing again (the likeliest of the failing ones: a lower bound), or every one
    holding again when all hold (their product, as if independent)) of the hypothesis'
    preconditions, on the selected runs."""
    held, texts, again = True, [], []
    part = runs[(runs.experiment == h.experiment) & (runs.target == h.target)]
    for p in h.preconditions:
        # both means over the seeds both sides ran (cells sized on their own run on different seeds)
        sides = [part[part.strategy == name].set_index("seed")[p.metric].dropna() for name in (p.better, p.worse)]
        paired = sorted(set(sides[0].index) & set(sides[1].index))
        means = [float(side[paired].mean()) if paired else math.nan for side in sides]
        ok = bool(all(math.isfinite(m) for m in means) and means[0] >= means[1])
        held &= ok
        d = unit_values(suite, runs, h.experiment, strategy_differences(runs, h.experiment, h.target, p.metric, p.better,
                                                                 p.worse))
        sd = float(d.std(ddof=1)) if len(d) >= 2 else math.nan
        again.append((ok, precondition_probability(ok, float(d.mean()) if len(d) else math.nan, sd, len(d))))
        texts.append(f"{p.text} ({means[0]:.3f} vs {means[1]:.3f}): {'holds' if ok else 'FAILS'}")
    failing = [q for ok, q in again if not ok]
    probability = max(failing) if failing else (float(np.prod([q for _, q in again])) if again else math.nan)
    return held, "; ".join(texts), probability


def _not_run(suite: Suite, runs: pd.DataFrame, h: Hypothesis) -> bool:
    """Whether some cells the hypothesis reads have not run at all (a part of the suite was run):
    a side of it or of a precondition, or a scratch or pixel baseline of the transfer gate, has no
    run on one of its targets."""
    experiment = suite.experiment(h.experiment)
    named = {h.better, h.worse} | {n for p in h.preconditions for n in (p.better, p.worse)}
    baselines = {s.name for s in experiment.strategies if s.kind in ("scratch", "pixel")}
    part = runs[runs.experiment == h.experiment]
    for target in [h.target, h.versus] if h.versus else [h.target]:
        ran = set(part.strategy[part.target == target])
        if any(name not in ran and (target, name) not in experiment.skip for name in named | baselines):
            return True
    return False


def _hypothesis_row(suite: Suite, runs: pd.DataFrame, gate_table: pd.DataFrame, h: Hypothesis) -> dict[str, Any]:
    """The hypothesis' paired test on the selected runs, its gates and preconditions (no verdict yet)."""
    chosen = runs[runs.selected]
    d, seeds = hypothesis_differences(suite, chosen, h)
    targets = [h.target, h.versus] if h.versus else [h.target]
    gate = gate_table[(gate_table.experiment == h.experiment) & gate_table.target.isin(targets)]
    complete = len(gate) == len(targets)
    gate_failed = bool(complete and ((gate.transfer == "fail") | ~gate.source_ok.astype(bool)).any())
    gate_ok = bool(complete and not gate_failed and (gate.transfer == "pass").all())
    held, text, precondition_again = _preconditions(suite, chosen, h)
    row = {"hypothesis": h.name, "mirrors": h.mirrors, "comparison": h.comparison, "metric": h.metric,
           "kind": h.kind, "experiment": h.experiment,
           "family": backbone_family(suite.experiment(h.experiment).backbone),
           "target": h.target, "unit": suite.experiment(h.experiment).unit, "units": len(d), "seeds": seeds,
           "min_effect": h.min_effect, "min_effect_source": h.min_effect_source, "gate_ok": gate_ok,
           "gate_failed": gate_failed, "gate_targets": targets,
           "preconditions": text or "none", "preconditions_ok": held, "precondition_again": precondition_again,
           "exploratory": h.exploratory, "published": h.published, "effect": math.nan, "sd": math.nan,
           "p": math.nan, "not_run": _not_run(suite, runs, h)}
    if len(d) >= 2 and not row["not_run"]:
        shift = h.min_effect if h.kind == "noninferiority" else 0.0  # tested against -margin
        test = paired_difference((d + shift).tolist(), [0.0] * len(d))
        # zero spread (e.g. two tied source-model means) is no evidence: no test, no Holm slot
        row.update(effect=float(d.mean()), sd=test.sd, p=test.p if test.sd > 0 else math.nan)
    return row


def _verdict_of(r: Any, low: float, high: float, gate_table: pd.DataFrame) -> tuple[str, float]:
    """(verdict, replication probability) of a row of :func:`_hypothesis_row` with its interval."""
    in_scope = not r.gate_failed and r.preconditions_ok
    gate = gate_table[(gate_table.experiment == r.experiment) & gate_table.target.isin(r.gate_targets)]
    if r.exploratory:
        return "exploratory", math.nan
    if r.not_run:
        return NOT_RUN, math.nan
    if in_scope and not r.gate_ok:  # a transfer gate its interval does not decide: no verdict either
        undecided = gate[gate.transfer == "undecided"]
        return "undetermined", (float(np.prod([gate_probability("undecided", g.margin, g.margin_sd, g.units,
                                                                 g.required_margin)
                                                for g in undecided.itertuples()])) if len(undecided) else math.nan)
    label = verdict(r.effect, low, high, r.min_effect, in_scope=in_scope, kind=r.kind)
    if r.gate_failed:  # the chance that some failing gate fails again (at least the likeliest one)
        failing = gate[gate.transfer == "fail"]
        return label, max((gate_probability("fail", g.margin, g.margin_sd, g.units, g.required_margin)
                           for g in failing.itertuples()), default=math.nan)
    if not r.preconditions_ok:
        return label, r.precondition_again
    return label, replication_probability(label, r.effect, r.sd, r.units, r.min_effect, r.ci_level, r.kind)


#: The columns of ``verdicts.csv``, in order.
VERDICT_TABLE_COLUMNS = [
    "hypothesis", "mirrors", "comparison", "metric", "kind", "effect", "ci_low", "ci_high", "ci_level", "p_holm",
    "verdict", "replication_probability", "fragile", "unit", "units", "seeds", "p", "min_effect", "mde",
    "mde_worst_step", "seeds_needed", "sd", "preconditions", "preconditions_ok", "scope", "exploratory",
    "experiment", "family", "target", "gate_ok", "min_effect_source", "published"]


def verdicts(suite: Suite, runs: pd.DataFrame, gate_table: pd.DataFrame) -> pd.DataFrame:
    """One row per hypothesis (see the module docstring); the Holm family is the confirmatory
    hypotheses in scope with a test. The unit of every test is the experiment's
    (:func:`unit_values`); ``replication_probability``: the probability that an independent run of
    the same design gives a compatible verdict (:func:`benchmarks.stats.replication_probability`;
    for *out of scope*, that the failing precondition fails again), ``fragile`` below
    :data:`benchmarks.stats.FRAGILE_BELOW`. *not run*: some of its cells have not run
    (:func:`_not_run`), no test."""
    frame = pd.DataFrame([_hypothesis_row(suite, runs, gate_table, h) for h in suite.hypotheses])
    if frame.empty:
        return pd.DataFrame(columns=VERDICT_TABLE_COLUMNS).astype({"exploratory": bool})
    family = (~frame.exploratory) & frame.gate_ok.astype(bool) & frame.preconditions_ok & frame.p.notna()
    frame["p_holm"] = math.nan
    frame["ci_level"] = ALPHA
    if family.any():
        frame.loc[family, "p_holm"] = holm(frame.p[family].tolist())
        frame.loc[family, "ci_level"] = holm_levels(frame.p[family].tolist())
    worst = ALPHA / max(1, int(family.sum()))
    lows, highs, labels, mdes, needed, mde_worst, again = [], [], [], [], [], [], []
    for r in frame.itertuples():
        low = high = math.nan
        if math.isfinite(r.p):
            half = t_half_width(r.sd, r.units, r.ci_level)
            low, high = r.effect - half, r.effect + half
        lows.append(low)
        highs.append(high)
        label, probability = _verdict_of(r, low, high, gate_table)
        labels.append(label)
        again.append(probability)
        mdes.append(minimum_detectable_effect(r.sd, r.units, r.ci_level))
        mde_worst.append(minimum_detectable_effect(r.sd, r.units, worst))
        needed.append(seeds_needed(r.sd, r.min_effect, r.ci_level))
    frame["ci_low"], frame["ci_high"], frame["verdict"] = lows, highs, labels
    frame["replication_probability"] = again
    frame["fragile"] = [bool(not r.exploratory and not r.not_run and not (r.replication_probability >= FRAGILE_BELOW))
                        for r in frame.itertuples()]
    frame["mde"], frame["mde_worst_step"] = mdes, mde_worst
    frame["seeds_needed"] = pd.array([None if math.isnan(n) else int(n) for n in needed], dtype="Int64")
    frame["scope"] = ["cells not run" if r.not_run else "" if r.gate_ok and r.preconditions_ok else
                      "transfer/source gate failed" if r.gate_failed else
                      "precondition failed" if not r.preconditions_ok else "transfer gate undecided"
                      for r in frame.itertuples()]
    return frame[VERDICT_TABLE_COLUMNS]


def convergence(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, target, strategy) of trained strategies at the selected lr: validation AUC,
    accuracy at a quarter of the budget, steps to the target's threshold (mean over the seeds that
    reach it) and the share of seeds that reach it."""
    rows = []
    trained = runs[runs.selected & runs.kind.isin(("finetune", "scratch")) & runs.curve_step.notna()]
    for (experiment, target), part in trained.groupby(["experiment", "target"], sort=False):
        pretrained = part[part.kind == "finetune"]
        best = pretrained.groupby("strategy").val_accuracy.mean().max() if len(pretrained) else math.nan
        threshold = THRESHOLD_FRACTION * best
        for strategy, group in part.groupby("strategy", sort=False):
            steps = [crossing(r.curve_step, r.curve_val_accuracy, threshold) for r in group.itertuples()]
            reached = [s for s in steps if math.isfinite(s)]
            row = {"experiment": experiment, "target": target, "strategy": strategy, "seeds": len(group),
                   "threshold": threshold, "reached": len(reached) / len(group)}
            for name, values in (("val_auc", group.val_auc), ("val_at_quarter", group.val_at_quarter),
                                 ("steps_to_threshold", pd.Series(reached, dtype=float))):
                if len(values.dropna()):
                    row[name], row[f"{name}_ci"] = mean_ci(values.dropna().tolist())
            rows.append(row)
    return pd.DataFrame(rows)


def forgetting(runs: pd.DataFrame, levels: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, target, strategy) with a source, at the selected lr: retention at the matched
    level (and the level), retention and backward transfer at the end, mean and 95% half-width."""
    rows = []
    part = runs[runs.selected & runs.retention_precise_bn.notna() & (runs.kind != "derived")]
    for (experiment, target, strategy), group in part.groupby(["experiment", "target", "strategy"], sort=False):
        level = levels[(levels.experiment == experiment) & (levels.target == target)] if len(levels) else levels
        row = {"experiment": experiment, "target": target, "strategy": strategy, "seeds": len(group),
               "matched_test_accuracy": float(level.matched_test_accuracy.iloc[0]) if len(level) else math.nan}
        for metric in ("retention_at_match", "retention_precise_bn", "retention_weights_only", "backward_transfer"):
            values = group[metric].dropna()
            if len(values):
                row[metric], row[f"{metric}_ci"] = mean_ci(values.tolist())
                if metric == "retention_at_match":
                    row["matched_seeds"] = len(values)
        rows.append(row)
    return pd.DataFrame(rows)


def pareto(runs: pd.DataFrame) -> pd.DataFrame:
    """Forgetting across the whole lr grid, not at the selected lr alone: per (experiment, target,
    fine-tuning strategy, lr) with a source to forget, the mean test accuracy and the mean source
    retention at the end (precise BN) over seeds, and ``on_front``: no other point of the target
    (any strategy, any lr) has at least the accuracy and at least the retention, and more of one
    (the Pareto front of retention against target accuracy). ``front_share``: the share of the
    strategy's lrs on the front. Empty where retention is not measured."""
    part = runs[(runs.kind == "finetune") & (runs.budget_factor == 1)]
    if "retention_precise_bn" not in part or part.retention_precise_bn.isna().all():
        return pd.DataFrame(columns=["experiment", "target", "strategy", "lr", "seeds", "test_accuracy",
                                     "retention_precise_bn", "on_front", "front_share"])
    part = part.dropna(subset=["retention_precise_bn"])
    means = part.groupby(["experiment", "target", "strategy", "lr"], sort=False).agg(
        seeds=("seed", "nunique"), test_accuracy=("test_accuracy", "mean"),
        retention_precise_bn=("retention_precise_bn", "mean")).reset_index()
    fronts = []
    for _, group in means.groupby(["experiment", "target"], sort=False):
        a, r = group.test_accuracy.to_numpy(), group.retention_precise_bn.to_numpy()
        dominated = [bool(np.any((a >= a[i]) & (r >= r[i]) & ((a > a[i]) | (r > r[i])))) for i in range(len(a))]
        fronts.append(pd.Series([not d for d in dominated], index=group.index))
    means["on_front"] = pd.concat(fronts).reindex(means.index)
    means["front_share"] = means.groupby(["experiment", "target", "strategy"]).on_front.transform("mean")
    return means


def ood_table(suite: Suite, runs: pd.DataFrame) -> pd.DataFrame:
    """OOD accuracy per corruption and strategy at the selected lr; ``at_chance``: no strategy beats
    1 / classes by more than CHANCE_MARGIN on that corruption."""
    rows = []
    chosen = runs[runs.selected]
    for experiment in suite.experiments:
        for target in experiment.targets:
            part = chosen[(chosen.experiment == experiment.name) & (chosen.target == target.name)]
            for corruption in target.ood:
                column = f"ood_accuracy_{corruption}"
                if column not in part or part[column].isna().all():
                    continue
                means = part.groupby("strategy", sort=False)[column].mean()
                at_chance = bool(means.max() <= 1 / target.num_classes + CHANCE_MARGIN)
                rows += [{"experiment": experiment.name, "target": target.name, "corruption": corruption,
                          "strategy": strategy, "ood_accuracy": value, "at_chance_for_all": at_chance}
                         for strategy, value in means.items()]
    return pd.DataFrame(rows)


def budget_check(suite: Suite, runs: pd.DataFrame, verdict_table: pd.DataFrame) -> pd.DataFrame:
    """Per confirmatory hypothesis: the effect on the budget-check seeds at 1x and at the longer
    budget (each side at its selected lr), and whether the verdict holds at the longer budget (the
    longer effect on the verdict's side of its boundary: >= min effect for reproduced, < min effect
    for not reproduced, <= -min effect for contradicted)."""
    rows = []
    chosen = runs[runs.selected]
    for h in suite.hypotheses:
        if h.exploratory:
            continue
        longer = runs[(runs.budget_factor == BUDGET_CHECK_FACTOR) & (runs.lr == runs.selected_lr)]
        long_d, short_d = seed_differences(longer, h), seed_differences(chosen, h)
        seeds = sorted(set(long_d.index))
        row = {"hypothesis": h.name, "comparison": h.comparison, "metric": h.metric, "seeds": len(seeds),
               "budget_factor": BUDGET_CHECK_FACTOR}
        verdict_row = verdict_table[verdict_table.hypothesis == h.name]
        label = verdict_row.verdict.iloc[0] if len(verdict_row) else "undetermined"
        if len(seeds) >= 1 and set(seeds) <= set(short_d.index):
            row["effect_1x"] = float(short_d[seeds].mean())
            row["effect_longer"] = effect = float(long_d[seeds].mean())
            m = h.min_effect
            holds = ({"reproduced": effect > -m, "contradicted": effect <= -m} if h.kind == "noninferiority" else
                     {"reproduced": effect >= m, "not reproduced": effect < m, "direction only": 0 < effect < m,
                      "contradicted": effect <= -m}).get(label)
            row["verdict"], row["holds"] = label, holds
        rows.append(row)
    return pd.DataFrame(rows, columns=["hypothesis", "comparison", "metric", "seeds", "budget_factor", "effect_1x",
                                       "effect_longer", "verdict", "holds"])
