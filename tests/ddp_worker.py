"""Progressive unfreezing under DDP and FSDP2 (2 gloo ranks on CPU), used by test_distributed.py."""

from __future__ import annotations

import gc
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import fully_shard

import lrgroups

STEPS = 6
GLOBAL_BATCH = 8


def build(shard=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    if shard is not None:
        for layer in model[::2]:
            shard(layer)
        shard(model)
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-2, weight_decay=0.05,
                                      rules=[lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()])
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_steps=2)
    return model, opt, schedule


def batch(step):
    generator = torch.Generator().manual_seed(step)
    return torch.randn(GLOBAL_BATCH, 5, generator=generator), torch.randint(0, 3, (GLOBAL_BATCH,), generator=generator)


def train(model, forward, opt, schedule, rank, world):
    for step in range(STEPS):
        x, y = batch(step)
        shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
        nn.functional.cross_entropy(forward(x[shard]), y[shard]).backward()
        opt.step()
        opt.zero_grad()
        schedule.step()
    full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
    return torch.cat([p.detach().flatten() for p in full])


def run(rank, world, out_dir):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    for mode in ("plain", "wrapped", "fsdp2"):
        model, opt, schedule = build(fully_shard if mode == "fsdp2" else None)
        if mode == "plain":
            forward = nn.parallel.DistributedDataParallel(model)
        elif mode == "wrapped":
            forward = lrgroups.wrap_ddp(model)
        else:
            forward = model
        results[mode] = train(model, forward, opt, schedule, rank, world)
        del model, opt, schedule, forward  # DDP's reducer goes before the process group, not at exit
        gc.collect()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    world, port, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.environ["MASTER_PORT"] = port
    torch.multiprocessing.spawn(run, args=(world, out_dir), nprocs=world, join=True)
