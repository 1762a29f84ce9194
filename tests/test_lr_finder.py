"""The lr range test that keeps the rules' ratios (lrgroups.lr_finder): the ratios at every step, a
known divergence point, nothing changed afterwards (a run after the test is bitwise the run without
it), in a plain loop, under Lightning and under the HF Trainer."""

import contextlib
import io

import pytest
import torch
import torch.nn as nn

import lrgroups
from lrgroups.lr_finder import lr_range_test


def cross_entropy(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def batches(n: int = 6, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator)) for _ in range(n)]


def train(model, opt, data, steps):
    for _, batch in zip(range(steps), data * steps, strict=False):  # strict=False: the first `steps` batches of the repeated data
        opt.zero_grad()
        cross_entropy(model, batch).backward()
        opt.step()


def test_every_step_keeps_the_planned_ratios():
    model = mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1,
                                      rules=[lrgroups.layer_decay(0.5), lrgroups.head(lr_mult=3.0)])
    result = lr_range_test(opt, model, batches(), cross_entropy, start=1e-3, end=1.0, num_steps=30)
    lrs = result.table[[f"lr_{i}" for i in range(len(opt.param_groups))]].to_numpy()
    planned = torch.tensor(result.planned_lrs, dtype=torch.float64)
    ratios = torch.tensor(lrs) / planned
    assert torch.allclose(ratios, ratios[:, :1].expand_as(ratios), rtol=1e-12)  # one multiplier per step
    assert torch.allclose(ratios[:, 0], torch.tensor(result.table["multiplier"].to_numpy()), rtol=1e-12)
    assert result.table["multiplier"].iloc[0] == pytest.approx(1e-3)
    assert len(set(result.planned_lrs)) > 2  # the plan has several lrs, so the ratio check is not vacuous


def test_sgd_on_a_quadratic_diverges_where_theory_says():
    """Full-batch SGD on 0.5 * a * w^2 contracts w by |1 - lr * a| per step: it diverges exactly when
    lr > 2 / a. The sweep stops as diverged, after the multiplier passes 2 / (a * planned lr), and
    the suggestion lies below it."""
    a = 4.0

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(8))

        def forward(self, _):
            return 0.5 * a * self.w.pow(2).sum()

    model = Quadratic()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    result = lr_range_test(opt, model, [None], lambda m, b: m(b), start=1e-2, end=1e3, num_steps=200)
    critical = 2 / (a * 0.1)  # multiplier at lr = 2 / a
    assert result.stopped == "diverged"
    assert result.table["multiplier"].iloc[-1] > critical
    assert result.suggestion is not None and result.suggestion < critical
    decreasing = result.table[result.table["multiplier"] < critical]["loss"]
    assert decreasing.is_monotonic_decreasing  # below the critical lr every step lowers the loss


def test_after_the_test_training_continues_bitwise_as_if_it_never_ran():
    """Weights, Adam moments, a scheduler's current lrs, eval mode, .grad and the RNG (dropout) are
    restored: the same run with and without a range test in the middle ends bitwise equal."""
    finals = []
    for with_test in (False, True):
        model = mlp()
        opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-2, rules=[lrgroups.layer_decay(0.5)])
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        train(model, opt, batches(), 3)
        scheduler.step()
        model.eval()
        if with_test:
            grads = [p.grad.clone() for p in model.parameters()]
            result = lr_range_test(opt, model, batches(3, seed=5), cross_entropy, num_steps=20)
            assert len(result.table) > 1
            assert not model.training and all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
        model.train()
        train(model, opt, batches(), 3)
        finals.append([p.detach().clone() for p in model.parameters()] + [torch.rand(3)])
    for before, after in zip(*finals, strict=True):
        assert torch.equal(before, after)


def test_a_schedule_does_not_count_the_test_steps():
    model = mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_steps=5)
    tuning = lrgroups.driver.FineTuning(opt, schedule, None)
    frozen = sorted(n for n in opt.select() if opt.is_frozen(n))
    lr_range_test(opt, model, batches(), cross_entropy, num_steps=12)
    assert sorted(n for n in opt.select() if opt.is_frozen(n)) == frozen and tuning.steps == 0
    tuning.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"start": 0.0}, "0 < start < end"), ({"start": 1.0, "end": 0.5}, "0 < start < end"), ({"num_steps": 1}, ">= 2"),
     ({"smoothing": 1.0}, r"\[0, 1\)"), ({"diverge": 1.0}, "> 1"), ({"suggest": "valley"}, "suggest must be one of")],
)
def test_bad_arguments_are_refused(kwargs, message):
    model = mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=message):
        lr_range_test(opt, model, batches(), cross_entropy, **kwargs)


def test_not_a_layerwise_optimizer_and_empty_batches_are_refused():
    model = mlp()
    with pytest.raises(TypeError, match="LayerwiseOptimizer"):
        lr_range_test(torch.optim.SGD(model.parameters(), lr=0.1), model, batches(), cross_entropy)
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="batches is empty"):
        lr_range_test(opt, model, [], cross_entropy)


def test_the_suggested_lrs_and_the_plot():
    import matplotlib  # noqa: F401  (the bench extra, which make test installs: a missing one fails, not skips)
    model = mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])
    result = lr_range_test(opt, model, batches(), cross_entropy, start=1e-2, end=1e2, num_steps=50, suggest="minimum/10")
    best = result.table.loc[result.table["smoothed_loss"].idxmin(), "multiplier"]
    assert result.suggestion == pytest.approx(best / 10)
    assert result.lrs() == pytest.approx([result.suggestion * lr for lr in result.planned_lrs])
    ax = result.plot()
    assert ax.get_xscale() == "log" and len(ax.lines) == 3


def test_under_lightning_with_the_modules_own_training_step():
    """A LightningModule's optimizer from configure_optimizers, swept with its own training_step on its
    dataloader; Trainer.fit then runs from the restored state."""
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, batch_idx):
            return cross_entropy(self.net, batch)

        def configure_optimizers(self):
            return lrgroups.LayerwiseOptimizer(self.net, torch.optim.SGD, lr=0.05, rules=[lrgroups.layer_decay(0.5)])

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*map(torch.cat, zip(*batches(), strict=True))),
                                               batch_size=16)

    module = Module()
    opt = module.configure_optimizers()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    result = lr_range_test(opt, module, module.train_dataloader(), lambda m, b: m.training_step(b, 0), num_steps=15)
    assert result.suggestion is not None
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module)
    assert trainer.global_step == 3


def test_under_the_hf_trainer_with_its_loss_and_dataloader():
    """The Trainer's own compute_loss and train dataloader drive the sweep; training afterwards ends
    bitwise where the same Trainer run without the test ends."""
    import transformers  # the test extra installs it: a missing one fails, not skips

    from tests.test_integrations_transformers import _data, _model

    finals = []
    for with_test in (False, True):
        model = _model()
        opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, rules=[lrgroups.layer_decay(0.5)])
        args = transformers.TrainingArguments("unused", max_steps=4, per_device_train_batch_size=4, report_to="none",
                                              use_cpu=True, seed=0, save_strategy="no", disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=_data(16, 0), optimizers=(opt, None))
        if with_test:
            result = lr_range_test(opt, model, trainer.get_train_dataloader(),
                                   lambda m, batch: trainer.compute_loss(m, batch), num_steps=10)
            assert len(result.table) > 1 and result.table["lr_0"].iloc[-1] > result.table["lr_0"].iloc[0]
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.train()
        finals.append([p.detach().clone() for p in model.parameters()])
    for before, after in zip(*finals, strict=True):
        assert torch.equal(before, after)
