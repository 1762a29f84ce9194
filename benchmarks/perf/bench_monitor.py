"""The forgetting monitor's cost per step: ``opt.step()`` of a layer-decayed resnet18 AdamW with no
monitor, with a :class:`~lrgroups.monitor.ForgettingMonitor` that measures every 100th step (asked
for rarely: its hooks only count), and with one that measures every step (two weight copies and a
norm per tensor each step), interleaved in the same rounds. Gradients are set once (no forward or
backward in the timed region), so the ratios are the cost against the step alone, an upper bound on
the cost against a training step."""

from __future__ import annotations

import torch

from lrgroups.monitor import ForgettingMonitor

from .harness import Interleaved, measure, scaled
from .workloads import DEVICE, model_for, wrapped

MODEL = "resnet18"
GOAL_RARE = 1.05  # measuring every 100th step: within 5% of the unmonitored step


def test_monitor_overhead(benchmark) -> None:
    benchmark.group = "monitor"
    model = model_for(MODEL)
    plain, rare, every = (wrapped(model, "adamw_foreach") for _ in range(3))
    monitors = [ForgettingMonitor(rare, every=100), ForgettingMonitor(every, every=1)]
    for o in (plain, rare, every):
        o.step()
    timer = Interleaved(
        {"no_monitor": plain.step, "monitor_every_100": rare.step, "monitor_every_step": every.step},
        device=DEVICE, inner=1, warmup=2,
    )
    measure(benchmark, timer, scaled(30), baseline="no_monitor")
    for monitor in monitors:
        monitor.close()
    benchmark.extra_info.update(
        section="monitor", model=MODEL, optimizer="adamw_foreach", goal=GOAL_RARE,
        tensors=sum(1 for _ in model.parameters()), threads=torch.get_num_threads(),
    )
