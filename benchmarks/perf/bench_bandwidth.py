"""CUDA only: the AdamW step at ViT-B size against the memory-bandwidth floor.

An fp32 AdamW step reads param, grad, exp_avg, exp_avg_sq and writes param, exp_avg, exp_avg_sq:
about 28 bytes per parameter. Timed side by side: single-group fused AdamW (the baseline), single-group
foreach AdamW, the layer-decayed LayerwiseOptimizer (fused and foreach), and a device copy of one
flat buffer of the same number of elements (8 bytes per element) that gives the bandwidth this device
actually reaches, hence the floor ``28 * N / copy bandwidth``.
"""

from __future__ import annotations

import pytest
import torch

from .harness import Interleaved, measure, scaled
from .workloads import DEVICE, OPTIMIZERS, is_cuda, model_for, single_group, wrapped

GOAL = 1.10
MODEL = "vit_base_patch16_224"
BYTES_PER_PARAM = 28


@pytest.mark.skipif(not is_cuda(), reason="CUDA only")
def test_adamw_bandwidth(benchmark) -> None:
    benchmark.group = "bandwidth"
    adamw_bandwidth(benchmark, model_for(MODEL), model_name=MODEL, device=DEVICE, inner=10, rounds=scaled(60, 10),
                    warmup=3, device_name=torch.cuda.get_device_name(DEVICE))


def adamw_bandwidth(benchmark, model: torch.nn.Module, *, model_name: str, device: torch.device, inner: int,
                    rounds: int, warmup: int, device_name: str) -> dict:
    """Time the five variants of the module docstring on ``model`` (its parameters on ``device``) and
    store the summary, the copy bandwidth (GB/s), the floor (seconds) and the achieved bandwidth of
    each step (GB/s, at 28 bytes per parameter) in ``benchmark.extra_info`` (section "bandwidth");
    returns the summary. ``device_name`` names the device in the report."""
    numel = sum(p.numel() for p in model.parameters())
    variants = {}
    keep = []
    for optimizer in ("adamw_fused", "adamw_foreach"):
        cls, kwargs = OPTIMIZERS[optimizer]
        layered = wrapped(model, optimizer)
        single = single_group(layered, cls, kwargs)
        for o in (layered, single):
            o.step()
        keep += [layered, single]
        implementation = optimizer.split("_")[1]
        variants[f"single_{implementation}"] = single.step
        variants[f"layered_{implementation}"] = layered.step
    source = torch.randn(numel, device=device)
    target = torch.empty_like(source)
    variants["copy"] = lambda: target.copy_(source)
    timer = Interleaved(variants, device=device, inner=inner, warmup=warmup)
    summary = measure(benchmark, timer, rounds, baseline="single_fused")
    copy_gbs = 8 * numel / summary["seconds"]["copy"][0] / 1e9
    floor_s = BYTES_PER_PARAM * numel / (copy_gbs * 1e9)
    benchmark.extra_info.update(
        section="bandwidth",
        model=model_name,
        numel=numel,
        groups=len(keep[0].param_groups),
        goal=GOAL,
        copy_gbs=copy_gbs,
        floor_s=floor_s,
        achieved_gbs={
            name: BYTES_PER_PARAM * numel / seconds[0] / 1e9 for name, seconds in summary["seconds"].items() if name != "copy"
        },
        device=device.type,
        device_name=device_name,
    )
    return summary
