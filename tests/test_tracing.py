"""lrgroups.tracing: one forward pass, its first-use clock and heads; what it puts back; its cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lrgroups.tracing import trace_model


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head, self.calls = nn.Linear(4, 8), nn.Linear(8, 2), 0

    def forward(self, x):
        self.calls += 1
        return self.head(self.body(x).relu())


def test_trace_orders_first_uses_finds_the_head_and_is_cached():
    model = Counting()
    trace, why = trace_model(model, torch.randn(1, 4))
    assert why == "" and trace.first_call[id(model.body)] < trace.first_call[id(model.head)]
    assert id(model.head) in trace.head_modules and id(model.body) not in trace.head_modules
    assert model.calls == 2  # once in eval mode, once in train mode
    again, _ = trace_model(model, torch.randn(1, 4))
    assert again is trace and model.calls == 2  # the same input shape: cached, the model did not run again


def test_trace_puts_back_modes_and_requires_grad_and_removes_its_hooks_when_the_forward_raises():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).train()
    model[0].requires_grad_(False)
    with pytest.raises(ValueError, match="failed on example_input"):
        trace_model(model, torch.randn(1, 3))
    assert model.training and not model[0].weight.requires_grad
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    trace, _ = trace_model(model, torch.randn(2, 4))
    assert model.training and model[1].num_batches_tracked == 0 and model[0].weight.grad is None


def test_no_trace_without_a_runnable_input_says_why():
    lazy = nn.Sequential(nn.LazyLinear(2))
    assert trace_model(lazy, None) == (None, "it has uninitialized (lazy) parameters")
