"""perf.md from the pytest-benchmark JSON: the environment, one table per measurement (goal,
measured ratio or time, PASS/MISS) and, for every miss, the profile that explains it.

Example:
    >>> fmt_seconds(0.0000123), fmt_seconds(0.0123), fmt_ratio([1.01, 0.99, 1.03])
    ('12.3 µs', '12.30 ms', '1.010 [0.990, 1.030]')
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["render", "fmt_seconds", "fmt_ratio", "CUDA_ROW", "cuda_docs_row", "with_cuda_row"]

#: The docs' CUDA row (``docs/performance.md``), filled from ``results/perf/gpu/perf.json``.
CUDA_ROW = "CUDA: layered fused AdamW / single-group fused AdamW, ViT-B"


def fmt_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def fmt_ratio(ratio: list[float]) -> str:
    median, low, high = ratio
    return f"{median:.3f} [{low:.3f}, {high:.3f}]"


def _verdict(value: float, goal: float, interval: list[float] | None = None, control: list[float] | None = None) -> str:
    """PASS/MISS on the median; a miss whose interval reaches the goal, or that the A/A control
    matches (noise as large as the miss), is marked MISS* (not distinguishable from noise)."""
    if value <= goal:
        return "PASS"
    noisy = interval is not None and interval[1] <= goal
    if control is not None and abs(control[0] - 1) >= value - goal:
        noisy = True
    return "MISS*" if noisy else "MISS"


class Section(NamedTuple):
    """One section of perf.md: its lines, and its rows of the summary table (measurement, goal,
    measured, result)."""

    lines: list[str]
    summary: list[list[str]]


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _by_section(benchmarks: list[dict]) -> dict[str, list[dict]]:
    sections: dict[str, list[dict]] = {}
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        sections.setdefault(info.get("section", "other"), []).append(info)
    return sections


def _profile_lines(title: str, rows: list[dict]) -> list[str]:
    if not rows:
        return []
    if "extra_calls" in rows[0]:
        body = [[f"`{r['function']}`", f"{r['extra_calls']:+g}", f"{r['extra_self_us']:+.1f}"] for r in rows]
        return [f"*{title}* (cProfile; per step, wrapped minus reference):", ""] + _table(
            ["function", "extra calls", "extra self µs"], body
        )
    body = [[f"`{r['function']}`", f"{r['calls']:g}", f"{r['self_us']:.0f}", f"{r['cumulative_us']:.0f}"] for r in rows]
    return [f"*{title}* (cProfile, per call, inflated by the profiler):", ""] + _table(
        ["function", "calls", "self µs", "cumulative µs"], body
    )


def _rendered(section: list[dict], title: str, intro: list[str], header: list[str],
              row: Callable[[dict], tuple[list[Any], list[list[str]]]], *, skip_empty: bool = False,
              after: Callable[[list[dict]], list[str]] | None = None) -> Section:
    """A section of perf.md in the shape most share: ``## title``, the ``intro`` lines, one table row
    per measurement (``row(info)``: its cells and its rows of the summary table), then the lines
    ``after(section)`` adds (profiles); nothing at all for no measurement with ``skip_empty``."""
    if skip_empty and not section:
        return Section([], [])
    rows, summary = [], []
    for info in section:
        cells, summaries = row(info)
        rows.append(cells)
        summary += summaries
    lines = [f"## {title}", "", *intro, *_table(header, rows)]
    return Section(lines + (after(section) if after is not None else []), summary)


def _step(section: list[dict]) -> Section:
    def row(info: dict) -> tuple[list[Any], list[list[str]]]:
        ratio, control = info["ratio"]["wrapped"], info["ratio"]["bare_again"]
        verdict = _verdict(ratio[0], info["goal"], ratio, control)
        return ([info["model"], info["optimizer"], info["groups"], info["threads"],
                 fmt_seconds(info["seconds"]["bare"][0]), fmt_seconds(info["seconds"]["wrapped"][0]),
                 f"{info['difference_s']['wrapped'][0] * 1e6:+.1f} µs", fmt_ratio(ratio), f"{control[0]:.3f}",
                 f"≤ {info['goal']:.2f}", verdict],
                [[f"step overhead, {info['model']}, {info['optimizer']}", f"≤ {info['goal']:.2f}", f"{ratio[0]:.3f}",
                  verdict]])

    def profiles(section: list[dict]) -> list[str]:  # of the misses, and of the MLP
        lines = []
        for info in section:
            verdict = row(info)[0][-1]
            if (verdict != "PASS" or info["model"] == "mlp") and info.get("profile_extra"):
                lines += _profile_lines(f"{info['model']} / {info['optimizer']}: {verdict}", info["profile_extra"])
        return lines

    return _rendered(section, "Step overhead", [
        "`LayerwiseOptimizer.step()` / the bare inner optimizer's `step()` with identical param groups, same "
        "tensors, random gradients set once (no forward/backward timed). *A/A* is a second bare optimizer "
        "timed alongside: its ratio to the first is the noise floor of this run. Δ is the paired per-step "
        "difference (median). The per-variant medians move with the machine's load (other processes); the paired ratio is the figure. "
        "The tiny MLP runs on one CPU thread (its tensors never use a second one; with two, a loaded machine "
        "would time OpenMP waits instead of the step's overhead).",
        "",
    ], ["model", "optimizer", "groups", "threads", "bare step", "wrapped step", "Δ/step", "ratio [95% CI]", "A/A", "goal",
        "result"], row, after=profiles)


def _multi(section: list[dict]) -> Section:
    def row(info: dict) -> tuple[list[Any], list[list[str]]]:
        ratio, control = info["ratio"]["wrapped"], info["ratio"]["by_hand_again"]
        verdict = _verdict(ratio[0], info["goal"], ratio, control)
        return ([info["model"], info["optimizers"], info["groups"], info["threads"],
                 fmt_seconds(info["seconds"]["by_hand"][0]), fmt_seconds(info["seconds"]["wrapped"][0]),
                 fmt_ratio(ratio), f"{control[0]:.3f}", f"≤ {info['goal']:.2f}", verdict],
                [[f"multi-optimizer step, {info['model']}, {info['optimizers']}: wrapped / by hand",
                  f"≤ {info['goal']:.2f}", f"{ratio[0]:.3f}", verdict]])

    return _rendered(section, "Multi-optimizer step", [
        "One `LayerwiseOptimizer` over Muon (2-D hidden weights) and foreach AdamW (the rest) / the same two "
        "optimizers with the same groups stepped by hand one after the other. *A/A*: a second pair stepped by "
        "hand.",
        "",
    ], ["model", "optimizers", "groups", "threads", "by hand", "wrapped", "ratio [95% CI]", "A/A", "goal", "result"],
        row, skip_empty=True)


def _layout(section: list[dict]) -> Section:
    intro = [
        "Layer-decayed AdamW (`layer_decay(0.75)`, `no_weight_decay()`): lrgroups' merged groups (the "
        "`LayerwiseOptimizer` itself) and one group per tensor with the same per-tensor settings (the "
        "mmengine way), each against one single group on the same parameters. The cost per extra group is "
        "the paired difference to the single group divided by the number of extra groups.",
        "",
    ]
    if any(info["optimizer"] == "adamw_foreach" and info["ratio"]["per_tensor"][0] < 1 for info in section):
        intro += [
            "More groups come out *faster* than one group with foreach AdamW here: on the CPU each `_foreach_*` "
            "op of one huge group streams over every parameter from memory before the next op starts, while "
            "smaller groups apply all of AdamW's ops to a chunk that stays in cache.",
            "",
        ]

    def row(info: dict) -> tuple[list[Any], list[list[str]]]:
        merged, per_tensor = info["ratio"]["merged"], info["ratio"]["per_tensor"]
        verdict = _verdict(merged[0], info["goal"], merged)
        groups = info["groups"]
        per_group = [info["difference_s"][name][0] / max(groups[name] - 1, 1) for name in ("merged", "per_tensor")]
        return ([info["model"], info["optimizer"], f"{groups['merged']} / {groups['per_tensor']} / 1",
                 fmt_seconds(info["seconds"]["single"][0]), fmt_ratio(merged), fmt_ratio(per_tensor),
                 " / ".join(f"{cost * 1e6:+.0f} µs" for cost in per_group), f"≤ {info['goal']:.2f}", verdict],
                [[f"group layout, {info['model']}, {info['optimizer']}: merged / single", f"≤ {info['goal']:.2f}",
                  f"{merged[0]:.3f}", verdict]])

    def profiles(section: list[dict]) -> list[str]:
        return [line for info in section if info.get("profile_extra")
                for line in _profile_lines(f"{info['model']} / {info['optimizer']} merged vs single",
                                           info["profile_extra"])]

    return _rendered(section, "Group layout cost", intro, [
        "model", "optimizer", "groups (merged / per-tensor / single)", "single-group step", "merged / single",
        "per-tensor / single", "cost per extra group (merged / per-tensor)", "goal", "result"], row, after=profiles)


def _build(large: list[dict], meta_vs_real: list[dict], families: list[dict]) -> Section:
    summary: list[list[str]] = []
    lines = [
        "## Build time",
        "",
        "Constructing a `LayerwiseOptimizer(model, AdamW, rules=[layer_decay(0.75), no_weight_decay()])` "
        "(describe, depths, plan, groups, inner AdamW); model creation excluded; models created on the `meta` "
        "device. Reference, interleaved: timm's `create_optimizer_v2(model, 'adamw', layer_decay=0.75)`, "
        "which does the same job. Absolute times move with the machine's load; the ratio to timm, measured in "
        "the same rounds, much less.",
        "",
    ]
    rows = []
    for info in large:
        seconds = info["seconds"]["lrgroups"]
        ms = seconds[0] * 1e3
        verdict = _verdict(ms, info["goal_ms"], [seconds[1] * 1e3, seconds[2] * 1e3])
        timm_ms = f"{info['seconds']['timm'][0] * 1e3:.2f} ms" if "timm" in info["seconds"] else "n/a"
        ratio = fmt_ratio(info["ratio"]["lrgroups"]) if "ratio" in info else "n/a"
        rows.append(
            [info["model"], info["tensors"], f"{ms:.2f} ms [{seconds[1] * 1e3:.2f}, {seconds[2] * 1e3:.2f}]", timm_ms, ratio, f"≤ {info['goal_ms']:.0f} ms", verdict]
        )
        summary.append([f"build, {info['model']}", f"≤ {info['goal_ms']:.0f} ms", f"{ms:.2f} ms", verdict])
    lines += _table(["model", "tensors", "lrgroups build [95% CI]", "timm build", "lrgroups / timm", "goal", "result"], rows)
    for info in meta_vs_real:
        lines += [
            f"Meta vs real tensors ({info['model']}, real on {info['device']}): build on the real model / build on "
            f"meta = {fmt_ratio(info['ratio']['real'])} (meta {fmt_seconds(info['seconds']['meta'][0])}, real "
            f"{fmt_seconds(info['seconds']['real'][0])}).",
            "",
        ]
    for info in large:
        if info.get("profile"):
            lines += _profile_lines(f"build profile, {info['model']}", info["profile"])
    families_section = _build_families(families)
    return Section(lines + families_section.lines, summary + families_section.summary)


def _build_families(families: list[dict]) -> Section:
    """The build time over every timm family with ``group_matcher``: the distribution, the slowest five,
    failures and fallbacks."""
    summary: list[list[str]] = []
    lines: list[str] = []
    ok = [f for f in families if f.get("status") == "ok"]
    failed = [f for f in families if f.get("status") in ("build_failed", "create_failed")]
    skipped = [f for f in families if f.get("status") == "no_group_matcher"]
    lines += ["### Every timm architecture family with `group_matcher`", ""]
    if ok:
        times = sorted((f["seconds"]["lrgroups"][0], f) for f in ok)
        ms = [t * 1e3 for t, _ in times]
        per_tensor = [f["seconds"]["lrgroups"][0] * 1e6 / max(f["tensors"], 1) for f in ok]
        ratios = [f["ratio"]["lrgroups"][0] for f in ok if "ratio" in f]
        worst = times[-1][1]
        over = [f for t, f in times if t * 1e3 > 20.0]
        lines += _table(
            ["families built", "median", "90th percentile", "max", "median per tensor", "median lrgroups / timm", "over 20 ms"],
            [
                [
                    len(ok),
                    f"{statistics.median(ms):.2f} ms",
                    f"{ms[min(len(ms) - 1, int(0.9 * len(ms)))]:.2f} ms",
                    f"{ms[-1]:.2f} ms ({worst['model']}, {worst['tensors']} tensors)",
                    f"{statistics.median(per_tensor):.1f} µs",
                    f"{statistics.median(ratios):.2f}" if ratios else "n/a",
                    len(over),
                ]
            ],
        )
        summary.append(
            [f"build, {len(ok)} timm families (one small model each)", "report median / max", f"{statistics.median(ms):.2f} / {ms[-1]:.2f} ms", "—"]
        )
        lines += ["Slowest five:", ""]
        lines += _table(
            ["family (module)", "model", "tensors", "lrgroups build", "timm build"],
            [
                [
                    f["module"],
                    f["model"],
                    f["tensors"],
                    f"{t * 1e3:.2f} ms",
                    f"{f['seconds']['timm'][0] * 1e3:.2f} ms" if "timm" in f["seconds"] else "n/a",
                ]
                for t, f in reversed(times[-5:])
            ],
        )
    lines += [
        f"Failures ({len(failed)}): " + (", ".join(f"{f['model']} ({f['status']}: {f.get('error', '')})" for f in failed) or "none") + ".",
        "",
        f"Without `group_matcher` (generic depths; not timed here) ({len(skipped)}): "
        + (", ".join(f"{f['module']} ({f['model']})" for f in skipped) or "none")
        + ".",
        "",
    ]
    fallback = [f for f in ok if f.get("created_on") != "meta"]
    if fallback:
        lines += ["Created on the CPU (meta creation failed): " + ", ".join(f["model"] for f in fallback) + ".", ""]
    no_timm = [f for f in ok if f.get("timm_error")]
    if no_timm:
        lines += ["timm's reference build failed for: " + ", ".join(f"{f['model']} ({f['timm_error']})" for f in no_timm) + ".", ""]
    return Section(lines, summary)


def _unfreeze(section: list[dict]) -> Section:
    def row(info: dict) -> tuple[list[Any], list[list[str]]]:
        seconds = info["seconds"]
        ms = seconds["unfreeze"][0] * 1e3
        verdict = _verdict(ms, info["goal_ms"])
        return ([info["model"], f"`{info['pattern']}` ({info['tensors']} tensors)",
                 f"{ms:.3f} ms [{seconds['unfreeze'][1] * 1e3:.3f}, {seconds['unfreeze'][2] * 1e3:.3f}]",
                 f"{seconds['freeze'][0] * 1e3:.3f} ms", f"{seconds['add_param_group'][0] * 1e3:.3f} ms",
                 fmt_ratio(info["ratio"]["unfreeze"]), f"≤ {info['goal_ms']:.0f} ms", verdict],
                [[f"unfreeze one block, {info['model']}", f"≤ {info['goal_ms']:.0f} ms", f"{ms:.3f} ms", verdict]])

    def profiles(section: list[dict]) -> list[str]:
        return [line for info in section if info.get("profile")
                for line in _profile_lines("unfreeze + freeze profile", info["profile"])]

    return _rendered(section, "Unfreeze time", [
        "Hot-adding one ViT-B block: all `blocks.*` frozen by a rule, then `opt.unfreeze('blocks.11.*')`, "
        "re-frozen (untimed) between samples; `freeze` timed the other way round; the reference is torch's "
        "`add_param_group` of the same tensors on a bare AdamW.",
        "",
    ], ["model", "selection", "unfreeze [95% CI]", "freeze", "add_param_group", "unfreeze / add_param_group", "goal",
        "result"], row, after=profiles)


def _memory(section: list[dict]) -> Section:
    mib = 2**20

    def row(info: dict) -> tuple[list[Any], list[list[str]]]:
        equal = info["state_bytes"] == info["bare_state_bytes"] == info["expected_state_bytes"]
        no_copy = (
            info["group_params_are_model_params"]
            and info["group_params_share_model_storage"]
            and info["group_params_are_trainable_params"]
            and info["state_aliases_params"] == 0
            and info["other_tensor_bytes"] == 0
        )
        verdict = "PASS" if equal and no_copy and info["frozen_with_state"] == 0 else "FAIL"
        return ([info["model"], info["optimizer"], f"{info['trainable_tensors']} / {info['frozen_tensors']}",
                 f"{info['trainable_param_bytes'] / mib:.2f} / {info['frozen_param_bytes'] / mib:.2f} MiB",
                 f"{info['state_bytes']:,}", f"{info['bare_state_bytes']:,}", f"{info['expected_state_bytes']:,}",
                 info["frozen_with_state"],
                 "yes" if info["group_params_are_model_params"] and info["group_params_share_model_storage"] else "NO",
                 f"{info['other_tensors']} ({info['other_tensor_bytes']} B)", f"{info['ratio']['wrapped'][0]:.3f}",
                 verdict],
                [[f"memory, {info['model']}, {info['optimizer']}", "state = bare = expected; no copy",
                  f"{info['state_bytes'] / mib:.1f} MiB, {'equal' if equal else 'DIFFERS'}", verdict]])

    return _rendered(section, "Memory", [
        "Optimizer state after one step, `blocks.0-5` frozen: the wrapper's state bytes against the bare "
        "inner optimizer built from the same groups and against what the optimizer needs by construction "
        "(AdamW: 2 × trainable parameter bytes + one step scalar per tensor; SGD momentum: 1 ×). *Other "
        "tensors* are tensors reachable from the wrapper that are neither model parameters nor optimizer "
        "state (a copy would show there).",
        "",
    ], ["model", "optimizer", "tensors trainable / frozen", "params trainable / frozen", "state bytes",
        "bare state bytes", "expected", "frozen with state", "groups hold model's tensors (id, data_ptr)",
        "other tensors", "first step wrapped / bare", "result"], row)


def _norm_hooks(section: list[dict]) -> Section:
    def row(info: dict) -> tuple[list[Any], list[list[str]]]:
        ratio = info["ratio"]["optimizer_alive"]
        return ([info["model"], info["size"], f"{info['modules']}", fmt_seconds(info["seconds"]["no_optimizer"][0]),
                 fmt_ratio(ratio)],
                [[f"forward of another model while frozen-norm hooks are installed, {info['model']} {info['size']}",
                  "report", f"{ratio[0]:.3f}", "—"]])

    return _rendered(section, "Frozen-norm hooks: what the rest of the process pays", [
        "The eval forward of an unrelated resnet18 while a LayerwiseOptimizer with a frozen-BatchNorm rule is "
        "alive (its process-wide module hooks installed), against the same forward with none alive.",
        "",
    ], ["model", "input", "modules", "forward, none alive", "alive / none"], row, skip_empty=True)


def _monitor(section: list[dict]) -> Section:
    def row(info: dict) -> tuple[list[Any], list[list[str]]]:
        seconds, ratio = info["seconds"], info["ratio"]
        rare = ratio["monitor_every_100"]
        verdict = _verdict(rare[0], info["goal"], rare)
        return ([info["model"], info["optimizer"], f"{info['tensors']}", fmt_seconds(seconds["no_monitor"][0]),
                 fmt_ratio(rare), fmt_ratio(ratio["monitor_every_step"]), f"≤ {info['goal']:.2f}", verdict],
                [[f"forgetting monitor every 100 steps / none, {info['model']}", f"≤ {info['goal']:.2f}",
                  f"{rare[0]:.3f}", verdict],
                 [f"forgetting monitor every step / none, {info['model']}", "report",
                  f"{ratio['monitor_every_step'][0]:.3f}", "—"]])

    return _rendered(section, "Forgetting monitor", [
        "`opt.step()` with a `ForgettingMonitor` measuring every 100th step and one measuring every step, "
        "against the same step with no monitor (gradients set once; the ratio is against the step alone, an "
        "upper bound on the cost against a training step).",
        "",
    ], ["model", "optimizer", "tensors", "step, no monitor", "every 100 / none", "every step / none",
        "goal (every 100)", "result"], row, skip_empty=True)


def _bandwidth(section: list[dict], cuda: bool) -> Section:
    summary: list[list[str]] = []
    lines = ["## AdamW step against the memory-bandwidth floor (CUDA)", ""]
    if not section:
        reason = "no CUDA device in this run" if not cuda else "the test did not record results"
        summary.append(["CUDA: layered fused AdamW / single-group fused AdamW, ViT-B", "≤ 1.10", "not run", "—"])
        return Section(lines + [f"Not run: {reason}.", ""], summary)
    for info in section:
        lines += [
            f"{info['model']} ({info['numel'] / 1e6:.1f} M parameters, {info['groups']} layered groups) on "
            f"{info['device_name']}. Floor = 28 B × N / copy bandwidth ({info['copy_gbs']:.0f} GB/s measured with "
            f"`copy_` of N floats) = {fmt_seconds(info['floor_s'])}.",
            "",
        ]
        rows = []
        for name, seconds in info["seconds"].items():
            if name == "copy":
                continue
            ratio = fmt_ratio(info["ratio"][name]) if name in info["ratio"] else "1 (baseline)"
            rows.append(
                [name, fmt_seconds(seconds[0]), f"{info['achieved_gbs'][name]:.0f} GB/s", f"{seconds[0] / info['floor_s']:.2f}", ratio]
            )
        lines += _table(["variant", "step", "achieved (28 B/param)", "step / floor", "ratio to single_fused"], rows)
        ratio = info["ratio"]["layered_fused"]
        verdict = _verdict(ratio[0], info["goal"], ratio)
        lines += [f"Layer-decayed fused step / single-group fused step: {fmt_ratio(ratio)}, goal ≤ {info['goal']:.2f}: {verdict}.", ""]
        summary.append([f"CUDA: layered fused AdamW / single-group fused AdamW, {info['model']}", f"≤ {info['goal']:.2f}", f"{ratio[0]:.3f}", verdict])
    return Section(lines, summary)


def _peak_memory(benchmarks: list[dict]) -> Section:
    """The CUDA mode's peak memory per measurement (``peak_memory_bytes``); nothing for a run without it."""
    infos = [b.get("extra_info", {}) for b in benchmarks]
    infos = [info for info in infos if "peak_memory_bytes" in info and "section" in info]
    if not infos:
        return Section([], [])
    rows = [[info["section"], info["model"], info.get("optimizer", "fused + foreach AdamW, copy"), info["device"],
             "not on CUDA" if info["peak_memory_bytes"] is None else f"{info['peak_memory_bytes'] / 2**20:,.0f} MiB"]
            for info in infos]
    return Section(["## Peak device memory", "",
                    "`torch.cuda.max_memory_allocated` over each measurement's timed rounds (reset before them): "
                    "the model's parameters and gradients, every optimizer's state and the step's temporaries "
                    "(\"not on CUDA\": the CPU rehearsal has no such counter).", "",
                    *_table(["section", "model", "optimizer", "device", "peak"], rows)], [])


