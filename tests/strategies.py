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


# ---------------------------------------------------------------- runnable models (data-flow depth)
class MLP(nn.Module):
    """DETR's box head: linears with ReLU between them (a composite module, not a container)."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False))  # strict=False: consecutive widths: one layer fewer than widths

    def forward(self, x):
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else torch.relu(layer(x))
        return x


class DETRLike(nn.Module):
    """DETR's shape: the transformer, class head, box MLP and queries registered first, the CNN
    backbone registered last but called first; two outputs (class logits, sigmoid boxes)."""

    def __init__(self, d: int = 8, classes: int = 3, queries: int = 4) -> None:
        super().__init__()
        self.transformer = nn.Transformer(d, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                          dim_feedforward=16, dropout=0.0, batch_first=True)
        self.class_embed = nn.Linear(d, classes + 1)
        self.bbox_embed = MLP([d, d, d, 4])
        self.query_embed = nn.Embedding(queries, d)
        self.input_proj = nn.Conv2d(16, d, 1)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1))

    def forward(self, images):
        features = self.input_proj(self.backbone(images)).flatten(2).transpose(1, 2)
        queries = self.query_embed.weight.unsqueeze(0).expand(images.shape[0], -1, -1)
        hidden = self.transformer(features, queries)
        return {"pred_logits": self.class_embed(hidden), "pred_boxes": self.bbox_embed(hidden).sigmoid()}


class TiedLM(nn.Module):
    """A small language model (AWD-LSTM/ULMFiT shape): embedding, recurrent layers, a decoder whose
    weight is the embedding's (``tie=True``)."""

    def __init__(self, vocab: int = 12, d: int = 8, layers: int = 3, tie: bool = True) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, d)
        self.rnns = nn.ModuleList(nn.LSTM(d, d, batch_first=True) for _ in range(layers))
        self.decoder = nn.Linear(d, vocab)
        if tie:
            self.decoder.weight = self.encoder.weight

    def forward(self, ids):
        h = self.encoder(ids)
        for rnn in self.rnns:
            h, _ = rnn(h)
        return self.decoder(h)


class SharedEmbeddingSeq2Seq(nn.Module):
    """One embedding module registered under two names (encoder's and decoder's, as in T5/BART)."""

    def __init__(self, vocab: int = 10, d: int = 8) -> None:
        super().__init__()
        self.shared = nn.Embedding(vocab, d)
        self.encoder = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.decoder_embed = self.shared
        self.decoder = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, ids):
        memory = self.encoder(self.shared(ids))
        return self.lm_head(self.decoder(self.decoder_embed(ids) + memory))


class Residual(nn.Module):
    """A composite block: ``x + linear(norm(x))`` (one unit of depth)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return x + self.linear(self.norm(x))


class ShuffledChain(nn.Module):
    """A chain called in a fixed order (``stem``, ``body0``, ``body1``, ..., then the heads) whose
    modules are registered in another order (``registration``); an embedding stem when ``embed``,
    a second head (an MLP) when ``two_heads``, the first head's weight tied to the embedding when
    ``tie``."""

    VOCAB, WIDTH = 6, 4

    def __init__(self, kinds: list[str], registration: list[int], embed: bool, two_heads: bool, tie: bool) -> None:
        super().__init__()
        w = self.WIDTH
        modules = {"stem": nn.Embedding(self.VOCAB, w) if embed else nn.Linear(w, w)}
        for index, kind in enumerate(kinds):
            modules[f"body{index}"] = Residual(w) if kind == "residual" else nn.Linear(w, w)
        modules["head_a"] = nn.Linear(w, self.VOCAB)
        if two_heads:
            modules["head_b"] = MLP([w, w, 2])
        names = list(modules)
        for position in registration:
            self.add_module(names[position], modules[names[position]])
        if tie:
            self.head_a.weight = self.stem.weight
        self.call_order = names
        self.embed, self.two_heads = embed, two_heads

    def example_input(self):
        return torch.ones(1, 3, dtype=torch.long) if self.embed else torch.ones(1, self.WIDTH)

    def forward(self, x):
        h = self.stem(x)
        for name in self.call_order:
            if name.startswith("body"):
                h = torch.relu(getattr(self, name)(h))
        return (self.head_a(h), self.head_b(h)) if self.two_heads else self.head_a(h)


@st.composite
def shuffled_chains(draw, tie: bool | None = None) -> ShuffledChain:
    """A :class:`ShuffledChain` with 1-4 body layers (linears or residual blocks), registered in a
    random permutation; tying drawn at random unless ``tie`` is given (it needs an embedding stem)."""
    kinds = draw(st.lists(st.sampled_from(["linear", "residual"]), min_size=1, max_size=4))
    two_heads = draw(st.booleans())
    count = 1 + len(kinds) + 1 + two_heads
    registration = draw(st.permutations(range(count)))
    tie = draw(st.booleans()) if tie is None else tie
    embed = tie or draw(st.booleans())
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return ShuffledChain(kinds, list(registration), embed, two_heads, tie)
