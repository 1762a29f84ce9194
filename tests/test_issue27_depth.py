"""Issue 27, depth and head discovery: a ``select=`` subset counts its own depths (item 3), a final
norm joins the last block as in timm (item 5), the trace sees train mode and every output structure
(item 7), headless timm backbones keep timm's layer ids (item 16), and the docs' claim of equality
with timm's ``param_groups_layer_decay`` holds as written (item 18)."""

from __future__ import annotations

import collections
import dataclasses
import re
import warnings

import pytest
import timm
import torch
import torch.nn as nn
from timm.optim import param_groups_layer_decay

import lrgroups
from lrgroups.depth import DepthWarning, param_layers


def _lr_by_name(rows) -> dict[str, float]:
    return {row.name: row.lr for row in rows}


# ---------------------------------------------------------------------------- item 3: select=
class GAN(nn.Module):
    """A generator and a discriminator in one module (Lightning's GAN example, FreezeD's setting)."""

    def __init__(self, discriminator_runs: bool = True) -> None:
        super().__init__()
        self.discriminator_runs = discriminator_runs
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
        self.discriminator = nn.Sequential(
            nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)
        )

    def forward(self, z):
        fake = self.generator(z)
        return self.discriminator(fake) if self.discriminator_runs else fake


@pytest.mark.parametrize("discriminator_runs", [True, False], ids=["D(G(z))", "G(z)"])
def test_a_selected_discriminator_counts_its_own_depths(discriminator_runs):
    """select= picks the discriminator: its depths are 0..2 (not the whole model's 3..5), so layer
    decay gives its last layer the base lr and each layer below one factor less, and the default
    ProgressiveUnfreezing has a stage per depth, head first (it raised NoMatchError before)."""
    gan = GAN(discriminator_runs)
    opt = lrgroups.LayerwiseOptimizer(
        gan,
        torch.optim.AdamW,
        lr=1e-3,
        select="discriminator.*",
        rules=[lrgroups.layer_decay(0.5)],
        example_input=torch.randn(1, 4),
    )
    depth = {row.name: row.depth for row in opt.plan}
    assert depth == {f"discriminator.{i}.{k}": i // 2 for i in (0, 2, 4) for k in ("weight", "bias")}
    lr = _lr_by_name(opt.plan)
    assert lr["discriminator.4.weight"] == pytest.approx(1e-3)
    assert lr["discriminator.2.weight"] == pytest.approx(5e-4)
    assert lr["discriminator.0.weight"] == pytest.approx(2.5e-4)
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_epochs=1)
    assert schedule.stages_remaining == 2
    assert [name for name, frozen in zip(opt.explain().name, opt.explain().frozen, strict=True) if not frozen] == [
        "discriminator.4.weight",
        "discriminator.4.bias",
    ]
    assert schedule.end_epoch() == ["discriminator.2.weight", "discriminator.2.bias"]


def test_renumber_keeps_order_and_heads_on_top():
    """renumber: the distinct depths of a subset become 0..k in order, max_depth k, heads stay top."""
    infos = lrgroups.depth.describe(GAN(), example_input=torch.randn(1, 4))
    subset = lrgroups.depth.renumber([i for i in infos if i.name.startswith(("generator.0", "discriminator"))])
    assert [(i.name, i.depth, i.max_depth, i.is_head) for i in subset][::2] == [
        ("generator.0.weight", 0, 3, False),
        ("discriminator.0.weight", 1, 3, False),
        ("discriminator.2.weight", 2, 3, False),
        ("discriminator.4.weight", 3, 3, True),
    ]


# ---------------------------------------------------------------------------- item 5: final norm
def _hf_vit(headless: bool):
    import transformers  # the test extra installs it: a missing one fails, not skips
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    if headless:
        return transformers.ViTModel(config, add_pooling_layer=False)
    return transformers.ViTForImageClassification(config)


def _timm_vit(headless: bool):
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=3,
        num_heads=2,
        mlp_ratio=2,
        num_classes=0 if headless else 3,
    )


def _vit_part(name: str) -> str:
    """The part of a ViT a parameter belongs to, in timm's and Hugging Face's naming alike."""
    name = name.removeprefix("vit.")
    block = re.search(r"(?:^|\.)(?:blocks|layers|layer)\.(\d+)\.", name)
    if block:
        return f"block {block.group(1)}"
    if name.startswith(("cls_token", "pos_embed", "patch_embed", "embeddings.")):
        return "embeddings"
    if name.startswith(("norm.", "layernorm.")):
        return "final norm"
    if name.startswith(("head.", "classifier.")):
        return "head"
    raise AssertionError(f"unmapped ViT parameter {name}")


