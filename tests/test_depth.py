"""Depth assignment: timm group_matcher, data-flow order and heads, tied weights, the registration
fallback, wrappers, and that depth is structural."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from strategies import Block, DETRLike, Residual, SharedEmbeddingSeq2Seq, TiedLM, module_trees, shuffled_chains

import lrgroups
from lrgroups.depth import (
    DepthWarning,
    TiedWeightsWarning,
    find_head,
    generic_depths,
    param_depths,
    param_layers,
    timm_depths,
)


def test_generic_resnet18_matches_timm_layout():
    """torchvision's resnet18 gets the layout timm's group_matcher gives timm's resnet18: stem 0,
    one depth per residual block, the classifier at the top; coarse gives one depth per stage."""
    tv = param_depths(torchvision.models.resnet18())
    tm = timm_depths(timm.create_model("resnet18"))
    assert tv == tm
    coarse = param_depths(torchvision.models.resnet18(), coarse=True)
    assert coarse["conv1.weight"] == 0 and coarse["layer1.1.bn2.bias"] == 1 and coarse["layer4.0.conv1.weight"] == 4
    assert coarse["fc.weight"] == 5


def test_generic_mlp_one_depth_per_linear_norm_joins_previous():
    mlp = nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    assert generic_depths(mlp) == {
        "0.weight": 0,
        "0.bias": 0,
        "1.weight": 0,
        "1.bias": 0,
        "3.weight": 1,
        "3.bias": 1,
        "4.weight": 2,
        "4.bias": 2,
    }


def test_generic_custom_module_with_backbone_and_head():
    """A user module holding a torchvision backbone and a new head: the backbone's blocks are
    descended into, the head comes last."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torchvision.models.resnet18()
            self.backbone.fc = nn.Identity()
            self.head = nn.Linear(512, 3)

    depths = generic_depths(Net())
    assert depths["backbone.conv1.weight"] == 0
    assert depths["backbone.layer4.1.bn2.bias"] == 8
    assert depths["head.weight"] == 9


def test_timm_vit_depths_and_head():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=4)
    depths = param_depths(model)
    assert depths["cls_token"] == 0 and depths["blocks.0.attn.qkv.weight"] == 1
    assert depths["head.weight"] == max(depths.values()) == 4
    assert find_head(model) is model.head


@pytest.mark.filterwarnings("ignore::lrgroups.depth.DepthWarning")  # random trees cannot run
@given(module_trees(), st.randoms())
def test_depth_is_structural(tree, random):
    """Freezing any subset of parameters changes no parameter's depth (fine or coarse)."""
    before = (param_depths(tree), param_depths(tree, coarse=True))
    for param in tree.parameters():
        param.requires_grad_(random.random() < 0.5)
    assert (param_depths(tree), param_depths(tree, coarse=True)) == before


@pytest.mark.filterwarnings("ignore::lrgroups.depth.DepthWarning")  # random trees cannot run
@given(module_trees())
def test_depths_cover_every_parameter_and_are_dense(tree):
    """Every named parameter gets a depth; depths are 0..max with no gaps; the final layer registered
    (the classifier in these trees) sits at the top."""
    depths = param_depths(tree)
    assert list(depths) == [name for name, _ in tree.named_parameters()]
    assert sorted(set(depths.values())) == list(range(max(depths.values()) + 1))
    last = list(depths)[-1]
    assert depths[last] == max(depths.values())


# ---------------------------------------------------------------- data flow, heads, tying, wrappers (issue 11)


def _quiet_layers(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TiedWeightsWarning)
        return param_layers(model, **kwargs)


