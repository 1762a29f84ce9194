"""Hypothesis strategies shared by the property tests: random module trees and random rules."""

from __future__ import annotations

import torch
import torch.nn as nn
from hypothesis import strategies as st

import lrgroups


class Block(nn.Module):
    """A composite module (not a container): a residual-block stand-in."""

    def __init__(self, *parts: nn.Module) -> None:
        super().__init__()
        for index, part in enumerate(parts):
            self.add_module(f"part{index}", part)


def _leaf(kind: str, width: int) -> nn.Module:
    return {
        "linear": lambda: nn.Linear(width, width),
        "linear_nobias": lambda: nn.Linear(width, width, bias=False),
        "conv": lambda: nn.Conv2d(width, width, 3),
        "bn": lambda: nn.BatchNorm2d(width),
        "ln": lambda: nn.LayerNorm(width),
        "gn": lambda: nn.GroupNorm(1, width),
        "embedding": lambda: nn.Embedding(5, width),
        "relu": lambda: nn.ReLU(),
    }[kind]()


leaves = st.builds(
    _leaf,
    st.sampled_from(["linear", "linear_nobias", "conv", "bn", "ln", "gn", "embedding", "relu"]),
    st.sampled_from([2, 3]),
)


def _extend(children):
    return st.one_of(
        st.lists(children, min_size=1, max_size=4).map(lambda parts: nn.Sequential(*parts)),
        st.lists(children, min_size=1, max_size=3).map(nn.ModuleList),
        st.lists(children, min_size=1, max_size=3).map(lambda parts: Block(*parts)),
    )


@st.composite
def module_trees(draw, tie: bool = True) -> nn.Module:
    """A random tree of containers, composite blocks and leaf layers with at least one parameter;
    sometimes two same-shape linear layers share (tie) their weight."""
    tree = draw(st.recursive(leaves, _extend, max_leaves=10).map(lambda m: nn.Sequential(m, nn.Linear(3, 3))))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    for module in tree.modules():
        for param in module.parameters(recurse=False):
            nn.init.normal_(param)
    linears = [m for m in tree.modules() if isinstance(m, nn.Linear)]
    if tie and len(linears) >= 2 and draw(st.booleans()):
        first, second = draw(st.permutations(linears))[:2]
        if first.weight.shape == second.weight.shape:
            second.weight = first.weight
    return tree


lr_mults = st.sampled_from([0.1, 0.5, 2.0, 3.0])


@st.composite
def rule_lists(draw, max_depth: int) -> list[lrgroups.Rule]:
    """A random ordered list of rules; every rule may match nothing (allow_empty) except the
    built-ins, which always match something in :func:`module_trees`."""
    options = [
        lambda: lrgroups.no_weight_decay(),
        lambda: lrgroups.Rule(ndim=1, lr_mult=draw(lr_mults), allow_empty=True),
        lambda: lrgroups.Rule(module_type=nn.Linear, weight_decay=draw(st.sampled_from([0.0, 0.01, 0.1])), allow_empty=True),
        lambda: lrgroups.Rule(pattern="*.bias", lr_mult=draw(lr_mults), allow_empty=True),
        lambda: lrgroups.Rule(depth=(None, draw(st.integers(0, max_depth))), frozen=True, allow_empty=True),
        lambda: lrgroups.Rule(depth=draw(st.integers(0, max_depth)), frozen=False, allow_empty=True),
        lambda: lrgroups.head(lr=draw(st.sampled_from([1e-2, 5e-3]))),
    ]
    if max_depth > 0:
        options.append(lambda: lrgroups.layer_decay(draw(st.sampled_from([0.5, 0.75, 1.0]))))
        options.append(lambda: lrgroups.layer_decay_between(1e-5, 1e-3))
    chosen = draw(st.lists(st.sampled_from(range(len(options))), max_size=4))
    return [options[i]() for i in chosen]
