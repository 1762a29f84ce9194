"""The CUDA mode's benchmarks (``python -m benchmarks perf --cuda``; what, how and why fp32:
``benchmarks/perf/cuda.py``). Every test skips unless the runner selected a mode
(:func:`~benchmarks.perf.cuda.set_mode`), so a plain perf run only lists them as skipped.

Each records, besides the side-by-side summary of :func:`~benchmarks.perf.harness.measure` (seconds
per step, paired ratios), the device (``cuda`` or ``cpu`` for the rehearsal), ``rehearsal`` and
``peak_memory_bytes`` (``torch.cuda.max_memory_allocated`` over the timed rounds, bytes; ``None`` off
CUDA) in ``extra_info``, in the sections perf.md already renders (step, layout, bandwidth).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from .bench_bandwidth import adamw_bandwidth
from .bench_layout import GOAL as LAYOUT_GOAL
from .bench_step import DEFAULT_GOAL as STEP_GOAL
from .cuda import CudaMode, current_mode, mode_model, peak_bytes, reset_peak
from .harness import Interleaved, measure, profile_diff, scaled
from .workloads import OPTIMIZERS, bare_like, per_tensor_groups, single_group, wrapped


@pytest.fixture
def mode() -> CudaMode:
    selected = current_mode()
    if selected is None:
        pytest.skip("CUDA mode only: python -m benchmarks perf --cuda (or --cuda-rehearsal)")
    return selected


def _measured(benchmark, mode: CudaMode, variants: dict[str, Any], baseline: str, optimizers: tuple) -> dict:
    """One untimed step of each optimizer, then :func:`measure` with the CUDA peak memory of the timed
    rounds; the device facts go into ``extra_info``."""
    for optimizer in optimizers:
        optimizer.step()
    device = mode.torch_device
    timer = Interleaved(variants, device=device, inner=mode.inner, warmup=mode.warmup)
    reset_peak(device)
    summary = measure(benchmark, timer, scaled(mode.rounds), baseline=baseline)
    benchmark.extra_info.update(device=device.type, rehearsal=mode.rehearsal, peak_memory_bytes=peak_bytes(device),
                                params_dtype=str(next(mode_model(mode).parameters()).dtype).removeprefix("torch."))
    return summary


@pytest.mark.parametrize("optimizer", ["adamw_fused", "adamw_foreach", "sgd_momentum"])
def test_cuda_step_overhead(benchmark, mode: CudaMode, optimizer: str) -> None:
    """``LayerwiseOptimizer.step`` / the bare inner optimizer with the same groups (A/A: a second bare)."""
    benchmark.group = "step overhead"
    model = mode_model(mode)
    cls, kwargs = OPTIMIZERS[optimizer]
    opt = wrapped(model, optimizer)
    bare, control = bare_like(opt, cls, kwargs), bare_like(opt, cls, kwargs)
    summary = _measured(benchmark, mode, {"bare": bare.step, "wrapped": opt.step, "bare_again": control.step},
                        "bare", (opt, bare, control))
    if summary["ratio"]["wrapped"][0] > STEP_GOAL:
        benchmark.extra_info["profile_extra"] = profile_diff(opt.step, bare.step, repeats=scaled(20, 3))
    benchmark.extra_info.update(section="step", model=mode.model, optimizer=optimizer, groups=len(opt.param_groups),
                                tensors=sum(len(g["params"]) for g in opt.param_groups), goal=STEP_GOAL,
                                threads=torch.get_num_threads())


@pytest.mark.parametrize("optimizer", ["adamw_fused", "adamw_foreach"])
def test_cuda_group_layout(benchmark, mode: CudaMode, optimizer: str) -> None:
    """The merged layer-decay groups and one group per tensor, each / one single group."""
    benchmark.group = "group layout"
    cls, kwargs = OPTIMIZERS[optimizer]
    merged = wrapped(mode_model(mode), optimizer)
    per_tensor, single = per_tensor_groups(merged, cls, kwargs), single_group(merged, cls, kwargs)
    summary = _measured(benchmark, mode, {"single": single.step, "merged": merged.step, "per_tensor": per_tensor.step},
                        "single", (merged, per_tensor, single))
    if summary["ratio"]["merged"][0] > LAYOUT_GOAL:
        benchmark.extra_info["profile_extra"] = profile_diff(merged.step, single.step, repeats=scaled(20, 3))
    benchmark.extra_info.update(
        section="layout", model=mode.model, optimizer=optimizer, goal=LAYOUT_GOAL,
        groups={"merged": len(merged.param_groups), "per_tensor": len(per_tensor.param_groups), "single": 1},
    )


def test_cuda_layered_fused_adamw(benchmark, mode: CudaMode) -> None:
    """Layer-decayed fused AdamW / single-group fused AdamW against the bandwidth floor (the docs' CUDA
    row; ``bench_bandwidth.adamw_bandwidth``)."""
    benchmark.group = "bandwidth"
    device = mode.torch_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (rehearsal)"
    reset_peak(device)
    adamw_bandwidth(benchmark, mode_model(mode), model_name=mode.model, device=device, inner=mode.inner,
                    rounds=scaled(max(mode.rounds * 3 // 5, 6)), warmup=mode.warmup, device_name=name)
    benchmark.extra_info.update(rehearsal=mode.rehearsal, peak_memory_bytes=peak_bytes(device))
