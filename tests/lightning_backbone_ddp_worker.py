"""One rank of the BackboneFinetuning DDP test (2 gloo ranks on CPU), launched by
test_lightning_backbone_finetuning.py with Lightning's environment variables set."""

from __future__ import annotations

import sys
import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import BackboneFinetuning
from lightning.pytorch.strategies import DDPStrategy
from test_lightning_backbone_finetuning import Classifier, data  # this script's folder is on sys.path


def main(out: str) -> None:
    warnings.simplefilter("ignore")
    model = Classifier(layerwise=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(process_group_backend="gloo"),
        max_epochs=2,
        callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=1)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data(n=16))
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{out}/rank{trainer.global_rank}.pt")
    # Lightning destroys only NCCL groups at exit: a gloo group left to interpreter shutdown tears its
    # threads down while the other rank may still use the connection (a hang or "terminate called").
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
