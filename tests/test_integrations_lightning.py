"""lrgroups.integrations.lightning with the real Lightning on CPU: training, resume bitwise, group
names in LearningRateMonitor, DDP with 2 gloo ranks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn as nn

import lrgroups
from lrgroups.integrations.lightning import LayerwiseDDPStrategy, LayerwiseFinetuning


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        opt = lrgroups.LayerwiseOptimizer(
            self,
            torch.optim.AdamW,
            lr=1e-2,
            weight_decay=0.05,
            example_input=torch.zeros(1, 4),
            rules=[lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()],
        )
        return {
            "optimizer": opt,
            "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + 0.1 * step)),
        }


def _data(seed: int) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(24, 4, generator=generator), torch.randint(0, 2, (24,), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _fit(tmp: Path, max_epochs: int, ckpt_path=None, logger=False):
    model = Net()
    finetuning = LayerwiseFinetuning(
        unfreezing={"every_epochs": 1}, early_stopping={"mode": "min", "patience": 5, "restore_best": True}
    )
    callbacks = [finetuning, L.pytorch.callbacks.ModelCheckpoint(tmp, save_top_k=-1, save_on_train_epoch_end=True)]
    if logger:
        callbacks.append(L.pytorch.callbacks.LearningRateMonitor())
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        logger=L.pytorch.loggers.CSVLogger(tmp) if logger else False,
    )
    trainer.fit(model, _data(0), _data(1), ckpt_path=ckpt_path)
    return model, finetuning, trainer


def test_resume_from_a_lightning_checkpoint_equals_the_uninterrupted_run(tmp_path):
    """Unfreezing one stage per epoch (a LambdaLR attached, early stopping watching val_loss): a run
    stopped after epoch 2 (stage 2 of 3) and resumed from its Lightning checkpoint with a fresh model,
    optimizer and callback ends bitwise equal to the run that never stopped, at the same stage, with
    the same stopper state; LearningRateMonitor logs every group under its readable name."""
    full, full_cb, full_trainer = _fit(tmp_path / "full", 4, logger=True)
    _fit(tmp_path / "first", 2)
    checkpoint = tmp_path / "first" / "epoch=1-step=6.ckpt"
    assert torch.load(checkpoint, weights_only=True)["callbacks"]  # the callback's state is in the checkpoint
    resumed, resumed_cb, _ = _fit(tmp_path / "resumed", 4, ckpt_path=checkpoint)

    assert full_cb.schedule.stage == resumed_cb.schedule.stage == 3
    assert [h["step"] for h in resumed_cb.schedule.history] == [3, 6, 9]
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert full_cb.stopper.state_dict()["plateau"] == resumed_cb.stopper.state_dict()["plateau"]

    names = [group["name"] for group in lrgroups.unwrap(full_trainer.optimizers[0]).param_groups]
    assert names[-2:] == ["head", "head-nowd"] and len(set(names)) == len(names)  # short ASCII names by role
    header = (tmp_path / "full" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert all(f"lr-LayerwiseOptimizer/{name}" in header for name in names), header


def test_callback_refuses_plain_ddp_and_a_plain_optimizer():
    """A plain DDPStrategy would let later-unfrozen parameters drift between ranks: setup() says which
    strategy to use; an optimizer that is not a LayerwiseOptimizer is named."""
    callback = LayerwiseFinetuning(unfreezing={"every_epochs": 1})
    with pytest.raises(ValueError, match="LayerwiseDDPStrategy"):
        callback.setup(SimpleNamespace(strategy=L.pytorch.strategies.DDPStrategy()), None, "fit")
    callback.setup(SimpleNamespace(strategy=LayerwiseDDPStrategy()), None, "fit")
    with pytest.raises(TypeError, match="no LayerwiseOptimizer inside SGD"):
        callback.on_fit_start(SimpleNamespace(optimizers=[torch.optim.SGD(nn.Linear(2, 2).parameters())]), Net())
    with pytest.raises(ValueError, match="find_unused_parameters"):
        LayerwiseDDPStrategy(find_unused_parameters=False)


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.mark.slow
def test_lightning_ddp_two_gloo_ranks_agree(tmp_path):
    """Lightning DDP, 2 gloo ranks, LayerwiseDDPStrategy: a layer frozen by the user before Lightning
    wraps the model and unfrozen at epoch 1 through lrgroups.unwrap(self.optimizers()), and layers
    staged by the callback, end bitwise equal on both ranks, and the late layer did train."""
    worker = Path(__file__).with_name("lightning_ddp_worker.py")
    port = _free_port()
    processes = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": "2",
            "NODE_RANK": "0",
            "LOCAL_RANK": str(rank),
            "RANK": str(rank),
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
        }
        processes.append(subprocess.Popen([sys.executable, str(worker), str(tmp_path)], env=env))
    assert [p.wait(timeout=240) for p in processes] == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    assert ranks[0]["stage"] == ranks[1]["stage"] == 2
    assert not any(ranks[0]["frozen"])
    torch.manual_seed(0)
    initial = nn.Linear(5, 16).weight
    assert not torch.equal(ranks[0]["first"], initial)  # the user-frozen layer trained after its unfreeze


def test_a_recipe_runs_as_a_callback_with_its_stage_length_resolved(tmp_path):
    """Gradual unfreezing with its stages spread over the first 2/3 of the run: the stage length, a
    function of the run's length in the recipe, is placed from trainer.estimated_stepping_batches
    (9 steps, 4 depth stages: int(9 * 2/3) // 3 = 2 steps per stage -> advances at steps 2, 4, 6),
    and everything trains after the last stage."""
    recipe = lrgroups.recipes.gradual_unfreezing(unfreeze_fraction=2 / 3)
    finetuning = LayerwiseFinetuning.from_recipe(recipe)
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[finetuning],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    trainer.fit(Net(), _data(0))
    assert trainer.estimated_stepping_batches == 9
    assert [h["step"] for h in finetuning.schedule.history] == [2, 4, 6]
    assert not lrgroups.unwrap(trainer.optimizers[0]).explain().frozen.any()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"early_stopping": {"mode": "unknown_option"}}, ValueError, "mode must be 'min' or 'max'"),
        ({"early_stopping": {"patiense": 3}}, TypeError, "'patiense' \\(did you mean 'patience'\\?\\)"),
        ({"early_stopping": {"patience": -1}}, ValueError, "patience"),
        ({"unfreezing": {"every_epoch": 1}}, TypeError, "'every_epoch' \\(did you mean 'every_epochs'\\?\\)"),
        ({"unfreezing": {"every_epochs": 0}}, ValueError, "every_epochs must be an integer >= 1"),
        ({"unfreezing": {"plateau": {"patience": 2, "mode": "sideways"}}}, ValueError, "mode must be"),
    ],
)
def test_settings_are_validated_when_the_callback_is_built(kwargs, error, message):
    """Lightning's callback tests: a bad setting fails when the callback is built, not at fit."""
    with pytest.raises(error, match=message):
        LayerwiseFinetuning(**kwargs)


def _trainer(callbacks, epochs=3):
    checkpoints = any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks)
    return L.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=checkpoints,
    )


