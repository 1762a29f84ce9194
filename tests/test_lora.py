"""LoRA+ as rules (lrgroups.lora): parity with peft's create_loraplus_optimizer, composition with
layer decay, and the errors."""

import copy

import peft
import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from peft.optimizers import create_loraplus_optimizer

import lrgroups
from lrgroups.lora import lora_plus


class Tagger(nn.Module):
    """Embedding -> two Linear layers with a LayerNorm -> a head: LoRA on the embedding and the
    Linear layers, the head trained in full (peft's ``modules_to_save``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 8)
        self.fc1 = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).mean(1)
        return self.head(torch.relu(self.fc2(self.norm(torch.relu(self.fc1(x))))))


def peft_tagger(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = peft.LoraConfig(target_modules=["embed", "fc1", "fc2"], modules_to_save=["head"], r=2,
                             init_lora_weights=False)  # B != 0, so that A's gradients are not 0 either
    return peft.get_peft_model(Tagger(), config)


def lr_wd_by_param(optimizer: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_lora_plus_matches_peft_create_loraplus_optimizer():
    """With vectors=True and embedding_lr=1e-6 (plus no_weight_decay for the decay split) every
    trainable parameter gets the lr and weight decay peft's helper gives it, and three AdamW steps
    leave the same weights."""
    ours_model, peft_model = peft_tagger(), peft_tagger()
    kwargs = {"lr": 2e-4, "loraplus_lr_ratio": 16.0, "loraplus_weight_decay": 0.01}
    reference = create_loraplus_optimizer(peft_model, torch.optim.AdamW, **kwargs)
    ours = lrgroups.LayerwiseOptimizer(
        ours_model, torch.optim.AdamW, lr=2e-4, weight_decay=0.01,
        rules=[*lora_plus(16.0, vectors=True, embedding_lr=1e-6), lrgroups.no_weight_decay()],
    )
    theirs = lr_wd_by_param(reference)
    mine = lr_wd_by_param(ours)
    names = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    ours_params = dict(ours_model.named_parameters())
    peft_params = dict(peft_model.named_parameters())
    assert {n for n, p in ours_model.named_parameters() if p.requires_grad} == set(names)
    assert any("lora_embedding_B" in n for n in names) and any("lora_B" in n for n in names)
    for name in names:
        assert mine[id(ours_params[name])] == pytest.approx(theirs[id(peft_params[name])], rel=1e-12), name
    tokens = torch.randint(0, 12, (6, 5))
    target = torch.randint(0, 3, (6,))
    for model, opt in ((ours_model, ours), (peft_model, reference)):
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(tokens), target).backward()
            opt.step()
    for name in names:
        torch.testing.assert_close(ours_params[name], peft_params[name], rtol=0, atol=0, msg=name)


@given(gamma=st.floats(0.3, 1.0), ratio=st.sampled_from([2.0, 4.0, 16.0]))
def test_lora_plus_composes_with_layer_decay(gamma, ratio):
    """Under layer decay every adapter's B trains at ratio times its own A, and A keeps the lr layer
    decay gives the layer it adapts (LoRA+ multiplies; it does not replace)."""
    model = peft_tagger()
    bare = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, rules=[lrgroups.layer_decay(gamma)])
    plain = bare.explain().set_index("name")["lr"]
    bare.close()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3,
                                      rules=[lrgroups.layer_decay(gamma), *lora_plus(ratio)])
    lrs = opt.explain().set_index("name")["lr"]
    for layer in ("fc1", "fc2"):
        a, b = lrs[f"{layer}.lora_A.default.weight"], lrs[f"{layer}.lora_B.default.weight"]
        assert b == pytest.approx(ratio * a)
        assert a == plain[f"{layer}.lora_A.default.weight"]
    assert lrs["embed.lora_embedding_B.default"] == pytest.approx(ratio * lrs["embed.lora_embedding_A.default"])
    assert lrs["head.modules_to_save.default.bias"] == plain["head.modules_to_save.default.bias"]


def test_lora_plus_on_a_model_without_adapters_is_an_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(lrgroups.NoMatchError, match="lora"):
        lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=lora_plus())


@pytest.mark.parametrize("kwargs", [{"lr_ratio": 0.0}, {"lr_ratio": float("inf")}, {"lr_ratio": -2.0},
                                    {"embedding_lr": 0.0}, {"embedding_lr": float("nan")}])
def test_lora_plus_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="must be finite and > 0"):
        lora_plus(**kwargs)


def test_lora_plus_recipe_builds_the_rates():
    model = peft_tagger()
    tuning = lrgroups.recipes.lora_plus(8.0).build(model, torch.optim.AdamW, lr=1e-3)
    lrs = tuning.optimizer.explain().set_index("name")["lr"]
    assert lrs["fc1.lora_B.default.weight"] == pytest.approx(8e-3)
    assert lrs["fc1.lora_A.default.weight"] == pytest.approx(1e-3)
    assert copy.deepcopy(lrgroups.recipes.lora_plus(8.0)) == lrgroups.recipes.lora_plus(8.0)
