"""lrgroups: rule-based, depth-aware learning rates, progressive unfreezing and early stopping over
any torch optimizer.

Example:
    >>> import torch, torchvision, lrgroups
    >>> model = torchvision.models.resnet18(num_classes=10)
    >>> opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=0.05,
    ...                                   rules=[lrgroups.layer_decay(0.7), lrgroups.no_weight_decay()])
    >>> print(opt.explain()[["name", "depth", "lr", "weight_decay"]].iloc[[0, -2, -1]].to_string(index=False))
            name  depth      lr  weight_decay
    conv1.weight      0 0.00004          0.05
       fc.weight      9 0.00100          0.05
         fc.bias      9 0.00100          0.00
"""

from . import recipes
from .depth import param_depths
from .distributed import wrap_ddp
from .early_stopping import Decision, EarlyStopping, Plateau
from .groups import param_groups
from .integrations import unwrap
from .l2sp import L2SP
from .lora import lora_plus
from .lr_finder import lr_range_test
from .monitor import ForgettingMonitor
from .norms import FrozenNormStats, batch_norms, freeze_norm_stats, precise_bn
from .optimizer import CheckpointMismatchError, LayerwiseOptimizer
from .rgn import auto_rgn, relative_gradient_norms
from .rules import (
    NoMatchError,
    ParamInfo,
    ParamPlan,
    Rule,
    Selector,
    head,
    layer_decay,
    layer_decay_between,
    no_weight_decay,
    plan,
)
from .unfreezing import ProgressiveUnfreezing, depth_stages
from .wise_ft import wise_ft

#: The same as pyproject.toml's version (tests/test_bench_device.py checks); what benchmarks.store.versions
#: records for lrgroups when it runs from a checkout on PYTHONPATH, not installed.
__version__ = "0.1.0"

__all__ = [
    "CheckpointMismatchError",
    "Decision",
    "ForgettingMonitor",
    "FrozenNormStats",
    "L2SP",
    "batch_norms",
    "freeze_norm_stats",
    "precise_bn",
    "EarlyStopping",
    "Plateau",
    "ProgressiveUnfreezing",
    "depth_stages",
    "LayerwiseOptimizer",
    "NoMatchError",
    "ParamInfo",
    "ParamPlan",
    "Rule",
    "Selector",
    "head",
    "layer_decay",
    "layer_decay_between",
    "lora_plus",
    "lr_range_test",
    "no_weight_decay",
    "param_depths",
    "param_groups",
    "plan",
    "recipes",
    "relative_gradient_norms",
    "auto_rgn",
    "unwrap",
    "wise_ft",
    "wrap_ddp",
]
