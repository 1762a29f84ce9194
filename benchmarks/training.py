"""The training loop pieces shared by source pretraining and fine-tuning: device, batches, steps,
evaluation and per-stage features.

Example:
    >>> device = resolve_device("cpu")
    >>> device.type, device.threads
    ('cpu', 2)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .store import cpu_name

#: CPU threads of every CPU run: fixed so that the same command gives the same numbers.
CPU_THREADS = 2
#: The device choice that rehearses a GPU run on the CPU (:func:`resolve_device`).
REHEARSAL = "cpu-as-cuda"
#: Images per forward pass when evaluating.
EVAL_BATCH = 256


@dataclass(frozen=True)
class Device:
    """Where cells run: CUDA with bf16 autocast and channels_last, or the CPU with CPU_THREADS threads."""

    type: str
    name: str
    threads: int | None
    autocast: bool
    channels_last: bool

    @property
    def torch(self) -> torch.device:
        return torch.device(self.type)

    def autocast_context(self) -> contextlib.AbstractContextManager:
        if self.autocast:
            return torch.autocast(self.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.torch)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, images: Tensor) -> Tensor:
        images = images.to(self.torch, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def synchronize(self) -> None:
        if self.type == "cuda":
            torch.cuda.synchronize()


def resolve_device(choice: str = "auto", threads: int = CPU_THREADS) -> Device:
    """``auto``: CUDA when present, else the CPU. On the CPU, fixes torch to ``threads`` threads.
    ``REHEARSAL`` (``"cpu-as-cuda"``): the CPU with what CUDA cells ask for (bf16 autocast,
    channels_last), to run a GPU run's code paths without a GPU (``benchmarks.gpu --rehearse``).

    Raises:
        ValueError: an unknown choice. RuntimeError: ``cuda`` without a CUDA device.
    """
    if choice not in ("auto", "cpu", "cuda", REHEARSAL):
        raise ValueError(f"device must be auto, cpu or cuda, got {choice!r}")
    if choice == REHEARSAL:
        torch.set_num_threads(threads)
        return Device("cpu", f"{cpu_name()} (GPU rehearsal: bf16 autocast, channels_last)", torch.get_num_threads(),
                      autocast=True, channels_last=True)
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch sees no CUDA device")
        return Device("cuda", torch.cuda.get_device_name(), None, autocast=True, channels_last=True)
    torch.set_num_threads(threads)
    return Device("cpu", cpu_name(), torch.get_num_threads(), autocast=False, channels_last=False)


def batches(num_examples: int, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless index batches: a seeded permutation per epoch, cut into full batches (the last
    partial one dropped; a set smaller than a batch is one batch)."""
    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, num_examples)
    while True:
        order = torch.randperm(num_examples, generator=generator)
        for start in range(0, num_examples - size + 1, size):
            yield order[start : start + size]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return max(1, num_examples // batch_size)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """lr factor at ``step``: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor, device: Device) -> Tensor:
    """One optimizer step on cross-entropy; returns the loss (not synchronised)."""
    with device.autocast_context():
        loss = F.cross_entropy(model(device.batch(images)), labels.to(device.torch))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, device: Device) -> Tensor:
    """Logits of ``images`` (eval mode), float32 on the CPU."""
    model.eval()
    outputs = []
    for start in range(0, len(images), EVAL_BATCH):
        with device.autocast_context():
            outputs.append(model(device.batch(images[start : start + EVAL_BATCH])).float().cpu())
    return torch.cat(outputs)
