"""A training run that can stop and resume in a fresh process (used by test_checkpoint.py).

    python resume_worker.py STEPS_TOTAL STOP_AT CHECKPOINT_IN|- CHECKPOINT_OUT

Runs steps [start, STOP_AT) where start is 0, or the step stored in CHECKPOINT_IN, then saves
model, optimizer, unfreezing schedule and LR scheduler to CHECKPOINT_OUT.
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn

import lrgroups


def build():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )
    opt = lrgroups.LayerwiseOptimizer(
        model, torch.optim.AdamW, lr=1e-2, weight_decay=0.05,
        rules=[lrgroups.layer_decay(0.6), lrgroups.no_weight_decay()],
    )
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_steps=3, warmup_steps=2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.per_group(1e-2), total_steps=40)
    return model, opt, schedule, scheduler


def train(model, opt, schedule, scheduler, start, stop):
    for step in range(start, stop):
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(8, 6, generator=generator)
        y = torch.randint(0, 3, (8,), generator=generator)
        if step == 5:
            opt.freeze("7.*", keep_state=True)  # a frozen parameter whose moments are kept aside
        if step == 9:
            opt.unfreeze("7.*")
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        schedule.step()
        scheduler.step()


def main(argv):
    total, stop, checkpoint_in, checkpoint_out = int(argv[0]), int(argv[1]), argv[2], argv[3]
    model, opt, schedule, scheduler = build()
    start = 0
    if checkpoint_in != "-":
        state = torch.load(checkpoint_in, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["unfreezing"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
    train(model, opt, schedule, scheduler, start, min(stop, total))
    torch.save(
        {
            "step": min(stop, total),
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "unfreezing": schedule.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
        checkpoint_out,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
