"""One rank of the Lightning DDP test (2 gloo ranks on CPU), launched by test_integrations_lightning.py
with Lightning's environment variables set (so Lightning starts no processes itself)."""

from __future__ import annotations

import sys
import warnings

import lightning as L
import torch
import torch.nn as nn

import lrgroups
from lrgroups.integrations.lightning import LayerwiseDDPStrategy, LayerwiseFinetuning


class Net(L.LightningModule):
    """Layer 0 is frozen by the user before Lightning wraps the model in DDP and unfrozen by hand at
    epoch 1; layers 2 and 4 are staged by the callback's schedule."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
        )
        self.net[0].requires_grad_(False)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 1:
            lrgroups.unwrap(self.optimizers()).unfreeze("net.0.*")

    def configure_optimizers(self):
        return lrgroups.LayerwiseOptimizer(
            self, torch.optim.AdamW, lr=1e-2, rules=[lrgroups.layer_decay(0.5)], example_input=torch.zeros(1, 5)
        )


def data() -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 5, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def main(out: str) -> None:
    warnings.simplefilter("ignore")
    model = Net()
    finetuning = LayerwiseFinetuning(unfreezing={"stages": ["net.6.*", "net.4.*", "net.2.*"], "every_epochs": 1})
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=LayerwiseDDPStrategy(process_group_backend="gloo"),
        max_epochs=3,
        callbacks=[finetuning],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data())
    opt = lrgroups.unwrap(trainer.optimizers[0])
    torch.save(
        {
            "params": torch.cat([p.detach().flatten() for p in model.parameters()]),
            "first": model.net[0].weight.detach().clone(),
            "frozen": opt.explain().frozen.tolist(),
            "stage": finetuning.schedule.stage,
        },
        f"{out}/rank{trainer.global_rank}.pt",
    )
    # Lightning destroys only NCCL groups at exit: a gloo group left to interpreter shutdown tears its
    # threads down while the other rank may still use the connection (a hang or "terminate called").
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