class TrainOnly(Net):
    """No validation loop; logs a training metric."""

    validation_step = None

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss


def test_a_monitor_that_can_never_be_fed_is_refused_and_a_training_metric_can_be_checked():
    """Lightning #126/#1235/#7033: without a validation loop, early stopping read after validation
    would silently never run: refused at fit start; with check_on_train_epoch_end=True it reads a
    training metric at each epoch end, stops, and records (and logs) when and why."""
    never = LayerwiseFinetuning(early_stopping={"mode": "min", "patience": 0}, monitor="train_loss")
    with pytest.raises(ValueError, match="no validation loop, so it would never run"):
        _trainer([never]).fit(TrainOnly(), _data(0))
    stopping = LayerwiseFinetuning(
        early_stopping={"mode": "max", "patience": 0}, monitor="train_loss", check_on_train_epoch_end=True, verbose=True
    )
    trainer = _trainer([stopping], epochs=5)
    trainer.fit(TrainOnly(), _data(0))
    assert trainer.current_epoch < 5 and stopping.stopped_epoch >= 1 and stopping.stop_reason


def test_strict_false_skips_a_check_whose_monitor_is_missing():
    lenient = LayerwiseFinetuning(early_stopping={"patience": 1}, monitor="nope", strict=False)
    with pytest.warns(RuntimeWarning, match="'nope' was not logged; check skipped"):
        _trainer([lenient], epochs=1).fit(Net(), _data(0), _data(1))
    strict = LayerwiseFinetuning(early_stopping={"patience": 1}, monitor="nope")
    with pytest.raises(KeyError, match="'nope' was not logged"):
        _trainer([strict], epochs=1).fit(Net(), _data(0), _data(1))


