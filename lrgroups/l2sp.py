"""L2-SP: weight decay toward the starting point (the pretrained weights) instead of toward zero.

Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional Networks"
(ICML 2018) regularise fine-tuning with ``alpha/2 * ||w_S - w0_S||^2 + beta/2 * ||w_new||^2``: the
pretrained part ``S`` is pulled toward its starting point ``w0``, the new layers (the head) toward
zero. :class:`L2SP` applies it decoupled from the gradient, as AdamW decouples weight decay
(Loshchilov & Hutter 2019), before each optimizer step, with each group's current lr:

* anchored parameters: ``p <- p - lr * alpha * (p - p0)``
* the others: ``p <- p * (1 - lr * beta)`` (AdamW's weight decay with ``weight_decay=beta``)

With plain SGD this is exactly the paper's penalty added to the loss. Like torch's optimizers it
skips parameters whose ``.grad`` is ``None`` (frozen ones, or ones without a gradient this step).

Example:
    >>> import torch, torch.nn as nn, lrgroups
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=0.0)
    >>> l2sp = lrgroups.L2SP(model, opt, alpha=0.1, beta=0.01)   # backbone -> start, head -> 0
    >>> model(torch.randn(3, 4)).sum().backward(); opt.step(); opt.zero_grad()
    >>> sorted(l2sp.state_dict()["anchors"])
    ['0.bias', '0.weight']
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import torch
import torch.nn as nn

from .depth import describe
from .rules import Selector

__all__ = ["L2SP"]


class L2SP:
    """Decoupled L2-SP on any torch optimizer, through its step pre-hook (removable).

    Args:
        model: the model whose parameters ``optimizer`` updates (names, head and depths come from it).
        optimizer: any ``torch.optim.Optimizer``, :class:`~lrgroups.LayerwiseOptimizer` included
            (parameters it unfreezes later are handled).
        alpha: strength toward the starting point for anchored parameters (per unit lr, per step).
        beta: strength toward zero for the others.
        anchor: which parameters are pulled toward their starting point: a glob over names or a
            :class:`~lrgroups.Selector`; default every parameter outside the heads
            (:attr:`lrgroups.ParamInfo.is_head`: the heads the data flow shows, as :func:`lrgroups.head`
            selects them). Use ``"*"`` when the source head is kept.

    The starting point ``p0`` of an anchored parameter is copied when this object is built if the
    parameter is trainable then, otherwise the first time it is about to be updated (a frozen
    parameter is untouched by the optimizer, so that is still its pretrained value, and frozen
    parameters cost no copy). Build L2SP on the pretrained model, before any step.

    Raises:
        ValueError: ``alpha`` or ``beta`` negative or not finite; ``anchor`` matches nothing; the
            optimizer holds a parameter that is not ``model``'s.

    Warns:
        UserWarning: a param group has ``weight_decay > 0`` (that decay toward zero applies too;
            AdamW's default is 0.01: pass ``weight_decay=0``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        alpha: float,
        beta: float = 0.0,
        anchor: str | Selector | None = None,
    ) -> None:
        self.alpha, self.beta = self.check_strengths(alpha, beta)
        if isinstance(anchor, str):
            anchor = Selector(pattern=anchor)
        selector = anchor if anchor is not None else Selector(where=lambda info: not info.is_head)
        infos = describe(model)
        self._names = {id(info.param): info.name for info in infos}
        self._params = {info.name: info.param for info in infos}
        self._anchored = {id(info.param) for info in infos if selector.matches(info)}
        if not self._anchored:
            raise ValueError(f"anchor {selector.criteria()} matches no parameter of {type(model).__name__}")
        foreign = [p for group in optimizer.param_groups for p in group["params"] if id(p) not in self._names]
        if foreign:
            raise ValueError(f"the optimizer holds {len(foreign)} parameter(s) that are not the model's")
        decayed = [i for i, group in enumerate(optimizer.param_groups) if group.get("weight_decay", 0)]
        if decayed:
            warnings.warn(
                f"param groups {decayed} have weight_decay > 0, which decays toward zero on top of L2-SP; "
                "pass weight_decay=0 to the optimizer", stacklevel=2,
            )
        self.optimizer = optimizer
        self.anchors: dict[str, torch.Tensor] = {}
        for info in infos:
            if id(info.param) in self._anchored and info.param.requires_grad:
                self.anchors[info.name] = info.param.detach().clone()
        self._handle = optimizer.register_step_pre_hook(self._pre_step)

    @staticmethod
    def check_strengths(alpha: float, beta: float) -> tuple[float, float]:
        """``(alpha, beta)`` as floats; raises ``ValueError`` unless both are finite and >= 0."""
        for what, value in (("alpha", alpha), ("beta", beta)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
        return float(alpha), float(beta)

    @torch.no_grad()
    def _pre_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        for group in optimizer.param_groups:
            lr = float(group["lr"])
            for param in group["params"]:
                if param.grad is None:
                    continue
                if id(param) in self._anchored:
                    if self.alpha:
                        name = self._names[id(param)]
                        if name not in self.anchors:  # first update: still the pretrained value
                            self.anchors[name] = param.detach().clone()
                        param.add_(param - self.anchors[name], alpha=-lr * self.alpha)
                elif self.beta:
                    param.mul_(1 - lr * self.beta)

    def remove(self) -> None:
        """Remove the hook: the optimizer steps without L2-SP from now on."""
        self._handle.remove()

    def state_dict(self) -> dict[str, Any]:
        """The starting points copied so far, by parameter name; loads with ``weights_only=True``."""
        return {"anchors": dict(self.anchors)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take the starting points of a checkpoint (for a resumed run: the pretrained values, not
        the current ones). Raises ``ValueError`` for names that are not anchored parameters here."""
        anchored = {name for name, param in self._params.items() if id(param) in self._anchored}
        unknown = sorted(set(state["anchors"]) - anchored)
        if unknown:
            raise ValueError(f"anchors for parameters that are not anchored here: {', '.join(unknown[:10])}")
        self.anchors = {
            name: value.to(device=self._params[name].device, dtype=self._params[name].dtype, copy=True)
            for name, value in state["anchors"].items()
        }
