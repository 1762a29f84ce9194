"""LightningModules the tests import by path (Lightning's CLI resolves a module's class by import)."""

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn as nn

import lrgroups


class RulesFromConfig(pl.LightningModule):
    """A module whose optimizer's rules come from its (config-file) arguments, as plain mappings."""

    def __init__(self, rules: list[dict[str, Any]] | None = None, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self) -> lrgroups.LayerwiseOptimizer:
        return lrgroups.LayerwiseOptimizer(self.net, torch.optim.AdamW, lr=self.hparams.lr, rules=self.hparams.rules or [])
