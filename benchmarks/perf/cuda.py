"""The CUDA mode of the perf runner: ``python -m benchmarks perf --cuda`` (``bench_cuda.py``) and its
CPU rehearsal ``--cuda-rehearsal``.

What the mode measures, on one device, ViT-B (``timm`` ``vit_base_patch16_224``, random init, nothing
downloaded) with **fp32 parameters and gradients**: fp32 master weights stepped by fused AdamW
(``fused=True``) is the common case of a real fine-tuning run (bf16 autocast computes the forward, the
optimizer still steps fp32 tensors), and it is the case the bandwidth floor (28 bytes per parameter)
is written for:

- the wrapper's step overhead (``LayerwiseOptimizer.step`` / the bare inner optimizer with the same
  param groups; fused AdamW, foreach AdamW, SGD momentum);
- the group layout (merged layer-decay groups / one group / one group per tensor; fused and foreach
  AdamW);
- the layer-decayed fused AdamW step / single-group fused AdamW against the memory-bandwidth floor
  (the CUDA row of ``docs/performance.md``).

Each measurement: one untimed step per optimizer (its state is allocated), ``warmup`` discarded
rounds, then rounds of ``inner`` steps per variant with ``torch.cuda.synchronize`` before and after
every sample (:class:`~benchmarks.perf.harness.Interleaved`); the peak of
``torch.cuda.max_memory_allocated`` over the timed rounds (reset before them) goes into the
benchmark's ``extra_info`` as ``peak_memory_bytes`` (``None`` off CUDA: the CPU has no such counter).

The rehearsal runs the same tests on the CPU with a tiny ViT (2 blocks, 64 wide, 32-pixel input) and a
few rounds: it checks the code path, not the numbers; its records say ``device: cpu`` and
``rehearsal: true``.

Example:
    >>> REHEARSAL.device, REHEARSAL.rehearsal, CUDA.model
    ('cpu', True, 'vit_base_patch16_224')
    >>> previous = set_mode(REHEARSAL); current_mode() is REHEARSAL
    True
    >>> set_mode(previous) is REHEARSAL
    True
"""

from __future__ import annotations

import functools
import gc
import platform
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from . import harness

__all__ = ["CudaMode", "CUDA", "REHEARSAL", "set_mode", "current_mode", "mode_model", "reset_peak", "peak_bytes",
           "cuda_environment", "refusal", "TimeBox"]


@dataclass(frozen=True)
class CudaMode:
    """Where and at what size ``bench_cuda.py`` runs: ``inner`` steps per sample, ``rounds`` planned
    (scaled, then cut to the time budget), ``warmup`` discarded rounds."""

    device: str
    model: str
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    inner: int = 10
    rounds: int = 100
    warmup: int = 3

    @property
    def rehearsal(self) -> bool:
        return self.device != "cuda"

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


CUDA = CudaMode("cuda", "vit_base_patch16_224")
REHEARSAL = CudaMode("cpu", "vit_tiny_patch16_224",
                     (("depth", 2), ("embed_dim", 64), ("num_heads", 2), ("img_size", 32), ("num_classes", 10)),
                     inner=1, rounds=6, warmup=1)

_MODE: dict[str, CudaMode | None] = {"value": None}


def set_mode(mode: CudaMode | None) -> CudaMode | None:
    """Select the mode ``bench_cuda.py`` runs in (``None``: its tests skip); returns the previous one."""
    previous, _MODE["value"] = _MODE["value"], mode
    return previous


def current_mode() -> CudaMode | None:
    return _MODE["value"]


@functools.lru_cache(maxsize=2)
def mode_model(mode: CudaMode) -> torch.nn.Module:
    """The mode's model on its device: fp32, every parameter trainable, a random gradient set once."""
    import timm

    torch.manual_seed(0)
    with mode.torch_device:
        model = timm.create_model(mode.model, pretrained=False, **dict(mode.model_kwargs))
        for param in model.parameters():
            param.requires_grad_(True)
            param.grad = torch.randn_like(param)
    return model


def reset_peak(device: torch.device) -> None:
    """Free what earlier measurements left and reset the CUDA peak-memory counter (nothing off CUDA)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    """``torch.cuda.max_memory_allocated`` since :func:`reset_peak`, in bytes; ``None`` off CUDA."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _driver_version() -> str:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown (nvidia-smi: {type(error).__name__})"
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "unknown (nvidia-smi printed nothing)"