def _cuda_measurement(results: dict[str, Any]) -> dict | None:
    for bench in results.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if info.get("section") == "bandwidth" and info.get("device", "cuda") == "cuda" and "layered_fused" in info.get(
                "ratio", {}):
            return info
    return None


def cuda_docs_row(gpu_perf_json: Path) -> str:
    """The docs' CUDA row (:data:`CUDA_ROW`, a markdown table row) from a CUDA run's ``perf.json``: the
    median ratio layered / single-group fused AdamW, on which GPU, and PASS/MISS/MISS* against the goal
    (1.10); "not run" while the file is missing or holds no CUDA measurement (a CPU rehearsal's
    records say ``device: cpu`` and do not count)."""
    info = _cuda_measurement(json.loads(gpu_perf_json.read_text())) if gpu_perf_json.exists() else None
    if info is None:
        return f"| {CUDA_ROW} | ≤ 1.10 | not run | — |"
    label = CUDA_ROW if info["model"] == "vit_base_patch16_224" else CUDA_ROW.replace("ViT-B", info["model"])
    ratio = info["ratio"]["layered_fused"]
    verdict = _verdict(ratio[0], info["goal"], ratio)
    return f"| {label} | ≤ {info['goal']:.2f} | {ratio[0]:.3f} on {info['device_name']} | {verdict} |"