def test_detr_like_depth_follows_data_flow_and_every_head_is_on_top():
    """DETR's shape (heads registered first, backbone registered last but called first): the
    backbone gets the lowest depths, the transformer the middle, the class head and the whole box MLP
    the top depth at the base lr under layer decay; head() takes all of both heads (issue 11: the
    backbone got the top depth and 1e-4, the transformer 7.8e-7, head() only the box MLP's last linear)."""
    model = DETRLike()
    layers = param_layers(model)  # the input is built from the backbone's first conv
    depth = {name: info.depth for name, info in layers.items()}
    top = max(depth.values())
    heads = {name for name, info in layers.items() if info.is_head}
    assert heads == {n for n in depth if n.startswith(("class_embed.", "bbox_embed."))}
    assert len(heads) == 8 and all(depth[n] == top for n in heads)
    assert depth["backbone.0.weight"] == 0 and depth["backbone.1.weight"] == 0 and depth["backbone.3.weight"] == 1
    assert depth["input_proj.weight"] == 2
    assert all(1 < depth[n] < top for n in depth if n.startswith("transformer."))
    assert {info.source for info in layers.values()} == {"forward order", "forward order; head"}
    rows = lrgroups.plan(model, lr=1e-4, rules=[lrgroups.layer_decay(0.5), lrgroups.head(lr_mult=1.0)])
    lr = {row.name: row.lr for row in rows}
    assert lr["class_embed.weight"] == lr["bbox_embed.layers.0.weight"] == lr["bbox_embed.layers.2.bias"] == 1e-4
    assert lr["backbone.0.weight"] == min(lr.values()) == 1e-4 * 0.5**top
    assert {row.name for row in rows if "head" in row.rules} == heads
    assert {row.depth_source for row in rows} == {"forward order", "forward order; head"}


@given(shuffled_chains())
def test_depth_follows_call_order_whatever_the_registration_order(chain):
    """For any registration order of a chain's modules: depth = position in the call order (stem 0,
    body i at i+1), every head (one or two, an MLP head whole) on the single top depth right above
    the body, depths contiguous 0..max, each tensor one depth and one head flag whatever its names."""
    layers = _quiet_layers(chain, example_input=chain.example_input())
    depth = {name: info.depth for name, info in layers.items()}
    assert sorted(set(depth.values())) == list(range(max(depth.values()) + 1))
    body = [n for n in chain.call_order if n.startswith("body")]
    top = len(body) + 1 if chain.stem.weight is not chain.head_a.weight else len(body)
    for position, name in enumerate(body):
        assert all(d == position + (top == len(body) + 1) for n, d in depth.items() if n.startswith(name + "."))
    heads = {n for n, info in layers.items() if info.is_head}
    expected = {n for n, _ in chain.named_parameters() if n.startswith(("head_a.", "head_b."))}
    if chain.stem.weight is chain.head_a.weight:
        expected |= {n for n, _ in chain.named_parameters() if n == "stem.weight"}
    assert heads == expected and all(depth[n] == top == max(depth.values()) for n in heads)