@pytest.mark.parametrize("headless", [False, True], ids=["classifier", "headless"])
def test_hugging_face_vit_gets_timm_vit_lrs_under_layer_decay(headless):
    """An HF ViT (transformers ViTForImageClassification / ViTModel) and timm's ViT of the same shape
    get the same lr for every corresponding parameter under the same layer decay: embeddings 0,
    block i at i+1, the final norm with the last block (timm's MATCH_PREV_GROUP), the head on top;
    before, the HF final norm had a depth of its own and every lr below it was one factor smaller."""
    rule = [lrgroups.layer_decay(0.5)]
    by_part: dict[str, set[float]] = collections.defaultdict(set)
    for name, lr in _lr_by_name(lrgroups.plan(_timm_vit(headless), lr=1.0, rules=rule)).items():
        by_part[_vit_part(name)].add(lr)
    hf_rows = lrgroups.plan(_hf_vit(headless), lr=1.0, rules=rule)
    assert {_vit_part(row.name) for row in hf_rows} == set(by_part)
    assert all(len(lrs) == 1 for lrs in by_part.values())
    for row in hf_rows:
        assert row.lr == pytest.approx(next(iter(by_part[_vit_part(row.name)]))), row.name
    assert by_part["block 0"] == {0.5 ** (2 if headless else 3)}  # embeddings 0, blocks 1..3, head 4
    assert by_part["final norm"] == by_part["block 2"]


def test_bert_keeps_electra_layer_decay():
    """ELECTRA's layer decay on BERT (google-research/electra model/optimization.py, with the pooler
    its authors counted as one more layer, electra#51): embeddings depth 0, encoder layer i depth
    i+1, pooler n_layers+1, the task head n_layers+2, lr * decay ** (n_layers + 2 - depth)."""
    import transformers  # the test extra installs it: a missing one fails, not skips
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    rows = lrgroups.plan(transformers.BertForSequenceClassification(config), lr=1.0, rules=[lrgroups.layer_decay(0.8)])

    def electra_depth(name: str) -> int:
        layer = re.search(r"\.layers?\.(\d+)\.", name)
        if layer:
            return int(layer.group(1)) + 1
        if ".embeddings." in name:
            return 0
        return 4 if ".pooler." in name else 5

    for row in rows:
        assert row.lr == pytest.approx(0.8 ** (5 - electra_depth(row.name))), row.name


def test_a_final_norm_joins_the_block_before_it_and_a_norm_output_is_no_head():
    """Generic models: a norm after the last block sits with that block; a model whose output is a
    final norm (a headless backbone) has no head instead of a norm-only head on a depth of its own."""

    class MLPBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return x + self.fc2(self.fc1(x).relu())

    class Blocks(nn.Module):
        def __init__(self, classes: int | None) -> None:
            super().__init__()
            self.stem = nn.Linear(4, 8)
            self.blocks = nn.Sequential(MLPBlock(), MLPBlock())
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, classes) if classes else nn.Identity()

        def forward(self, x):
            return self.head(self.norm(self.blocks(self.stem(x))))

    for classes, top in ((3, 3), (None, 2)):
        layers = param_layers(Blocks(classes), example_input=torch.randn(1, 4))
        assert layers["norm.weight"].depth == layers["blocks.1.fc1.weight"].depth == 2
        assert not layers["norm.weight"].is_head
        assert max(info.depth for info in layers.values()) == top
        assert {name for name, info in layers.items() if info.is_head} == (
            {"head.weight", "head.bias"} if classes else set()
        )


# ---------------------------------------------------------------------------- item 7: what the trace sees
def test_inception_v3_auxiliary_classifier_is_a_head_and_the_model_is_untouched():
    """torchvision's Inception v3 runs its auxiliary classifier only in training (pytorch/vision#302):
    the train-mode pass finds it, so it is a head on the top depth and trained from stage 0. The
    passes leave the model as it was: mode, BatchNorm statistics and counters, parameters, and the
    random number generator."""
    import torchvision  # a hard dependency: a missing one fails, not skips
    torch.manual_seed(0)
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, num_classes=5).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(2, 3, 299, 299)
    rng = torch.get_rng_state()
    layers = param_layers(model, example_input=images)
    top = max(info.depth for info in layers.values())
    aux = {name: info for name, info in layers.items() if name.startswith("AuxLogits.")}
    assert aux and all(info.is_head and info.depth == top for info in aux.values())
    assert layers["fc.weight"].is_head and not layers["Mixed_7c.branch_pool.conv.weight"].is_head
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


