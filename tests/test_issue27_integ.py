"""Issue 27, the integration items: each test failed on the code before its fix (see the commit messages).

- item 9: an unfreezing schedule counts optimizer *updates*, not calls (accelerate#963).
"""

from __future__ import annotations

import accelerate
import pytest
import torch
import torch.nn as nn

import lrgroups


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


# ---------------------------------------------------------------- item 9: updates, not calls
@pytest.mark.parametrize("every_steps", [1, 2])
def test_schedule_step_in_an_accelerate_accumulate_loop_counts_updates(every_steps):
    """accelerate#963: with gradient_accumulation_steps=4 the README loop calls schedule.step() after every
    micro-batch, but accelerate's optimizer updates once per 4 micro-batches (AcceleratedOptimizer skips the
    inner step while gradients are not synced). 12 micro-batches are 3 updates: the schedule counts 3 and
    advances every `every_steps` of them, never between the micro-batches of one update."""
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=4)
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, example_input=torch.zeros(1, 4))
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_steps=every_steps)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(48, 4), torch.randint(0, 2, (48,))),
                                       batch_size=4)
    model, prepared, data = accelerator.prepare(model, opt, data)
    stages = []
    for x, y in data:
        with accelerator.accumulate(model):
            accelerator.backward(nn.functional.cross_entropy(model(x), y))
            prepared.step()
            prepared.zero_grad()
            schedule.step()
            stages.append(schedule.stage)
    assert schedule.steps == 3
    assert stages == [min(micro_batch // 4 // every_steps, 2) for micro_batch in range(1, 13)]


def test_schedule_step_without_an_update_counts_nothing_and_a_skipped_amp_step_neither():
    """A call with no optimizer update since the last counted one returns [] and counts nothing; a step
    GradScaler skips (an inf gradient) is no update."""
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_steps=1)
    assert schedule.step() == [] and schedule.steps == 0 and schedule.stage == 0
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert schedule.step() == ["2.weight", "2.bias"] and schedule.steps == 1
    assert schedule.step() == [] and schedule.steps == 1
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.randn(2, 4)).sum().mul(float("inf"))).backward()
    scaler.step(opt)
    scaler.update()
    assert schedule.step() == [] and schedule.steps == 1 and schedule.stage == 1


def test_a_recipes_driver_counts_updates_in_an_accelerate_accumulate_loop():
    """The driver of Recipe.build, with after_step() called after every micro-batch (as the docs' loop does)
    under accelerate's gradient_accumulation_steps=4: 8 micro-batches are 2 updates, one stage each."""
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=4)
    model = _mlp()
    tuning = lrgroups.recipes.gradual_unfreezing(epochs_per_stage=1).build(model, torch.optim.SGD, lr=0.1,
                                                                           steps_per_epoch=1)
    model, opt = accelerator.prepare(model, tuning.optimizer)
    for micro_batch in range(8):
        with accelerator.accumulate(model):
            accelerator.backward(model(torch.randn(4, 4)).pow(2).mean())
            opt.step()
            opt.zero_grad()
            tuning.after_step()
    assert tuning.steps == 2 and tuning.unfreezing.stage == 2