def test_two_callbacks_share_a_trainer_and_old_checkpoints_still_load(tmp_path):
    """Two configurations, two state keys (Lightning refuses two stateful callbacks with one key);
    a checkpoint saved under the old class-name key loads through the legacy key."""
    schedule = LayerwiseFinetuning(unfreezing={"every_epochs": 1})
    stopper = LayerwiseFinetuning(early_stopping={"mode": "min", "patience": 5})
    assert schedule.state_key != stopper.state_key and schedule._legacy_state_key == "LayerwiseFinetuning"
    assert schedule.state_key == LayerwiseFinetuning(unfreezing={"every_epochs": 1}).state_key
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(tmp_path, save_top_k=-1)
    _trainer([schedule, stopper, checkpoint], epochs=2).fit(Net(), _data(0), _data(1))
    saved = torch.load(sorted(tmp_path.glob("*.ckpt"))[-1], weights_only=False)  # after epoch 1: stage 2
    assert {schedule.state_key, stopper.state_key} <= set(saved["callbacks"])
    old = dict(saved, callbacks={"LayerwiseFinetuning": saved["callbacks"][schedule.state_key]})
    old_path = tmp_path / "old.ckpt"
    torch.save(old, old_path)
    resumed = LayerwiseFinetuning(unfreezing={"every_epochs": 1})
    _trainer([resumed], epochs=3).fit(Net(), _data(0), _data(1), ckpt_path=old_path)
    assert resumed.schedule.stage == 3


def test_stage_lengths_in_steps_count_optimizer_updates_under_gradient_accumulation():
    """every_steps counts optimizer updates (the step hook on the optimizer), not micro-batches: with
    accumulate_grad_batches=2, 2 epochs of 3 batches are 4 updates, so every_steps=2 gives 2 stages."""
    finetuning = LayerwiseFinetuning(unfreezing={"every_steps": 2})
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[finetuning],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        accumulate_grad_batches=2,
        limit_val_batches=0,
    )
    trainer.fit(Net(), _data(0))
    assert trainer.global_step == 4 and finetuning.schedule.stage == 2


def test_one_plateau_per_metric():
    """A plateau schedule and an early stopper on one monitor would advance two stages on one flat
    check (each tracker advancing once): refused when the callback is built, with the alternative."""
    with pytest.raises(ValueError, match="one plateau per metric"):
        LayerwiseFinetuning(unfreezing={"plateau": {"patience": 2}}, early_stopping={"patience": 2})
    alone = LayerwiseFinetuning(unfreezing={"every_epochs": 100}, early_stopping={"mode": "min", "patience": 1})
    trainer = _trainer([alone], epochs=1)
    trainer.fit(Net(), _data(0), _data(1))
    before = alone.schedule.stage
    alone._driver.observe(-1.0, 10, name="val_loss")  # a new best (mode min)
    assert alone.schedule.stage == before
    alone._driver.observe(-1.0, 11, name="val_loss")  # one flat check: one stage
    assert alone.schedule.stage == before + 1