@given(shuffled_chains(tie=True), st.sampled_from([None, "head", "embedding"]))
def test_tied_embedding_and_output_one_treatment_one_warning(chain, tied):
    """A tensor that is both the input embedding and the output layer gets one depth and one head
    flag: by default (and with tied='head') the head's (top depth, head() matches it, fastai ULMFiT
    split), with tied='embedding' the embedding's (depth 0, not a head); only the default warns,
    once, naming both of its names."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layers = param_layers(chain, example_input=chain.example_input(), tied=tied)
    tied_names = [str(w.message) for w in caught if issubclass(w.category, TiedWeightsWarning)]
    name = next(n for n, p in chain.named_parameters() if p is chain.stem.weight)
    info = layers[name]
    top = max(i.depth for i in layers.values())
    if tied == "embedding":
        assert (info.depth, info.is_head) == (0, False) and "embedding side" in info.source
        assert layers["head_a.bias"].depth == top and layers["head_a.bias"].is_head
    else:
        assert (info.depth, info.is_head) == (top, True) and "tied embedding" in info.source
    if tied is None:
        assert len(tied_names) == 1 and "'stem.weight'" in tied_names[0] and "'head_a.weight'" in tied_names[0]
    else:
        assert tied_names == []


def test_tied_lm_default_is_head_with_warning_and_switch_puts_it_lowest():
    """The ULMFiT-shaped tied LM: the tied tensor is the head by default (top depth, base lr under
    layer decay, head() matches it) with a warning naming encoder.weight and decoder.weight;
    tied='embedding' puts it at depth 0 with the lowest lr (issue 11: depth 0 and 6.25e-5 although
    head() matched it, without a word)."""
    model = TiedLM()
    with pytest.warns(TiedWeightsWarning, match=r"'encoder.weight'.*'decoder.weight'"):
        rows = lrgroups.plan(model, lr=1e-3, rules=[lrgroups.layer_decay(0.5), lrgroups.head(lr_mult=1.0)])
    row = {r.name: r for r in rows}["encoder.weight"]
    assert row.aliases == ("decoder.weight",) and row.depth == max(r.depth for r in rows) == 3
    assert row.lr == 1e-3 and "head" in row.rules
    rows = lrgroups.plan(model, lr=1e-3, rules=[lrgroups.layer_decay(0.5)], tied="embedding")
    row = {r.name: r for r in rows}["encoder.weight"]
    assert row.depth == 0 and row.lr == min(r.lr for r in rows) == 1e-3 * 0.5**4


def test_hugging_face_tied_lms_warn_and_switch():
    """BertForMaskedLM and GPT2LMHeadModel (tiny, from configs): the word embedding is also the
    output layer; the default makes it the head with a warning naming both names, tied='embedding'
    keeps it with the embeddings at depth 0; the input comes from the model's dummy_inputs."""
    import transformers

    bert = transformers.BertForMaskedLM(
        transformers.BertConfig(
            vocab_size=16,
            hidden_size=8,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=8,
        )
    )
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=16, n_embd=8, n_layer=2, n_head=2, n_positions=8, bos_token_id=0, eos_token_id=0
        )
    )
    for model, embedding, output in (
        (bert, "bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),
        (gpt2, "transformer.wte.weight", "lm_head.weight"),
    ):
        with pytest.warns(TiedWeightsWarning, match=rf"'{embedding}'.*'{output}'"):
            layers = param_layers(model)
        assert layers[embedding].is_head and layers[embedding].depth == max(i.depth for i in layers.values())
        layers = param_layers(model, tied="embedding")
        assert not layers[embedding].is_head and layers[embedding].depth == 0


def test_module_registered_under_two_names_counts_once():
    """One embedding shared by encoder and decoder (registered twice): one depth for the tensor,
    its second name an alias, depths contiguous in forward order and in the registration fallback
    (issue 11: the second registration left a gap)."""
    model = SharedEmbeddingSeq2Seq()
    for layers in (param_layers(model), param_layers(model, example_input=torch.ones(1, 3, dtype=torch.long))):
        depths = sorted({info.depth for info in layers.values()})
        assert depths == list(range(len(depths)))
        assert layers["shared.weight"].depth == 0 and "decoder_embed.weight" not in layers
    assert generic_depths(model) == {
        "shared.weight": 0,
        "encoder.0.weight": 1,
        "encoder.0.bias": 1,
        "encoder.2.weight": 2,
        "encoder.2.bias": 2,
        "decoder.0.weight": 3,
        "decoder.0.bias": 3,
        "decoder.2.weight": 4,
        "decoder.2.bias": 4,
        "lm_head.weight": 5,
        "lm_head.bias": 5,
    }
    infos = {info.name: info for info in lrgroups.rules.describe(model)}
    assert infos["shared.weight"].aliases == ("decoder_embed.weight",)


def test_registration_order_fallback_warns_and_bad_example_input_raises():
    """No input can be built (a module without forward): registration order, a DepthWarning that
    says why, and the source says so; an example_input the model rejects is one clear ValueError."""
    tree = nn.Sequential(nn.Linear(3, 3), Block(nn.Linear(3, 3)), nn.Linear(3, 2))
    with pytest.warns(DepthWarning, match="registration order"):
        layers = param_layers(tree)
    assert {info.source for info in layers.values()} == {"registration order", "registration order; head"}
    with pytest.raises(ValueError, match="failed on example_input.*mat1 and mat2"):
        param_layers(nn.Sequential(nn.Linear(3, 3)), example_input=torch.ones(1, 5))
    with pytest.raises(ValueError, match="tied must be"):
        param_layers(nn.Linear(2, 2), tied="decoder")


def test_trace_is_cached_and_leaves_the_model_as_it_was():
    """The forward pass runs once per model and input shape (cached), in eval mode with gradients
    on, and leaves training flags, requires_grad, .grad and BatchNorm statistics as they were."""
    model = DETRLike()
    model.train()
    model.backbone[0].requires_grad_(False)
    stats = model.backbone[1].running_mean.clone()
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    first = param_layers(model)
    assert calls  # the model ran (after a token-id candidate failed on the backbone)
    calls.clear()
    assert param_layers(model) == first and calls == []
    assert model.training and model.backbone[1].training
    assert not model.backbone[0].weight.requires_grad and model.class_embed.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.backbone[1].running_mean, stats)


