"""What the frozen-norm hooks cost the rest of the process: lrgroups switches the BatchNorm layers it
freezes through torch's process-wide module hooks (nothing of lrgroups is put on the user's modules,
so ``torch.jit.script`` and ``torch.save`` see plain modules), and every module call in the process
then pays the hooks' lookup. Timed: the eval-mode forward of an *unrelated* torchvision resnet18
with no LayerwiseOptimizer alive, against the same forward while one (over another resnet18, with a
frozen-BatchNorm rule) is alive, interleaved in the same rounds; at 32 px (call-bound: the lookup's
worst case) and 224 px."""

from __future__ import annotations

import pytest
import torch
import torchvision

import lrgroups

from .harness import Interleaved, Variant, measure, scaled
from .workloads import DEVICE

SIZES = {"32px": 32, "224px": 224}


@pytest.mark.parametrize("size", list(SIZES))
def test_norm_hooks_forward_cost(benchmark, size: str) -> None:
    benchmark.group = "norm hooks"
    torch.manual_seed(0)
    other = torchvision.models.resnet18().to(DEVICE).eval()
    tuned = torchvision.models.resnet18().to(DEVICE)
    x = torch.randn(2, 3, SIZES[size], SIZES[size], device=DEVICE)
    alive: dict[str, lrgroups.LayerwiseOptimizer] = {}

    def without() -> None:
        if "opt" in alive:
            alive.pop("opt").close()

    def with_optimizer() -> None:
        if "opt" not in alive:
            alive["opt"] = lrgroups.LayerwiseOptimizer(tuned, torch.optim.SGD, lr=0.1,
                                                       rules=[lrgroups.Rule("layer1.*", frozen=True)])

    def forward() -> None:
        with torch.no_grad():
            other(x)

    timer = Interleaved({"no_optimizer": Variant(forward, setup=without),
                         "optimizer_alive": Variant(forward, setup=with_optimizer)}, device=DEVICE, warmup=2)
    measure(benchmark, timer, scaled(40, 10), baseline="no_optimizer")
    without()
    benchmark.extra_info.update(section="norm_hooks", model="resnet18", size=size, modules=sum(1 for _ in other.modules()))
