"""Unfreeze time: hot-adding one ViT-B block (``opt.unfreeze("blocks.11.*")``) to a layer-decayed
AdamW whose blocks are all frozen, re-frozen (untimed) before each sample. Timed alongside: the
matching ``opt.freeze("blocks.11.*")`` and, as the reference, the torch way of adding the same
tensors, ``AdamW.add_param_group`` on a bare optimizer holding the same trainable parameters."""

from __future__ import annotations

import lrgroups

from .harness import Interleaved, Variant, measure, profile_per_call, scaled
from .workloads import DEVICE, LR, OPTIMIZERS, bare_like, model_for, wrapped

GOAL_MS = 5.0
MODEL = "vit_base_patch16_224"
BLOCK = "blocks.11.*"


def test_unfreeze_block(benchmark) -> None:
    benchmark.group = "unfreeze"
    model = model_for(MODEL)
    opt = wrapped(model, "adamw_foreach", lrgroups.Rule("blocks.*", frozen=True))
    opt.step()
    cls, kwargs = OPTIMIZERS["adamw_foreach"]
    bare = bare_like(opt, cls, kwargs)
    base_groups = len(bare.param_groups)
    block = [p for name, p in model.named_parameters() if name.startswith("blocks.11.")]

    def ensure_frozen() -> None:
        if not opt.is_frozen("blocks.11.norm1.weight"):
            opt.freeze(BLOCK)

    def ensure_trainable() -> None:
        if opt.is_frozen("blocks.11.norm1.weight"):
            opt.unfreeze(BLOCK)

    def remove_added_group() -> None:
        del bare.param_groups[base_groups:]

    def add_group() -> None:
        bare.add_param_group({"params": block, "lr": LR, "weight_decay": 0.0})

    timer = Interleaved(
        {
            "add_param_group": Variant(add_group, setup=remove_added_group),
            "unfreeze": Variant(lambda: opt.unfreeze(BLOCK), setup=ensure_frozen),
            "freeze": Variant(lambda: opt.freeze(BLOCK), setup=ensure_trainable),
        },
        device=DEVICE,
        warmup=3,
    )
    summary = measure(benchmark, timer, scaled(60, 10), baseline="add_param_group", budget_s=10.0)
    ensure_frozen()
    benchmark.extra_info.update(
        section="unfreeze",
        model=MODEL,
        pattern=BLOCK,
        tensors=len(block),
        groups=len(opt.param_groups),
        goal_ms=GOAL_MS,
    )
    if summary["seconds"]["unfreeze"][0] * 1e3 > GOAL_MS:

        def cycle() -> None:
            opt.unfreeze(BLOCK)
            opt.freeze(BLOCK)

        benchmark.extra_info["profile"] = profile_per_call(cycle, repeats=10, top=15)
