"""Step overhead: ``LayerwiseOptimizer.step()`` against the bare inner optimizer's ``step()`` with
identical param groups (same tensors, lr, weight decay), interleaved in the same rounds. A second,
independent bare optimizer is timed alongside as an A/A control: its ratio to the first shows the
noise floor of the run. The multi-optimizer step (Muon + AdamW in one wrapper) is timed against the
same inner optimizers stepped by hand."""

from __future__ import annotations

import pytest
import torch

from .harness import Interleaved, measure, profile_diff, scaled
from .workloads import DEVICE, OPTIMIZERS, STEP_MODELS, bare_like, bare_like_inner, model_for, multi_wrapped, wrapped

GOALS = {"mlp": 1.10}
DEFAULT_GOAL = 1.02


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("model_name", list(STEP_MODELS))
def test_step_overhead(benchmark, model_name: str, optimizer: str) -> None:
    benchmark.group = "step overhead"
    goal = GOALS.get(model_name, DEFAULT_GOAL)
    inner, rounds = STEP_MODELS[model_name]
    model = model_for(model_name)
    cls, kwargs = OPTIMIZERS[optimizer]
    opt = wrapped(model, optimizer)
    bare = bare_like(opt, cls, kwargs)
    control = bare_like(opt, cls, kwargs)
    threads = torch.get_num_threads()
    if model_name == "mlp" and DEVICE.type == "cpu":
        # Tiny tensors never use a second thread; with one, the step stays overhead-bound even while
        # other processes keep the cores busy (two threads would time OpenMP waits instead).
        torch.set_num_threads(1)
    try:
        for o in (opt, bare, control):
            o.step()
        timer = Interleaved(
            {"bare": bare.step, "wrapped": opt.step, "bare_again": control.step}, device=DEVICE, inner=inner, warmup=2
        )
        summary = measure(benchmark, timer, scaled(rounds), baseline="bare")
        if summary["ratio"]["wrapped"][0] > goal or model_name == "mlp":
            benchmark.extra_info["profile_extra"] = profile_diff(
                opt.step, bare.step, repeats=scaled(200, 20) if inner > 1 else 3
            )
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info.update(
        section="step",
        model=model_name,
        optimizer=optimizer,
        groups=len(opt.param_groups),
        tensors=sum(len(g["params"]) for g in opt.param_groups),
        goal=goal,
    )


MULTI_GOAL = 1.00


@pytest.mark.parametrize("model_name", ["mlp", "vit_small_patch16_224"])
def test_multi_optimizer_step(benchmark, model_name: str) -> None:
    """One ``LayerwiseOptimizer`` over Muon (2-D hidden weights) and AdamW (the rest) against the same
    Muon and AdamW, with the same groups, stepped by hand one after the other."""
    benchmark.group = "multi-optimizer step"
    inner, rounds = STEP_MODELS[model_name]
    model = model_for(model_name)
    opt = multi_wrapped(model)
    by_hand = [bare_like_inner(inner_opt) for inner_opt in opt.inners.values()]
    control = [bare_like_inner(inner_opt) for inner_opt in opt.inners.values()]
    threads = torch.get_num_threads()
    if model_name == "mlp" and DEVICE.type == "cpu":
        torch.set_num_threads(1)

    def step_by_hand(optimizers=by_hand) -> None:
        for optimizer in optimizers:
            optimizer.step()

    try:
        for o in (opt, *by_hand, *control):
            o.step()
        timer = Interleaved(
            {"by_hand": step_by_hand, "wrapped": opt.step, "by_hand_again": lambda: step_by_hand(control)},
            device=DEVICE, inner=inner, warmup=2,
        )
        measure(benchmark, timer, scaled(rounds), baseline="by_hand")
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info.update(
        section="multi",
        model=model_name,
        optimizers="+".join(type(o).__name__ for o in opt.inners.values()),
        groups=len(opt.param_groups),
        tensors=sum(len(g["params"]) for g in opt.param_groups),
        goal=MULTI_GOAL,
    )