class AuxNet(nn.Module):
    """A small Inception-shaped model: an auxiliary head that runs only in training, dropout and
    BatchNorm; the training output a named tuple."""

    Outputs = collections.namedtuple("Outputs", ["logits", "aux_logits"])

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.aux = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x):
        x = self.stem(x)
        aux = self.aux(x) if self.training else None
        logits = self.fc(self.drop(self.body(x)))
        return self.Outputs(logits, aux) if self.training else logits


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_head_run_only_in_training_is_a_head_whatever_the_models_mode(mode):
    """The auxiliary head (whole, its two linears) is a head from either starting mode; the model's
    flags, BatchNorm statistics and counters and the RNG (dropout draws in train mode) are put back."""
    model = AuxNet().train(mode == "train")
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    images = torch.randn(1, 3, 8, 8)  # batch 1: the train pass runs BatchNorm on a batch of 2
    rng = torch.get_rng_state()
    layers = param_layers(model, example_input=images)
    heads = {name.rsplit(".", 1)[0] for name, info in layers.items() if info.is_head}
    assert heads == {"aux.2", "aux.4", "fc.2"}
    assert model.training == (mode == "train") and model.stem[1].training == (mode == "train")
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_model_that_cannot_run_in_train_mode_warns_and_uses_the_eval_pass():
    """A model whose forward refuses train mode (a detector without targets): depths and heads from
    the eval pass, with a DepthWarning that says why and what to do."""

    class EvalOnly(nn.Sequential):
        def forward(self, x):
            if self.training:
                raise ValueError("targets should not be None in training mode")
            return super().forward(x)

    model = EvalOnly(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.warns(DepthWarning, match="eval-mode pass only.*targets should not be None.*example_input"):
        layers = param_layers(model, example_input=torch.randn(1, 4))
    assert layers["2.weight"] == (1, True, "forward order; head")


@dataclasses.dataclass
class PairOutput:
    first: torch.Tensor
    second: torch.Tensor


def _hf_output(a, b):
    from transformers.modeling_outputs import SequenceClassifierOutput

    return SequenceClassifierOutput(logits=a, hidden_states=(b,))


STRUCTURES = {
    "tuple": lambda a, b: (a, b),
    "namedtuple": lambda a, b: AuxNet.Outputs(a, b),
    "list": lambda a, b: [a, b],
    "dict": lambda a, b: {"a": a, "b": b},
    "dataclass": lambda a, b: PairOutput(a, b),
    "ModelOutput": _hf_output,
    "nested": lambda a, b: {"out": [PairOutput(a, b)]},
}


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_heads_are_found_in_every_output_structure(structure):
    """Two heads returned as a tuple, named tuple, list, dict, dataclass, Hugging Face ModelOutput or
    nested structure of them are both heads on the top depth."""
    wrap = STRUCTURES[structure]

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 8)
            self.a, self.b = nn.Linear(8, 2), nn.Linear(8, 3)

        def forward(self, x):
            h = self.body(x).relu()
            return wrap(self.a(h), self.b(h))

    layers = param_layers(TwoHeads(), example_input=torch.randn(1, 4))
    assert {name for name, info in layers.items() if info.is_head} == {"a.weight", "a.bias", "b.weight", "b.bias"}
    assert layers["a.weight"].depth == layers["b.weight"].depth == 1


