"""Helpers for the port of PyTorch's OptimizerInfo-driven optimizer tests (test_torch_optim_port.py).

``build(mode, info, params, **kwargs)`` makes an optimizer the way a torch test does,
``optim_cls(params, **kwargs)``: in ``"bare"`` mode that is the torch optimizer itself; in
``"wrapper"`` mode it is a :class:`lrgroups.LayerwiseOptimizer` over a module holding exactly the
test's tensors, each param group's own settings becoming a rule (``lr``/``weight_decay`` fields,
anything else ``options``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

import lrgroups

DTYPE = torch.float32


def as_module(tensors: list[torch.Tensor]) -> nn.Module:
    """A module whose parameters are ``tensors`` themselves (not copies): a test holds the tensors
    and sets their ``.grad``. ``_is_param`` is torch's own marker that lets a plain tensor be
    registered as a parameter (see ``torch.nn.Parameter``'s metaclass)."""
    holder = nn.Module()
    for index, tensor in enumerate(tensors):
        if not isinstance(tensor, nn.Parameter):
            tensor._is_param = True
        holder.register_parameter(f"p{index}", tensor)
    return holder


def build(mode: str, info, params, **kwargs):
    """``info.optim_cls(params, **kwargs)`` in ``"bare"`` mode, the same through the wrapper in
    ``"wrapper"`` mode."""
    if mode == "bare":
        return info.optim_cls(params, **kwargs)
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    tensors, rules = [], []
    for group in groups:
        members = group["params"]
        members = [members] if isinstance(members, torch.Tensor) else list(members)
        names = [f"p{len(tensors) + i}" for i in range(len(members))]
        tensors.extend(members)
        settings = {key: value for key, value in group.items() if key != "params"}
        if settings:
            lr = settings.pop("lr", None)
            weight_decay = settings.pop("weight_decay", None)
            rules.append(
                lrgroups.Rule(
                    where=lambda p, names=frozenset(names): p.name in names,
                    lr=None if lr is None else float(lr),
                    weight_decay=weight_decay,
                    options=settings or None,
                    name=f"group of {', '.join(names)}",
                )
            )
    return lrgroups.LayerwiseOptimizer(as_module(tensors), info.optim_cls, rules=rules, norm_stats="update", **kwargs)


def optim_inputs(info):
    """The OptimizerInfo's CPU inputs, with the description as an id."""
    return info.optim_inputs_func(device="cpu", dtype=DTYPE)


def variants(info) -> list[dict]:
    """Implementation variants torch tests on CPU: the for-loop one, foreach and fused where the
    optimizer has them."""
    found = [{}]
    if "foreach" in info.supported_impls:
        found = [{"foreach": False}, {"foreach": True}]
    if "fused" in info.supported_impls and "cpu" in info.supports_fused_on:
        found.append({"fused": True})
    return found


def make_params(info, seed: int = 0, dtype=DTYPE) -> list[torch.Tensor]:
    """Two leaf tensors of the shapes the optimizer takes (Muon: 2-D only)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(10, 5), (5, 5)] if info.name == "Muon" else [(10, 5), (10,)]
    return [torch.randn(shape, generator=generator, dtype=dtype).requires_grad_() for shape in shapes]


def make_closure(info, optimizer, params, seed: int = 0):
    """A closure computing a smooth loss of the parameters (sparse gradients for optimizers that
    take only sparse ones)."""
    generator = torch.Generator().manual_seed(seed + 1000)
    targets = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]

    def closure():
        optimizer.zero_grad()
        loss = sum(((p - t) ** 2).sum() + (p**4).mean() for p, t in zip(params, targets, strict=True))
        loss.backward()
        if info.only_supports_sparse_grads:
            for p in params:
                p.grad = p.grad.to_sparse()
        return loss

    return closure


def params_for(info, optim_input, seed: int = 0, dtype=DTYPE):
    """The parameters for one OptimizerInput: ours, arranged in the input's groups if it has any."""
    tensors = make_params(info, seed, dtype)
    if optim_input.params is None:
        return tensors, tensors
    return tensors, optim_input.params


def error_inputs(info):
    return info.optim_error_inputs_func(device="cpu", dtype=DTYPE)


CONSTRUCTION = OptimizerErrorEnum.CONSTRUCTION_ERROR
ALL = optim_db
