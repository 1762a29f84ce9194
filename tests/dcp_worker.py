"""torch.distributed.checkpoint round trips of a LayerwiseOptimizer with several frozen (empty) groups
under FSDP2 (fully_shard, 2 gloo ranks on CPU), used by test_distributed.py.

``python dcp_worker.py save WORLD PORT DIR``: trains uninterrupted (``DIR/rank{r}_full.pt``), and trains
``SAVE_AT`` steps and saves with ``dcp.save`` (``DIR/nested``, ``DIR/flat``) while four groups are empty.
``python dcp_worker.py resume WORLD PORT DIR``: a fresh process builds a fresh model and optimizer,
loads each checkpoint and trains to ``STEPS`` (``DIR/rank{r}_{nested,flat}.pt``).
"""

from __future__ import annotations

import io
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

import lrgroups
from lrgroups.distributed import dcp_layout

STEPS = 7
SAVE_AT = 3  # stage 1 of 3: layers 0 and 2 frozen, so four groups (weights, biases) are empty
GLOBAL_BATCH = 8


def build():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )
    for layer in model[::2]:
        fully_shard(layer)
    fully_shard(model)
    opt = lrgroups.LayerwiseOptimizer(
        model,
        torch.optim.AdamW,
        lr=1e-2,
        weight_decay=0.05,
        rules=[lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()],
    )
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_steps=2)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8)  # chainable: reads each group's lr
    return model, opt, schedule, scheduler


def train(model, opt, schedule, scheduler, steps, rank, world):
    for step in steps:
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(GLOBAL_BATCH, 5, generator=generator)
        y = torch.randint(0, 3, (GLOBAL_BATCH,), generator=generator)
        shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
        nn.functional.cross_entropy(model(x[shard]), y[shard]).backward()
        opt.step()
        opt.zero_grad()
        schedule.step()
        scheduler.step()


def result(model, opt):
    return {
        "params": torch.cat([p.full_tensor().detach().flatten() for p in model.parameters()]),
        "lrs": [group["lr"] for group in opt.param_groups],
        "frozen": opt.explain().frozen.tolist(),
    }


def save(directory, rank, world):
    for flat in (False, True):
        options = StateDictOptions(flatten_optimizer_state_dict=flat)
        model, opt, schedule, scheduler = build()
        train(model, opt, schedule, scheduler, range(SAVE_AT), rank, world)
        assert sum(not group["params"] for group in opt.param_groups) == 4
        with dcp_layout(opt):
            optim = get_optimizer_state_dict(model, opt, options=options)
        train_state = io.BytesIO()  # DCP stores bytes as they are (it would split a nested dict into keys)
        torch.save({"schedule": schedule.state_dict(), "scheduler": scheduler.state_dict()}, train_state)
        state = {"model": get_model_state_dict(model), "optim": optim, "train": train_state}
        dcp.save(state, checkpoint_id=os.path.join(directory, "flat" if flat else "nested"))
    model, opt, schedule, scheduler = build()
    train(model, opt, schedule, scheduler, range(STEPS), rank, world)
    torch.save(result(model, opt), os.path.join(directory, f"rank{rank}_full.pt"))


def resume(directory, rank, world):
    for flat in (False, True):
        options = StateDictOptions(flatten_optimizer_state_dict=flat)
        checkpoint = os.path.join(directory, "flat" if flat else "nested")
        model, opt, schedule, scheduler = build()
        loaded = {"train": io.BytesIO()}
        dcp.load(loaded, checkpoint_id=checkpoint)
        loaded["train"].seek(0)
        train_state = torch.load(loaded["train"], weights_only=True)
        schedule.load_state_dict(train_state["schedule"])  # the frozen set first: DCP does not carry it
        scheduler.load_state_dict(train_state["scheduler"])
        with dcp_layout(opt):
            state = {
                "model": get_model_state_dict(model),
                "optim": get_optimizer_state_dict(model, opt, options=options),
            }
            dcp.load(state, checkpoint_id=checkpoint)
            set_model_state_dict(model, state["model"])
            set_optimizer_state_dict(model, opt, state["optim"], options=options)
        train(model, opt, schedule, scheduler, range(SAVE_AT, STEPS), rank, world)
        torch.save(result(model, opt), os.path.join(directory, f"rank{rank}_{'flat' if flat else 'nested'}.pt"))


def run(rank, phase, world, directory):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        (save if phase == "save" else resume)(directory, rank, world)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    phase, world, port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    os.environ["MASTER_PORT"] = port
    torch.multiprocessing.spawn(run, args=(phase, world, directory), nprocs=world, join=True)
