"""DDP (2 gloo ranks, spawned), torch.compile and FSDP2 with progressive unfreezing; DCP round trips."""

from __future__ import annotations

import os
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


def _run_worker(*args) -> None:
    """Run a worker script of this folder on this checkout's lrgroups (not another installed one)."""
    root = str(Path(__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    subprocess.run(
        [sys.executable, str(Path(__file__).with_name(args[0])), *map(str, args[1:])], check=True, timeout=300, env=env
    )


def test_ddp_progressive_unfreezing_equals_one_process(tmp_path):
    """Under DDP built by wrap_ddp, progressive unfreezing gives every rank the parameters one
    process gets on the same global batch (1e-6); so does FSDP2 (fully_shard per layer, optimizer
    built on the sharded DTensor parameters, no wrapper needed). Plain DDP, built while the backbone was frozen,
    never reduces the later-unfrozen parameters: the ranks drift apart (the bug wrap_ddp solves)."""
    _run_worker("ddp_worker.py", 2, _free_port(), tmp_path)
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
    opt = lrgroups.LayerwiseOptimizer(
        compiled,
        torch.optim.AdamW,
        lr=1e-2,
        weight_decay=0.05,
        rules=[lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()],
    )
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_steps=2)
    assert opt.explain().name.tolist() == eager_opt.explain().name.tolist()
    result = train(model, compiled, opt, schedule, rank=0, world=1)
    torch.testing.assert_close(result, eager, atol=1e-6, rtol=0)
    assert schedule.stage == eager_schedule.stage == 2 and schedule.stages_remaining == 0


def test_dcp_round_trip_with_several_empty_groups_resumes_bitwise_under_fsdp2(tmp_path):
    """pytorch#143828: FSDP2 (fully_shard, 2 gloo ranks), a LayerwiseOptimizer with four empty groups
    (two frozen layers, weights and biases apart) at the save: get_optimizer_state_dict -> dcp.save
    -> (a fresh process) dcp.load -> set_optimizer_state_dict, flattened and not, inside
    lrgroups.distributed.dcp_layout. Without it torch raises ValueError (nested) and IndexError
    (flattened). The resumed run (a chainable ExponentialLR, the frozen layers unfrozen after the
    resume) ends with bitwise the parameters, lrs and frozen set of the uninterrupted run."""
    for phase in ("save", "resume"):
        _run_worker("dcp_worker.py", phase, 2, _free_port(), tmp_path)
    for rank in range(2):
        full = torch.load(tmp_path / f"rank{rank}_full.pt", weights_only=True)
        assert not any(full["frozen"]) and len(set(full["lrs"])) == 4  # everything thawed after the resume
        for layout in ("nested", "flat"):
            resumed = torch.load(tmp_path / f"rank{rank}_{layout}.pt", weights_only=True)
            assert torch.equal(resumed["params"], full["params"]), (rank, layout)
            assert resumed["lrs"] == full["lrs"] and resumed["frozen"] == full["frozen"], (rank, layout)


def test_dcp_layout_lists_frozen_parameters_inside_and_restores_on_error():
    """Inside dcp_layout every group lists its frozen parameters too (plan order); on leaving, also
    after an error, they are in no group again; a framework's wrapper is looked through; anything
    else is refused."""
    import pytest

    from lrgroups.distributed import dcp_layout

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    opt = lrgroups.LayerwiseOptimizer(
        model, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5), lrgroups.Rule("[01].*", frozen=True)]
    )
    outside = [list(group["param_names"]) for group in opt.param_groups]
    assert outside == [[], [], ["2.weight", "2.bias"]]

    class Wrapped:  # what accelerate and Lightning hand back
        optimizer = opt

    with pytest.raises(RuntimeError, match="boom"):
        with dcp_layout(Wrapped()) as inside:
            assert inside is opt
            assert [g["param_names"] for g in opt.param_groups] == [
                ["0.weight", "0.bias"],
                ["1.weight", "1.bias"],
                ["2.weight", "2.bias"],
            ]
            assert opt.param_groups[0]["params"] == [model[0].weight, model[0].bias]
            raise RuntimeError("boom")
    assert [g["param_names"] for g in opt.param_groups] == outside
    assert opt.param_groups[0]["params"] == [] and opt.inner.param_groups[0]["params"] == []
    with pytest.raises(TypeError, match="no LayerwiseOptimizer inside SGD"):
        with dcp_layout(torch.optim.SGD(model.parameters(), lr=0.1)):
            pass
