"""Group layout cost: layer-decayed AdamW with lrgroups' merged groups (the LayerwiseOptimizer
itself) against the same per-tensor settings as one group per tensor (the mmengine way) and against
a single group, all on the same parameters and interleaved in the same rounds."""

from __future__ import annotations

import pytest

from .harness import Interleaved, measure, profile_diff, scaled
from .workloads import DEVICE, LAYOUT_MODELS, OPTIMIZERS, model_for, per_tensor_groups, single_group, wrapped

GOAL = 1.05
LAYOUT_OPTIMIZERS = ["adamw_foreach", "adamw_fused"]


@pytest.mark.parametrize("optimizer", LAYOUT_OPTIMIZERS)
@pytest.mark.parametrize("model_name", list(LAYOUT_MODELS))
def test_group_layout(benchmark, model_name: str, optimizer: str) -> None:
    benchmark.group = "group layout"
    inner, rounds = LAYOUT_MODELS[model_name]
    model = model_for(model_name)
    cls, kwargs = OPTIMIZERS[optimizer]
    merged = wrapped(model, optimizer)
    per_tensor = per_tensor_groups(merged, cls, kwargs)
    single = single_group(merged, cls, kwargs)
    for o in (merged, per_tensor, single):
        o.step()
    timer = Interleaved(
        {"single": single.step, "merged": merged.step, "per_tensor": per_tensor.step},
        device=DEVICE,
        inner=inner,
        warmup=2,
    )
    summary = measure(benchmark, timer, scaled(rounds), baseline="single")
    benchmark.extra_info.update(
        section="layout",
        model=model_name,
        optimizer=optimizer,
        groups={"merged": len(merged.param_groups), "per_tensor": len(per_tensor.param_groups), "single": 1},
        goal=GOAL,
    )
    if summary["ratio"]["merged"][0] > GOAL:
        benchmark.extra_info["profile_extra"] = profile_diff(merged.step, single.step, repeats=3)