class Wrapper(nn.Module):
    """A user's wrapper holding the model as ``self.model`` (Lightning-style)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def test_timm_model_under_peft_lora_keeps_group_matcher_depths():
    """timm resnet18 wrapped by peft LoRA: group_matcher applies to the unwrapped names, so every
    parameter (base and adapter) gets timm's depth on the bare model, layer decay works and the
    default ProgressiveUnfreezing has one stage per depth; the base weights peft froze stay frozen
    through every stage (issue 11: everything at depth 0, "the model has one layer", one stage)."""
    import peft

    reference = timm_depths(timm.create_model("resnet18", num_classes=3))
    model = peft.get_peft_model(
        timm.create_model("resnet18", num_classes=3), peft.LoraConfig(target_modules=["conv1", "conv2", "fc"], r=2)
    )
    depths = param_depths(model)
    bare = {name.replace(".base_layer", ""): d for name, d in depths.items() if ".lora_" not in name}
    assert bare == reference
    assert depths["layer4.1.conv2.lora_B.default.weight"] == reference["layer4.1.conv2.weight"] == 8
    assert depths["fc.lora_A.default.weight"] == 9
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, rules=[lrgroups.layer_decay(0.5)])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    schedule = lrgroups.ProgressiveUnfreezing(opt)
    assert schedule.stages_remaining == 9
    while schedule.stages_remaining:
        schedule.advance()
    assert {row.name for row in opt.plan if not row.frozen} == {n.removeprefix("base_model.model.") for n in trainable}


class PeftLike(nn.Module):
    """peft's layout: ``base_model.model`` around the user's model."""

    def __init__(self, model):
        super().__init__()
        self.base_model = Wrapper(model)

    def forward(self, x):
        return self.base_model(x)


@pytest.mark.parametrize(
    "wrap, prefix",
    [(nn.DataParallel, ""), (torch.compile, ""), (Wrapper, "model."), (PeftLike, "base_model.model.")],
)
@pytest.mark.parametrize("make", [lambda: timm.create_model("resnet18", num_classes=3), DETRLike])
def test_wrappers_are_looked_through(wrap, prefix, make):
    """DataParallel and torch.compile (names of the bare model), a user's ``.model`` wrapper and a
    peft-like ``base_model.model`` wrapper (names keep the prefix): the same depths and heads as
    the bare model, timm's from group_matcher on the inner names, others from the data flow."""
    bare = param_layers(make())
    with warnings.catch_warnings():
        warnings.simplefilter("error", DepthWarning)
        wrapped = param_layers(wrap(make()))
    assert wrapped == {prefix + name: info for name, info in bare.items()}


class TwoHeads(nn.Module):
    """Heads in a ModuleDict, the box head a Sequential; optionally two towers of residual blocks
    (stages), each ending in a projection that is an output."""

    def __init__(self, towers: bool = False):
        super().__init__()
        self.towers = towers
        if not towers:
            self.heads = nn.ModuleDict(
                {
                    "cls": nn.Linear(8, 3),
                    "box": nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)),
                }
            )
        self.stem = nn.Linear(4, 8)
        if towers:
            self.tower_a = nn.Sequential(Residual(8), Residual(8), nn.Linear(8, 2))
            self.tower_b = nn.Sequential(Residual(8), Residual(8), nn.Linear(8, 2))

    def forward(self, x):
        h = self.stem(x).relu()
        if self.towers:
            return self.tower_a(h), self.tower_b(h)
        return self.heads["cls"](h), self.heads["box"](h)


def test_sequential_head_of_a_multi_head_model_is_whole_but_a_tower_of_blocks_is_not():
    """With two heads, a head built as a Sequential is a head whole (the layers only it uses, inside
    the smallest module around it that holds no stage of blocks); a single head built as a
    Sequential counts by its last layer; a tower of residual blocks ending in an output projection
    contributes only the projection."""
    layers = param_layers(TwoHeads(), example_input=torch.randn(1, 4))
    assert {n for n, i in layers.items() if i.is_head} == {n for n in layers if n.startswith("heads.")}
    assert {i.depth for n, i in layers.items() if n.startswith("heads.")} == {1}
    single = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)))
    layers = param_layers(single, example_input=torch.randn(1, 4))  # one head: its last layer only
    assert {n for n, i in layers.items() if i.is_head} == {"2.2.weight", "2.2.bias"}
    layers = param_layers(TwoHeads(towers=True), example_input=torch.randn(1, 4))
    assert {n for n, i in layers.items() if i.is_head} == {
        "tower_a.2.weight",
        "tower_a.2.bias",
        "tower_b.2.weight",
        "tower_b.2.bias",
    }
    assert layers["tower_a.1.linear.weight"].depth == 2 < layers["tower_a.2.weight"].depth


