"""The relative gradient norm and Auto-RGN (lrgroups.rgn), on cases whose answer is known by hand."""

import math

import pytest
import torch
import torch.nn as nn

import lrgroups
from lrgroups.rgn import auto_rgn, relative_gradient_norms


def scalar_chain(a: float, b: float) -> nn.Sequential:
    """y = b * (a * x): two 1x1 linear layers without bias."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(a)
        model[1].weight.fill_(b)
    return model


def mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def batches(n: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, generator=generator), torch.randn(8, 1, generator=generator)) for _ in range(n)]


@pytest.mark.parametrize(("a", "b"), [(1.0, 2.0), (0.5, 3.0), (-2.0, 1.0)])
def test_rgn_of_a_scalar_chain_is_known_by_hand(a, b):
    """For y = b a x under any loss, dL/da = G b and dL/db = G a (G = dL/dy summed with x), so
    RGN_a / RGN_b = (|G b| / |a|) / (|G a| / |b|) = b^2 / a^2 on every batch, whatever the data;
    Auto-RGN gives the larger one multiplier 1 and the other the inverse ratio."""
    model = scalar_chain(a, b)
    rgn = relative_gradient_norms(model, batches(), mse)
    assert rgn["0.weight"] / rgn["1.weight"] == pytest.approx(b**2 / a**2, rel=1e-6)  # float32 gradients
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[auto_rgn(model, batches(), mse)])
    lrs = opt.explain().set_index("name")["lr"]
    ratio = b**2 / a**2
    expected = (0.1, 0.1 / ratio) if ratio >= 1 else (0.1 * ratio, 0.1)
    assert (lrs["0.weight"], lrs["1.weight"]) == pytest.approx(expected, rel=1e-6)


def test_a_tensor_that_does_not_reach_the_loss_gets_multiplier_zero():
    """A branch whose output is multiplied by zero has gradient 0, so RGN 0 and lr 0."""

    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.live, self.dead = nn.Linear(3, 1), nn.Linear(3, 1)

        def forward(self, x):
            return self.live(x) + 0.0 * self.dead(x)

    model = Dead()
    data = [(torch.randn(4, 3), torch.randn(4, 1))]
    lrs = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[auto_rgn(model, data, mse)]).explain()
    table = lrs.set_index("name")["lr"]
    assert table["dead.weight"] == 0.0 and table["dead.bias"] == 0.0
    assert table.max() == pytest.approx(0.1)


def test_by_depth_pools_the_norms_of_each_depth():
    """by="depth": ||g|| and ||theta|| over every tensor of a depth (weight and bias together)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    data = batches(3)
    data = [(torch.randn(8, 3), y) for _, y in data]
    per_depth = relative_gradient_norms(model, data, mse, by="depth")
    assert set(per_depth) == {0, 1}
    expected = []
    for batch in data:
        grads = torch.autograd.grad(mse(model, batch), [model[0].weight, model[0].bias])
        expected.append(math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
                        / math.sqrt(float(model[0].weight.detach().pow(2).sum() + model[0].bias.detach().pow(2).sum())))
    assert per_depth[0] == pytest.approx(sum(expected) / len(expected), rel=1e-6)
    rule = auto_rgn(model, data, mse, by="depth")
    lrs = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=1.0, rules=[rule]).explain().set_index("name")["lr"]
    assert lrs["0.weight"] == lrs["0.bias"] and lrs["2.weight"] == lrs["2.bias"]
    assert max(lrs) == pytest.approx(1.0)


def test_measuring_leaves_the_model_unchanged():
    """Weights, .grad and BatchNorm running statistics are as they were (forward in train mode moves
    the statistics; they are restored)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
    model[0].weight.grad = torch.full_like(model[0].weight, 7.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    relative_gradient_norms(model, [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(3)], mse)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 7.0))
    assert model[3].bias.grad is None


def test_frozen_and_zero_norm_tensors():
    """A frozen tensor is not measured and keeps its (frozen) setting; a zero-initialised bias has no
    RGN and keeps the running lr (multiplier 1)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    model[0].weight.requires_grad_(False)
    with torch.no_grad():
        model[2].bias.zero_()
    data = [(torch.randn(8, 3), torch.randn(8, 1))]
    rgn = relative_gradient_norms(model, data, mse)
    assert "0.weight" not in rgn and math.isnan(rgn["2.bias"])
    table = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[auto_rgn(model, data, mse)]).explain()
    table = table.set_index("name")
    assert table.loc["2.bias", "lr"] == pytest.approx(0.1)
    assert bool(table.loc["0.weight", "frozen"])


def test_auto_rgn_multiplies_what_earlier_rules_set():
    model = scalar_chain(1.0, 2.0)
    rule = auto_rgn(model, batches(), mse)
    lrs = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("1.*", lr=0.4), rule])
    table = lrs.explain().set_index("name")["lr"]
    assert table["1.weight"] == pytest.approx(0.4 * 0.25) and table["0.weight"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"by": "layer"}, "by must be one of"), ({"batches": []}, "batches is empty"),
     ({"loss_fn": lambda model, batch: model(batch[0])}, "finite scalar")],
)
def test_bad_input_is_refused(kwargs, message):
    args = {"model": scalar_chain(1.0, 2.0), "batches": batches(1), "loss_fn": mse, **kwargs}
    with pytest.raises(ValueError, match=message):
        auto_rgn(**args)


def test_all_zero_gradients_are_refused():
    model = scalar_chain(1.0, 2.0)
    with pytest.raises(ValueError, match="every measured gradient is zero"):
        auto_rgn(model, batches(1), lambda model, batch: 0.0 * model(batch[0]).sum())
