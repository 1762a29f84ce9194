"""Side-by-side timing: every figure is measured against a reference in the same rounds.

Each round runs every variant once; the order cycles through every rotation and its reverse (ABC,
CBA, BCA, ACB, CAB, BAC, ...), so each variant takes each position equally often and drift and load
from other processes hit all variants alike. A ratio is the median of the per-round ratios (paired),
with a distribution-free 95% interval for that median.

Example:
    >>> timer = Interleaved({"a": lambda: sum(range(100)), "b": lambda: sum(range(100))},
    ...                     device=torch.device("cpu"), warmup=1)
    >>> for _ in range(11):
    ...     timer.round()
    >>> sorted(timer.summary(baseline="a")["ratio"])
    ['b']
"""

from __future__ import annotations

import cProfile
import math
import os
import pstats
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

__all__ = ["Variant", "Interleaved", "median_interval", "measure", "profile_per_call", "profile_diff", "scaled",
           "set_scale", "set_time_share"]


#: The fraction of the rounds and time budgets a run uses: 1 for the full run; ``--quick`` sets it to
#: ``run.QUICK_SCALE`` through :func:`set_scale` before pytest imports the benchmarks.
_SCALE = {"value": 1.0}


def set_scale(scale: float) -> float:
    """Set the rounds scale for the benchmarks run next; returns the previous one.

    Raises:
        ValueError: ``scale`` is not positive.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    previous, _SCALE["value"] = _SCALE["value"], float(scale)
    return previous


#: The most seconds one measurement's timed rounds may take, whatever its own budget: the CUDA mode's
#: time box (``cuda.TimeBox``) sets it before each test; ``None``: no cap.
_SHARE: dict[str, float | None] = {"value": None}


def set_time_share(seconds: float | None) -> float | None:
    """Cap the timed rounds of the next :func:`measure` at ``seconds`` (``None``: no cap); returns the
    previous cap."""
    previous, _SHARE["value"] = _SHARE["value"], seconds
    return previous


def scaled(rounds: int, minimum: int = 5) -> int:
    """``rounds`` times the scale (:func:`set_scale`; ``--quick`` sets it below 1), at least ``minimum``."""
    return max(minimum, round(rounds * _SCALE["value"]))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Variant:
    """One thing to time: ``run`` is timed; ``setup`` (untimed) runs before each sample."""

    run: Callable[[], Any]
    setup: Callable[[], Any] | None = None


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """Median and a distribution-free 95% interval for it (order statistics of a binomial)."""
    ordered = sorted(values)
    n = len(ordered)
    k = max(0, math.floor((n - 1.96 * math.sqrt(n)) / 2))
    return statistics.median(ordered), ordered[k], ordered[n - 1 - k]


class Interleaved:
    """Times named variants round by round; see the module docstring.

    ``inner`` runs of a variant make one sample (for sub-millisecond work); the first ``warmup``
    rounds are discarded. On CUDA the device is synchronized before and after each sample.
    """

    def __init__(
        self,
        variants: Mapping[str, Callable[[], Any] | Variant],
        *,
        device: torch.device,
        inner: int = 1,
        warmup: int = 1,
    ) -> None:
        self.variants = {name: v if isinstance(v, Variant) else Variant(v) for name, v in variants.items()}
        if inner > 1 and any(v.setup for v in self.variants.values()):
            raise ValueError("a variant with setup runs once per sample (inner=1)")
        self.device = device
        self.inner = inner
        self.warmup = warmup
        self.samples: dict[str, list[float]] = {name: [] for name in self.variants}
        self._calls = 0

    def round(self) -> None:
        names = list(self.variants)
        shift = (self._calls // 2) % len(names)
        names = names[shift:] + names[:shift]
        if self._calls % 2:
            names.reverse()
        for name in names:
            variant = self.variants[name]
            if variant.setup is not None:
                variant.setup()
            synchronize(self.device)
            start = time.perf_counter()
            for _ in range(self.inner):
                variant.run()
            synchronize(self.device)
            elapsed = (time.perf_counter() - start) / self.inner
            if self._calls >= self.warmup:
                self.samples[name].append(elapsed)
        self._calls += 1

    def summary(self, baseline: str | None = None) -> dict[str, Any]:
        """Per variant: median seconds with its interval; per non-baseline variant: the paired ratio
        to ``baseline`` and the paired difference (seconds)."""
        out: dict[str, Any] = {
            "rounds": len(next(iter(self.samples.values()))),
            "inner": self.inner,
            "seconds": {name: list(median_interval(s)) for name, s in self.samples.items()},
        }
        if baseline is not None:
            base = self.samples[baseline]
            out["baseline"] = baseline
            out["ratio"] = {
                name: list(median_interval([a / b for a, b in zip(s, base, strict=True)]))
                for name, s in self.samples.items()
                if name != baseline
            }
            out["difference_s"] = {
                name: list(median_interval([a - b for a, b in zip(s, base, strict=True)]))
                for name, s in self.samples.items()
                if name != baseline
            }
        return out


def measure(
    benchmark,
    timer: Interleaved,
    rounds: int,
    baseline: str | None = None,
    budget_s: float = 20.0,
    min_rounds: int = 8,
) -> dict[str, Any]:
    """Run ``timer`` under pytest-benchmark (its stats are the time of one whole round, all
    variants) and store the side-by-side summary in ``benchmark.extra_info``.

    The warmup rounds run first; the last one's duration caps the rounds at what fits in
    ``budget_s`` (scaled like the rounds; capped by :func:`set_time_share`), never below ``min_rounds``,
    so a loaded machine makes the run longer by a bounded amount instead of many times over.
    """
    last = 0.0
    for _ in range(timer.warmup):
        start = time.perf_counter()
        timer.round()
        last = time.perf_counter() - start
    budget = budget_s * _SCALE["value"]
    if _SHARE["value"] is not None:
        budget = min(budget, _SHARE["value"])
    fitted = rounds if last <= 0 else max(min(rounds, min_rounds), min(rounds, int(budget / last)))
    benchmark.pedantic(timer.round, rounds=fitted, warmup_rounds=0, iterations=1)
    summary = timer.summary(baseline)
    benchmark.extra_info.update(summary)
    benchmark.extra_info.update(threads=torch.get_num_threads(), rounds_planned=rounds, budget_s=budget)
    return summary


def _profile(fn: Callable[[], Any], repeats: int) -> pstats.Stats:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeats):
        fn()
    profiler.disable()
    return pstats.Stats(profiler)


_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _label(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    if filename.startswith(_ROOT + os.sep):
        short = os.path.relpath(filename, _ROOT)
    elif "site-packages" in filename:
        short = filename.split("site-packages" + os.sep, 1)[1]
    else:
        short = os.path.basename(filename)
    return f"{short}:{line}({function})"


def profile_per_call(fn: Callable[[], Any], repeats: int, top: int = 12, sort: str = "cumulative") -> list[dict]:
    """cProfile of ``fn``: the ``top`` functions by ``sort``, times in microseconds per call of fn."""
    stats = _profile(fn, repeats)
    rows = []
    for key, (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        rows.append(
            {
                "function": _label(key),
                "calls": ncalls / repeats,
                "self_us": 1e6 * tottime / repeats,
                "cumulative_us": 1e6 * cumtime / repeats,
            }
        )
    order = "cumulative_us" if sort == "cumulative" else "self_us"
    rows.sort(key=lambda row: row[order], reverse=True)
    return rows[:top]


def profile_diff(fn: Callable[[], Any], reference: Callable[[], Any], repeats: int, top: int = 10) -> list[dict]:
    """What ``fn`` does per call that ``reference`` does not: functions whose call count or self
    time differs, largest extra self time first (cProfile, microseconds per call)."""
    ours = _profile(fn, repeats).stats
    theirs = _profile(reference, repeats).stats
    rows = []
    for key in set(ours) | set(theirs):
        a = ours.get(key, (0, 0, 0.0, 0.0, None))
        b = theirs.get(key, (0, 0, 0.0, 0.0, None))
        extra_calls = (a[1] - b[1]) / repeats
        extra_self = 1e6 * (a[2] - b[2]) / repeats
        if extra_calls:
            rows.append({"function": _label(key), "extra_calls": extra_calls, "extra_self_us": extra_self})
    rows.sort(key=lambda row: row["extra_self_us"], reverse=True)
    return rows[:top]
