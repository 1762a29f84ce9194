"""The forgetting monitor (lrgroups.monitor): distances and update ratios known by hand, frozen depths
at zero, the source loss, the measuring schedule, and the model left as it was."""

import math

import pytest
import torch
import torch.nn as nn

import lrgroups
from lrgroups.monitor import ForgettingMonitor


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def step(model, opt, seed):
    generator = torch.Generator().manual_seed(seed)
    opt.zero_grad()
    nn.functional.cross_entropy(model(torch.randn(16, 4, generator=generator)),
                                torch.randint(0, 3, (16,), generator=generator)).backward()
    opt.step()


def test_distance_and_update_ratio_are_the_norms_by_hand():
    """After each step, per depth: ||theta - theta_0|| / ||theta_0|| over the depth's weight and bias
    together, and ||theta_t - theta_{t-1}|| / ||theta_t||."""
    model = mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.5, momentum=0.9)
    start = [p.detach().clone() for p in model.parameters()]
    monitor = ForgettingMonitor(opt)
    previous = start
    for t in range(3):
        step(model, opt, t)
        now = [p.detach().clone() for p in model.parameters()]
        table = monitor.frame().query(f"step == {t + 1}").set_index("key")
        for depth, (w, b) in enumerate([(0, 1), (2, 3), (4, 5)]):
            flat = lambda ts: torch.cat([ts[w].flatten(), ts[b].flatten()])  # noqa: E731
            distance = (flat(now) - flat(start)).norm() / flat(start).norm()
            ratio = (flat(now) - flat(previous)).norm() / flat(now).norm()
            assert table.loc[f"depth_{depth}", "distance"] == pytest.approx(float(distance), rel=1e-5)
            assert table.loc[f"depth_{depth}", "update_ratio"] == pytest.approx(float(ratio), rel=1e-5)
        previous = now
    assert monitor.steps == 3 and len(monitor.rows) == 9


def test_a_frozen_depth_shows_no_movement_and_thawing_it_does():
    model = mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.5, rules=[lrgroups.Rule("0.*", frozen=True)])
    monitor = ForgettingMonitor(opt)
    step(model, opt, 0)
    latest = monitor.latest()
    assert latest["forgetting/distance/depth_0"] == 0.0 and latest["forgetting/update_ratio/depth_0"] == 0.0
    assert latest["forgetting/distance/depth_2"] > 0
    opt.unfreeze("0.*")
    step(model, opt, 1)
    assert monitor.latest()["forgetting/distance/depth_0"] > 0


def test_every_and_source_every_schedule_the_measurements():
    model = mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    source = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(2)]
    monitor = ForgettingMonitor(opt, model, every=3, source_batches=source, source_every=4)
    for t in range(12):
        step(model, opt, t)
    assert sorted(set(monitor.frame()["step"].dropna())) == [3, 4, 6, 8, 9, 12]
    assert sorted(monitor.frame().dropna(subset=["key"])["step"].unique()) == [3, 6, 9, 12]
    assert [row["step"] for row in monitor.source] == [4, 8, 12]


def test_the_source_metric_is_the_mean_over_batches_in_eval_mode():
    """Dropout is off while the source is evaluated (eval mode), and the model is back in train mode
    afterwards; the value is the mean of the per-batch cross-entropy and accuracy."""
    model = mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    source = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    monitor = ForgettingMonitor(opt, model, source_batches=source)
    model.train()
    step(model, opt, 0)
    assert model.training and model[2].training
    model.eval()
    with torch.no_grad():
        losses = [float(nn.functional.cross_entropy(model(x), y)) for x, y in source]
        accuracy = [float((model(x).argmax(-1) == y).float().mean()) for x, y in source]
    assert monitor.source[-1]["source_loss"] == pytest.approx(sum(losses) / 3, rel=1e-6)
    assert monitor.source[-1]["source_accuracy"] == pytest.approx(sum(accuracy) / 3, rel=1e-6)


def test_monitoring_does_not_change_training():
    """The same run with and without a monitor (with source evaluation) ends bitwise equal."""
    finals = []
    for watched in (False, True):
        model = mlp()
        opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-2, rules=[lrgroups.layer_decay(0.5)])
        monitor = ForgettingMonitor(opt, model, source_batches=[(torch.randn(8, 4), torch.randint(0, 3, (8,)))]) if watched else None
        for t in range(5):
            torch.manual_seed(100 + t)  # dropout draws
            step(model, opt, t)
        finals.append([p.detach().clone() for p in model.parameters()])
        if monitor is not None:
            assert len(monitor.source) == 5
            monitor.close()
            step(model, opt, 9)
            assert monitor.steps == 5  # closed: no more hooks
    for a, b in zip(*finals, strict=True):
        assert torch.equal(a, b)


