"""DDP (2 gloo ranks, spawned), torch.compile and FSDP2 with progressive unfreezing."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import torch
from ddp_worker import build, train

import lrgroups


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def test_ddp_progressive_unfreezing_equals_one_process(tmp_path):
    """Under DDP built by wrap_ddp, progressive unfreezing gives every rank the parameters one
    process gets on the same global batch (1e-6); so does FSDP2 (fully_shard per layer, optimizer
    built on the sharded DTensor parameters, no wrapper needed). Plain DDP, built while the backbone was frozen,
    never reduces the later-unfrozen parameters: the ranks drift apart (the bug wrap_ddp solves)."""
    worker = Path(__file__).with_name("ddp_worker.py")
    subprocess.run([sys.executable, str(worker), "2", _free_port(), str(tmp_path)], check=True, timeout=300)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    model, opt, schedule = build()
    reference = train(model, model, opt, schedule, rank=0, world=1)
    for rank in ranks:
        torch.testing.assert_close(rank["wrapped"], reference, atol=1e-6, rtol=0)
        torch.testing.assert_close(rank["fsdp2"], reference, atol=1e-6, rtol=0)
    assert not torch.allclose(ranks[0]["plain"], ranks[1]["plain"], atol=1e-4)


def test_torch_compile_model_with_unfreezing_matches_eager():
    """A torch.compile'd model (aot_eager backend) trains under progressive unfreezing with the same
    names, groups and (to 1e-6) parameters as the eager model."""
    eager_model, eager_opt, eager_schedule = build()
    eager = train(eager_model, eager_model, eager_opt, eager_schedule, rank=0, world=1)
    model, _, _ = build()
    compiled = torch.compile(model, backend="aot_eager")
    opt = lrgroups.LayerwiseOptimizer(compiled, torch.optim.AdamW, lr=1e-2, weight_decay=0.05,
                                      rules=[lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()])
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_steps=2)
    assert opt.explain().name.tolist() == eager_opt.explain().name.tolist()
    result = train(model, compiled, opt, schedule, rank=0, world=1)
    torch.testing.assert_close(result, eager, atol=1e-6, rtol=0)
    assert schedule.stage == eager_schedule.stage == 2 and schedule.stages_remaining == 0