# ---------------------------------------------------------------------------- items 16 and 18: timm
def _assert_timm_layer_decay(model: nn.Module, gamma: float = 0.7) -> None:
    """Every parameter's lr under lrgroups' layer_decay(gamma) equals timm's
    param_groups_layer_decay(layer_decay=gamma) lr_scale (base lr 1)."""
    scale = {
        id(p): group["lr_scale"]
        for group in param_groups_layer_decay(model, layer_decay=gamma)
        for p in group["params"]
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error", DepthWarning)
        rows = lrgroups.plan(model, lr=1.0, rules=[lrgroups.layer_decay(gamma)])
    params = dict(model.named_parameters())
    differ = [row.name for row in rows if row.lr != pytest.approx(scale[id(params[row.name])], rel=1e-12)]
    assert not differ, f"{len(differ)} of {len(rows)} parameters differ from timm, e.g. {differ[:3]}"
    assert all(row.depth_source.startswith("timm group_matcher") for row in rows)


@pytest.mark.parametrize("name", ["densenet121", "dpn48b", "inception_v4", "efficientvit_m0", "shvit_s1"])
def test_headless_timm_backbones_keep_timms_layer_decay(name):
    """num_classes=0: the model's own group_matcher is used even when all its parameters sit in one
    child (DenseNet's features), and a get_classifier() that raises (EfficientViT, SHViT) means no
    head, not a crash; lrs equal timm's param_groups_layer_decay for every parameter."""
    model = timm.create_model(name, pretrained=False, num_classes=0)
    _assert_timm_layer_decay(model)
    assert not any(info.is_head for info in param_layers(model).values())


@pytest.mark.parametrize("headless", [False, True], ids=["classifier", "headless"])
@pytest.mark.parametrize("name", ["resnet10t", "convnext_atto", "mobilenetv3_small_050", "regnetx_002"])
def test_layer_decay_equals_timm_on_timm_models_with_a_group_matcher(name, headless):
    """docs/concepts/rules.md and layer_decay's docstring: on a timm model that defines group_matcher
    (with or without its classifier) layer_decay(gamma) gives every parameter exactly the lr scale of
    timm's param_groups_layer_decay(layer_decay=gamma)."""
    model = timm.create_model(name, pretrained=False, num_classes=0 if headless else 4)
    assert callable(getattr(model, "group_matcher", None))
    _assert_timm_layer_decay(model)
    head = {name for name, info in param_layers(model).items() if info.is_head}
    assert bool(head) != headless


def _final_norm_models():
    import torchvision
    import transformers

    tiny_vit = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32)
    return {
        "torchvision ViT": (
            lambda: torchvision.models.VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32),
            "encoder.ln.weight",
            "encoder.layers.encoder_layer_1.mlp.3.weight",
        ),
        "torchvision DenseNet": (
            lambda: torchvision.models.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=3),
            "features.norm5.weight",
            "features.denseblock2.denselayer2.conv2.weight",
        ),
        "HF DeiT": (
            lambda: transformers.DeiTForImageClassificationWithTeacher(
                transformers.DeiTConfig(**tiny_vit, patch_size=8, num_labels=3)
            ),
            "deit.layernorm.weight",
            "deit.layers.1.mlp.fc2.weight",
        ),
        "HF Swin": (
            lambda: transformers.SwinForImageClassification(
                transformers.SwinConfig(
                    image_size=32,
                    patch_size=4,
                    embed_dim=8,
                    depths=[1, 1],
                    num_heads=[1, 1],
                    window_size=4,
                    num_labels=3,
                )
            ),
            "swin.layernorm.weight",
            "swin.encoder.layers.1.blocks.0.mlp.fc2.weight",
        ),
        "HF GPT-2": (
            lambda: transformers.GPT2LMHeadModel(
                transformers.GPT2Config(
                    vocab_size=16, n_embd=8, n_layer=2, n_head=2, n_positions=8, bos_token_id=0, eos_token_id=0
                )
            ),
            "transformer.ln_f.weight",
            "transformer.h.1.mlp.c_proj.weight",
        ),
    }


@pytest.mark.parametrize("model", ["torchvision ViT", "torchvision DenseNet", "HF DeiT", "HF Swin", "HF GPT-2"])
def test_the_final_norms_the_depth_docs_name_join_the_last_block(model):
    """docs/concepts/depth.md names these models: their final norm shares the last block's depth, is
    no head, and the heads sit one depth above."""
    make, norm, last_block = _final_norm_models()[model]
    layers = param_layers(make(), tied="head")
    assert layers[norm].depth == layers[last_block].depth and not layers[norm].is_head
    assert max(info.depth for info in layers.values()) == layers[norm].depth + 1


def test_a_norm_class_of_its_own_is_not_a_norm_llama_keeps_its_final_norm_depth():
    """As docs/concepts/depth.md says: Llama's LlamaRMSNorm is not a torch norm subclass, so its final
    norm keeps a depth of its own."""
    import transformers  # the test extra installs it: a missing one fails, not skips
    config = transformers.LlamaConfig(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    layers = param_layers(transformers.LlamaForCausalLM(config), tied="head")
    assert layers["model.norm.weight"].depth == layers["model.layers.1.mlp.down_proj.weight"].depth + 1
