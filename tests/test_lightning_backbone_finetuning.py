"""The README's Lightning table, measured: Lightning's own BackboneFinetuning and lrgroups'
LayerwiseFinetuning on the README's small Classifier, with the real Lightning on CPU."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import BackboneFinetuning, ModelCheckpoint

import lrgroups
from lrgroups.integrations.lightning import LayerwiseFinetuning


class Classifier(L.LightningModule):
    """The README's model; ``scheduler`` attaches a LambdaLR or a OneCycleLR (stepped per epoch)."""

    def __init__(self, layerwise: bool, scheduler: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layerwise, self.scheduler = layerwise, scheduler
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        if self.layerwise:
            opt = lrgroups.LayerwiseOptimizer(self, torch.optim.AdamW, lr=1e-3, rules=[lrgroups.layer_decay(0.5)],
                                              example_input=torch.zeros(1, 3, 8, 8))
        else:
            opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3)
        if self.scheduler == "LambdaLR":
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.9 ** epoch)}
        if self.scheduler == "OneCycleLR":
            max_lr = opt.per_group(1e-2) if self.layerwise else 1e-2
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=10)}
        return opt


def data(seed: int = 1, n: int = 32) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def fit(model, callback, max_epochs: int, checkpoints: Path | None = None, ckpt_path=None) -> L.Trainer:
    callbacks = [callback] + ([ModelCheckpoint(checkpoints, save_top_k=-1)] if checkpoints else [])
    trainer = L.Trainer(max_epochs=max_epochs, callbacks=callbacks, accelerator="cpu", logger=False,
                        enable_checkpointing=checkpoints is not None, enable_progress_bar=False,
                        enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, data(), ckpt_path=ckpt_path)
    return trainer


def changed(before: dict, model: L.LightningModule) -> list[str]:
    """Backbone state_dict entries (running statistics included) that differ from ``before``."""
    return [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, before[k])]


def snapshot(model: L.LightningModule) -> dict:
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


# -- how: a scheduler attached when the backbone is added ---------------------------------------------


def test_backbone_finetuning_breaks_lambdalr_and_onecyclelr_at_the_unfreeze():
    """add_param_group at epoch 1 leaves the schedulers with one group fewer than the optimizer:
    LambdaLR's next step raises ValueError from zip(strict=True), OneCycleLR's KeyError 'initial_lr'."""
    with pytest.raises(ValueError, match=r"zip\(\) argument 2 is shorter"):
        fit(Classifier(layerwise=False, scheduler="LambdaLR"), BackboneFinetuning(unfreeze_backbone_at_epoch=1), 3)
    with pytest.raises(KeyError, match="initial_lr"):
        fit(Classifier(layerwise=False, scheduler="OneCycleLR"), BackboneFinetuning(unfreeze_backbone_at_epoch=1), 3)


@pytest.mark.parametrize("scheduler", ["LambdaLR", "OneCycleLR"])
def test_layerwise_finetuning_keeps_the_scheduler_working_through_the_thaws(scheduler):
    """The same schedulers under LayerwiseFinetuning: three epochs, two thaws, no error, every
    parameter unfrozen at the end and every group's lr the scheduler's (the property test in
    test_unfreezing covers every torch and timm scheduler without Lightning)."""
    model = Classifier(layerwise=True, scheduler=scheduler)
    callback = LayerwiseFinetuning(unfreezing={"every_epochs": 1, "depths_per_stage": 1})
    trainer = fit(model, callback, 3)
    opt = lrgroups.unwrap(trainer.optimizers[0])
    assert callback.schedule.stage == 2 and not opt.explain().frozen.any()
    assert [g["lr"] for g in opt.param_groups] == trainer.lr_scheduler_configs[0].scheduler.get_last_lr()


# -- the frozen backbone ----------------------------------------------------------------------------