class Declares(nn.Module):
    """Registered head first; the input it takes is declared, not readable from its first layer."""

    def __init__(self, how):
        super().__init__()
        self.head = nn.Linear(6, 2)
        self.body = nn.Linear(5, 6)
        if how == "lightning":
            self.example_input_array = torch.zeros(2, 5)
        else:
            self.pretrained_cfg = {"input_size": (5,)}
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return self.head(self.body(x))


@pytest.mark.parametrize("how, shape", [("lightning", (2, 5)), ("timm", (1, 5))])
def test_input_declared_by_the_model_is_used_first(how, shape):
    """Lightning's example_input_array and timm's pretrained_cfg input size are tried before shapes
    read from the layers (here the first registered linear reads 6 features, a wrong guess)."""
    model = Declares(how)
    layers = param_layers(model)
    assert model.seen == [shape, shape]  # the eval-mode pass, then the train-mode pass
    assert (layers["body.weight"].depth, layers["head.weight"].depth, layers["head.weight"].is_head) == (0, 1, True)


class TokenNet(nn.Module):
    """ViT's shape in small: a class token owned by the model itself, a patch projection, residual
    blocks, a head on the class token; returns the features too (a second output that feeds the head)."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.proj = nn.Linear(4, 8)
        self.blocks = nn.Sequential(Residual(8), Residual(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.proj(x)], dim=1)
        features = self.blocks(tokens)[:, 0]
        return self.head(features), features


def test_model_owned_tokens_and_features_that_feed_the_head_are_not_heads():
    """A token the model owns itself sits at depth 0 and is not a head; a block whose output is also
    a model output but feeds the head is not a head; depths equal the registration walk's."""
    model = TokenNet()
    layers = param_layers(model, example_input=torch.randn(1, 5, 4))
    assert {n for n, i in layers.items() if i.is_head} == {"head.weight", "head.bias"}
    assert {n: i.depth for n, i in layers.items()} == generic_depths(model)


def test_a_model_compiled_in_place_is_traced_eagerly(tmp_path):
    """pytorch#117758, #105653: after ``model.compile()`` (in place) the depth trace ran under Dynamo,
    which unrolled the trace's hooks and never finished. It runs eager now: the wrapper builds at
    once (a subprocess with a deadline, so a regression fails instead of hanging) and gives the same
    depths as on the model before compiling."""
    import subprocess
    import sys

    code = (
        "import torch, torch.nn as nn, lrgroups\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))\n"
        "plain = lrgroups.LayerwiseOptimizer(make(), torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])\n"
        "model = make(); model.compile()\n"
        "opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])\n"
        "assert opt.explain().depth.tolist() == plain.explain().depth.tolist() == [0, 0, 1, 1, 2, 2]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=tmp_path)


def test_rules_accept_the_names_of_the_module_the_user_passed():
    """A peft model's parameter names carry peft's ``base_model.model.`` prefix; depths and plan
    names are the bare model's, and the names the user sees in ``peft_model.named_parameters()`` are
    aliases: a rule written with them matches, and explain() shows them."""
    import peft

    model = peft.get_peft_model(
        timm.create_model("resnet18", num_classes=3), peft.LoraConfig(target_modules=["fc"], r=2)
    )
    opt = lrgroups.LayerwiseOptimizer(
        model, torch.optim.AdamW, lr=1e-3, rules=[lrgroups.Rule("base_model.model.fc.lora_A.*", lr=5e-3)]
    )
    table = opt.explain().set_index("name")
    assert table.loc["fc.lora_A.default.weight", "lr"] == 5e-3
    assert "base_model.model.fc.lora_A.default.weight" in table.loc["fc.lora_A.default.weight", "aliases"]