def test_by_group_keys_are_param_group_indices():
    model = mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, weight_decay=0.01,
                                      rules=[lrgroups.no_weight_decay()])
    monitor = ForgettingMonitor(opt, by="group")
    step(model, opt, 0)
    assert set(monitor.frame()["key"]) == {f"group_{i}" for i in range(len(opt.param_groups))}
    assert len(opt.param_groups) == 2


def test_a_zero_start_has_no_relative_distance():
    """A depth that starts at zero and moves has no relative distance (nan); a frozen one shows 0."""
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.zero_()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("1.*", frozen=True)])
    monitor = ForgettingMonitor(opt)
    opt.zero_grad()
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    values = monitor.frame().set_index("key")["distance"]
    assert math.isnan(values["depth_0"]) and values["depth_1"] == 0.0


@pytest.mark.parametrize(("kwargs", "error"), [({"by": "layer"}, ValueError), ({"every": 0}, ValueError),
                                               ({"source_batches": [1]}, ValueError)])
def test_bad_arguments_are_refused(kwargs, error):
    opt = lrgroups.LayerwiseOptimizer(mlp(), torch.optim.SGD, lr=0.1)
    with pytest.raises(error):
        ForgettingMonitor(opt, **kwargs)
    with pytest.raises(TypeError, match="LayerwiseOptimizer"):
        ForgettingMonitor(torch.optim.SGD(mlp().parameters(), lr=0.1))


def test_lightning_callback_logs_the_measurements_at_their_steps(tmp_path):
    """Under a real Trainer with a CSVLogger: every 2nd step's distances and update ratios are in the
    logged metrics at that step, with the source loss; the monitor's own frame agrees."""
    import csv

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from lrgroups.integrations.lightning import ForgettingMonitorCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def forward(self, x):
            return self.net(x)

        def configure_optimizers(self):
            return lrgroups.LayerwiseOptimizer(self, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(48, 4), torch.randint(0, 3, (48,))),
                                       batch_size=8)
    source = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    callback = ForgettingMonitorCallback(every=2, source_batches=source, source_every=4)
    trainer = pl.Trainer(max_steps=6, callbacks=[callback], logger=CSVLogger(tmp_path), log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Module(), data)
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).read_text().splitlines()))
    logged = {int(r["step"]): r for r in rows if r.get("forgetting/distance/depth_0")}
    assert sorted(logged) == [2, 4, 6]
    frame = callback.monitor.frame().dropna(subset=["key"]).set_index(["step", "key"])
    assert float(logged[4]["forgetting/distance/depth_0"]) == pytest.approx(frame.loc[(4, "depth_0"), "distance"])
    assert logged[4]["forgetting/source_loss"] and not logged[2]["forgetting/source_loss"]


def test_hf_callback_adds_the_measurements_to_the_logs(tmp_path):
    """Under the real HF Trainer: every log entry of a training step carries the latest distance per
    depth (log_history included); the source metric is the model's own loss on source batches."""
    import contextlib
    import io

    import transformers

    from lrgroups.integrations.transformers import ForgettingMonitorCallback
    from tests.test_integrations_transformers import _data, _model

    model = _model()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, rules=[lrgroups.layer_decay(0.5)])
    collator = transformers.default_data_collator
    source = [collator(_data(4, 7))]
    callback = ForgettingMonitorCallback(every=1, source_batches=source,
                                         source_fn=lambda m, batch: {"loss": m(**batch).loss})
    args = transformers.TrainingArguments(str(tmp_path), max_steps=4, per_device_train_batch_size=4, report_to="none",
                                          use_cpu=True, seed=0, save_strategy="no", logging_steps=2, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_data(16, 0), optimizers=(opt, None),
                                   callbacks=[callback])
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    entries = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in entries] == [2, 4]
    frame = callback.monitor.frame().dropna(subset=["key"]).set_index(["step", "key"])
    depths = sorted({key for _, key in frame.index})
    for entry in entries:
        for key in depths:
            assert entry[f"forgetting/distance/{key}"] == pytest.approx(frame.loc[(entry["step"], key), "distance"])
        assert entry["forgetting/source_loss"] > 0