@pytest.mark.parametrize("train_bn", [True, False])
def test_backbone_finetuning_trains_batchnorm_in_the_frozen_epoch_whatever_train_bn(train_bn):
    """freeze_before_training calls freeze(backbone) with train_bn's default (True) whatever the
    callback was given: both BatchNorms' weight, bias and running statistics change during epoch 0
    (10 of the backbone's 14 state_dict tensors); only the convolutions stay put."""
    model = Classifier(layerwise=False)
    before = snapshot(model)
    fit(model, BackboneFinetuning(unfreeze_backbone_at_epoch=1, train_bn=train_bn), 1)
    bn_tensors = [f"{i}.{k}" for i in (1, 4) for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    assert changed(before, model) == bn_tensors
    assert len(before) == 14


def test_layerwise_finetuning_leaves_what_it_froze_unchanged_running_statistics_included():
    """The README's LayerwiseFinetuning: during epoch 0 the first conv block (depth 0, frozen by the
    schedule) is bitwise unchanged, its BatchNorm's running statistics included; the block the first
    stage trains moves; at the end of the run both have trained."""
    model = Classifier(layerwise=True)
    before = snapshot(model)
    fit(model, LayerwiseFinetuning(unfreezing={"every_epochs": 1, "depths_per_stage": 2}), 1)
    assert changed(before, model) == ["3.weight", "3.bias", "4.weight", "4.bias", "4.running_mean", "4.running_var",
                                      "4.num_batches_tracked"]
    model = Classifier(layerwise=True)
    fit(model, LayerwiseFinetuning(unfreezing={"every_epochs": 1, "depths_per_stage": 2}), 2)
    assert len(changed(before, model)) == 14


# -- resume ----------------------------------------------------------------------------------------


def test_backbone_finetuning_resumed_after_the_unfreeze_never_trains_the_backbone_again(tmp_path):
    """A checkpoint saved at the end of epoch 1 (backbone unfrozen at epoch 1, convolutions trained)
    resumed for two more epochs: setup() freezes the backbone again and on_fit_start puts its param
    group back with requires_grad=False, so the convolutions get no gradient and stay bitwise where
    the checkpoint left them (the BatchNorms, trainable since setup(), still train); the run that never
    stopped trains them."""
    fit(Classifier(layerwise=False), BackboneFinetuning(unfreeze_backbone_at_epoch=1), 2, checkpoints=tmp_path)
    checkpoint = tmp_path / "epoch=1-step=8.ckpt"
    saved = {k[len("backbone."):]: v for k, v in torch.load(checkpoint, weights_only=True)["state_dict"].items()
             if k.startswith("backbone.")}

    resumed = Classifier(layerwise=False)
    trainer = fit(resumed, BackboneFinetuning(unfreeze_backbone_at_epoch=1), 4, ckpt_path=checkpoint)
    convs = ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert not any(resumed.backbone.get_parameter(name).requires_grad for name in convs)
    in_groups = {p for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert all(resumed.backbone.get_parameter(name) in in_groups for name in convs)  # in a group, but frozen
    assert not any(name in changed(saved, resumed) for name in convs)

    uninterrupted = Classifier(layerwise=False)
    trainer = fit(uninterrupted, BackboneFinetuning(unfreeze_backbone_at_epoch=1), 4)
    assert all(name in changed(saved, uninterrupted) for name in convs)
    # one backbone lr: 0.1 x the head's 1e-3 at epoch 1, times lambda_func (2) at epochs 2 and 3
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == pytest.approx([1e-3, 4e-4])


# -- DDP -------------------------------------------------------------------------------------------


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.mark.slow
def test_backbone_finetuning_under_ddp_leaves_the_unfrozen_convolutions_unreduced(tmp_path):
    """Lightning's DDPStrategy, 2 gloo ranks, each its half of the data: DDP is built after setup()
    froze the backbone, so the convolutions unfrozen at epoch 1 train on each rank's own gradients
    and end different on the two ranks; the head and the BatchNorm affine parameters (trainable when
    DDP was built) are reduced and end bitwise equal."""
    worker = Path(__file__).with_name("lightning_backbone_ddp_worker.py")
    port = _free_port()
    processes = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "NODE_RANK": "0",
               "LOCAL_RANK": str(rank), "RANK": str(rank),
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
        processes.append(subprocess.Popen([sys.executable, str(worker), str(tmp_path)], env=env))
    assert [p.wait(timeout=240) for p in processes] == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    initial = Classifier(layerwise=False).state_dict()
    for name in ["backbone.0.weight", "backbone.0.bias", "backbone.3.weight", "backbone.3.bias"]:
        assert not torch.equal(ranks[0][name], initial[name])  # the convolutions did train after the unfreeze
        assert not torch.equal(ranks[0][name], ranks[1][name]), name
    for name in ["head.weight", "head.bias", "backbone.1.weight", "backbone.1.bias", "backbone.4.weight", "backbone.4.bias"]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