def with_cuda_row(table: str, gpu_perf_json: Path) -> str:
    """``table`` (the summary table of the CPU ``perf.md``) with its CUDA row replaced by
    :func:`cuda_docs_row` of ``gpu_perf_json`` (appended when the table has none)."""
    row = cuda_docs_row(gpu_perf_json)
    lines = table.rstrip("\n").split("\n")
    at = [i for i, line in enumerate(lines) if line.startswith("| CUDA: layered fused AdamW / single-group fused AdamW")]
    if at:
        lines[at[0]] = row
    else:
        lines.append(row)
    return "\n".join(lines)


def render(results: dict[str, Any], environment: dict[str, Any]) -> str:
    """The whole perf.md."""
    sections = _by_section(results.get("benchmarks", []))
    parts = [
        _step(sections.get("step", [])),
        _multi(sections.get("multi", [])),
        _layout(sections.get("layout", [])),
        _build(sections.get("build_large", []), sections.get("build_meta_vs_real", []), sections.get("build_family", [])),
        _unfreeze(sections.get("unfreeze", [])),
        _memory(sections.get("memory", [])),
        _monitor(sections.get("monitor", [])),
        _norm_hooks(sections.get("norm_hooks", [])),
        _bandwidth(sections.get("bandwidth", []), environment.get("cuda", False)),
        _peak_memory(results.get("benchmarks", [])),
    ]
    body = [line for part in parts for line in part.lines]
    summary = [row for part in parts for row in part.summary]

    head = [
        "# lrgroups performance",
        "",
        "Generated by `benchmarks/perf`; do not edit by hand. Regenerate with:",
        "",
        "```bash",
        environment["command"],
        "```",
        "",
        "Every figure is measured side by side in one run: the variants of a row alternate round by round "
        "(every rotation and its reverse: ABC, CBA, BCA, ACB, ...); ratios are medians of per-round ratios with a distribution-free 95% interval. "
        "PASS/MISS is decided on the median; MISS* marks a miss that the interval or the A/A control shows "
        "is within this run's noise. Raw numbers: `perf.json` (pytest-benchmark; `extra_info` holds the "
        "side-by-side summaries).",
        "",
    ]
    if environment.get("rehearsal"):
        head += ["**A CUDA rehearsal on the CPU at a tiny size: it checks the CUDA mode's code path; its numbers are "
                 "no GPU measurement.**", ""]
    head += ["## Environment", ""]
    head += _table(["", ""], [[key, value] for key, value in environment.items() if key not in ("command", "cuda")])
    head += ["## Summary", ""]
    head += _table(["measurement", "goal", "measured", "result"], summary)
    return "\n".join(head + body).rstrip() + "\n"