def cuda_environment(mode: CudaMode, seconds: float) -> dict[str, Any]:
    """What a CUDA-mode run adds to ``environment.json``: the mode, the GPU (name, compute capability,
    memory), the NVIDIA driver (``nvidia-smi``; "unknown (...)" without it), CUDA and cuDNN as torch
    was built with them, the model and the time budget. A rehearsal names no GPU."""
    record: dict[str, Any] = {
        "mode": "CUDA rehearsal on the CPU (tiny ViT; checks the code path, not a GPU measurement)"
        if mode.rehearsal else "CUDA",
        "rehearsal": mode.rehearsal,
        "device": mode.device,
        "cuda": not mode.rehearsal,
        "model": f"{mode.model} {dict(mode.model_kwargs) or ''}".strip() + ", fp32 parameters and gradients",
        "time budget (s)": seconds,
        "torch CUDA": torch.version.cuda or "none (CPU build)",
        "cuDNN": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "none",
        "python": platform.python_version(),
    }
    if mode.rehearsal:
        return record | {"GPU": "none (rehearsal on the CPU)"}
    props = torch.cuda.get_device_properties(0)
    return record | {
        "GPU": torch.cuda.get_device_name(0),
        "compute capability": f"{props.major}.{props.minor}",
        "GPU memory (GiB)": round(props.total_memory / 2**30, 1),
        "NVIDIA driver": _driver_version(),
    }


def refusal(rehearsal: bool, out: Path, gpu_dir: Path) -> str | None:
    """Why the CUDA mode must not start (the runner exits with 2 before measuring or writing anything),
    or ``None``: ``--cuda`` without a CUDA device, or a rehearsal aimed into ``gpu_dir``."""
    if rehearsal:
        if out.resolve() == gpu_dir.resolve() or gpu_dir.resolve() in out.resolve().parents:
            return f"a CPU rehearsal is never written into {gpu_dir} (that folder holds GPU measurements); pass --out"
        return None
    if not torch.cuda.is_available():
        return ("--cuda needs a CUDA device and torch.cuda.is_available() is False: nothing measured, nothing "
                "written. On a CPU, --cuda-rehearsal runs the same code path at a tiny size.")
    return None


class TimeBox:
    """A pytest plugin that fits the run into ``seconds`` from ``start`` (``time.monotonic``).

    Before each test, the time left until the soft deadline (``seconds`` less a reserve for the
    reports) is shared among the tests not yet run: 60% of a share caps that test's timed rounds
    (:func:`harness.set_time_share`); a test that starts past the soft deadline is skipped. At the hard
    deadline (half the reserve before the end) a ``SIGALRM`` raises ``KeyboardInterrupt``: pytest stops
    as on Ctrl-C and pytest-benchmark still writes the JSON of the benchmarks that finished
    (``fired`` tells the runner); the alarm is cancelled as soon as pytest's session finishes, so it
    never cuts that writing. :meth:`arm` / :meth:`disarm` bracket ``pytest.main`` in the main thread.
    """

    def __init__(self, seconds: float, start: float) -> None:
        self.reserve = max(4.0, 0.08 * seconds)
        self.soft = start + seconds - self.reserve
        self.hard = start + seconds - self.reserve / 2
        self.left = 0
        self.fired = False
        self.skipped: list[str] = []
        self._previous: Any = None

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.left = len(items)

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        remaining = self.soft - time.monotonic()
        tests = max(self.left, 1)
        self.left -= 1
        if remaining <= 0:
            self.skipped.append(item.name)
            pytest.skip("the --seconds time budget is spent")
        harness.set_time_share(0.6 * remaining / tests)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        """Every test is done (or pytest was interrupted): no alarm may cut pytest-benchmark's writing."""
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _interrupt(self, signum: int, frame: Any) -> None:
        self.fired = True
        raise KeyboardInterrupt(f"the --seconds time budget ran out (signal {signum})")

    def arm(self) -> None:
        self._previous = signal.signal(signal.SIGALRM, self._interrupt)
        signal.setitimer(signal.ITIMER_REAL, max(0.1, self.hard - time.monotonic()))

    def disarm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous if self._previous is not None else signal.SIG_DFL)
        harness.set_time_share(None)
