"""Forgetting measured while training: how far each depth has moved from its starting weights, how
large each step is against the weights, and (given a few held-out source batches) the source loss.

The drift of the pretrained weights is what fine-tuning trades against the new task: WiSE-FT
(Wortsman et al., CVPR 2022) and LP-FT (Kumar et al., ICLR 2022) explain forgetting by how far the
features moved, L2-SP (Li et al., ICML 2018) penalises exactly ``||theta - theta_0||``, and the
update/weight ratio ``||delta theta|| / ||theta||`` is the per-layer step size LARS / LAMB (You et al.
2017, 2020) steer by. :class:`ForgettingMonitor` logs them per depth (or per param group) from the
optimizer's step hooks, for any loop; :mod:`lrgroups.integrations.lightning` and
:mod:`lrgroups.integrations.transformers` forward its values to their loggers.

Example:
    >>> import torch, torch.nn as nn, lrgroups
    >>> from lrgroups.monitor import ForgettingMonitor
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])
    >>> source = [(torch.randn(16, 4), torch.randint(0, 2, (16,)))]
    >>> monitor = ForgettingMonitor(opt, model, source_batches=source, source_every=5)
    >>> for step in range(10):
    ...     opt.zero_grad()
    ...     nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,))).backward()
    ...     opt.step()
    >>> sorted(monitor.latest())
    ['forgetting/distance/depth_0', 'forgetting/distance/depth_1', 'forgetting/source_accuracy', 'forgetting/source_loss', 'forgetting/update_ratio/depth_0', 'forgetting/update_ratio/depth_1']
    >>> monitor.frame().query("step == 10")[["key", "distance"]].shape
    (2, 2)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn

from .optimizer import LayerwiseOptimizer

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ForgettingMonitor", "source_loss"]

SourceFn = Callable[[nn.Module, Any], "float | torch.Tensor | Mapping[str, float | torch.Tensor]"]


def source_loss(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    """The default source metric: cross-entropy ``loss`` and ``accuracy`` of ``model(inputs)`` on an
    ``(inputs, labels)`` batch (labels: class indices, shape ``(N,)``; logits ``(N, C)``)."""
    inputs, labels = batch
    logits = model(inputs)
    return {"loss": nn.functional.cross_entropy(logits, labels),
            "accuracy": (logits.argmax(-1) == labels).float().mean()}


class ForgettingMonitor:
    """Per depth (or param group): the relative distance from the starting weights and the
    update/weight ratio, after every ``every``-th optimizer step; optionally the source loss.

    For the tensors of one key (a depth or a param group), after step ``t``:

    - ``distance = ||theta_t - theta_0|| / ||theta_0||`` (0 while they have not moved; ``nan`` when
      ``||theta_0|| = 0``), ``theta_0`` being the weights when the monitor was made;
    - ``update_ratio = ||theta_t - theta_{t-1}|| / ||theta_t||`` (the step just taken, against the
      weights; 0 for a frozen depth).

    Norms are over all the key's tensors together, frozen ones included (frozen tensors do not move,
    so a frozen depth shows 0). With ``source_batches`` the model is evaluated every ``source_every``
    steps (eval mode, no gradients, the modes put back) and ``source_<name>`` is each metric's mean.

    Cost: one copy of the managed weights (``theta_0``); on a measured step one more copy (the
    weights before the step) and a few norms per tensor. Unmeasured steps cost two Python calls,
    and nothing is hooked before the monitor is made (``docs/performance.md`` has the ratios).

    Args:
        optimizer: the :class:`~lrgroups.LayerwiseOptimizer` whose steps are watched.
        model: the model, needed for ``source_batches`` only.
        by: ``"depth"`` (``depth_<d>`` keys, the plan's depths) or ``"group"`` (``group_<i>``, indices
            into ``param_groups``).
        every: measure after every ``every``-th step (>= 1).
        source_batches: held-out source batches (a list; a DataLoader is read each time).
        source_fn: ``source_fn(model, batch)`` -> a number or ``{name: number}``; default
            :func:`source_loss` (cross-entropy loss and accuracy of ``(inputs, labels)``).
        source_every: evaluate the source every this many steps (default: every measured step).

    Raises:
        TypeError: ``optimizer`` is not a :class:`~lrgroups.LayerwiseOptimizer`.
        ValueError: a bad ``by``, ``every`` or ``source_every``, or ``source_batches`` without ``model``.
    """

    def __init__(
        self,
        optimizer: LayerwiseOptimizer,
        model: nn.Module | None = None,
        *,
        by: str = "depth",
        every: int = 1,
        source_batches: Iterable[Any] | None = None,
        source_fn: SourceFn = source_loss,
        source_every: int | None = None,
    ) -> None:
        if not isinstance(optimizer, LayerwiseOptimizer):
            raise TypeError(f"ForgettingMonitor watches a LayerwiseOptimizer; got {type(optimizer).__name__}")
        if by not in ("depth", "group"):
            raise ValueError(f"by must be 'depth' or 'group', got {by!r}")
        if every < 1 or (source_every is not None and source_every < 1):
            raise ValueError(f"every and source_every must be >= 1, got {every!r} and {source_every!r}")
        if source_batches is not None and model is None:
            raise ValueError("source_batches need the model to evaluate: pass model=")
        self.optimizer, self.model, self.by, self.every = optimizer, model, by, every
        self.source_batches, self.source_fn = source_batches, source_fn
        self.source_every = source_every or every
        depth = {row.name: row.depth for row in optimizer.plan}
        keys: dict[str, list[torch.Tensor]] = {}
        for name, param in optimizer.select().items():
            key = f"depth_{depth[name]}" if by == "depth" else f"group_{optimizer.group_of(name)}"
            keys.setdefault(key, []).append(param)
        self._keys = sorted(keys, key=lambda k: int(k.rsplit("_", 1)[1]))
        self._params = [keys[k] for k in self._keys]
        self._start = [[p.detach().clone() for p in params] for params in self._params]
        self._before: list[list[torch.Tensor]] | None = None
        self.steps = 0
        self.rows: list[dict[str, Any]] = []
        self.source: list[dict[str, float]] = []
        self._handles = [optimizer.register_step_pre_hook(self._pre_step),
                         optimizer.register_step_post_hook(self._post_step)]

    # ---------------------------------------------------------------- hooks
    def _pre_step(self, *args: Any) -> None:
        if (self.steps + 1) % self.every == 0:
            self._before = [torch._foreach_mul([p.detach() for p in params], 1.0) for params in self._params]

    def _post_step(self, *args: Any) -> None:
        self.steps += 1
        if self._before is not None:
            self._measure(self._before)
            self._before = None
        if self.source_batches is not None and self.steps % self.source_every == 0:
            self.source.append({"step": self.steps, **self.evaluate_source()})

    @torch.no_grad()
    def _measure(self, before: list[list[torch.Tensor]]) -> None:
        # Per key: ||theta - theta_0||, ||theta - theta_prev||, ||theta||, ||theta_0||, each the norm of the
        # per-tensor norms (foreach kernels; one host sync for all keys).
        norms = []
        for params, start, previous in zip(self._params, self._start, before, strict=True):
            norms.append(torch.stack([
                _norm(torch._foreach_sub(params, start)), _norm(torch._foreach_sub(params, previous)),
                _norm(params), _norm(start),
            ]))
        for key, (moved, update, now, origin) in zip(self._keys, torch.stack(norms).tolist(), strict=True):
            self.rows.append({
                "step": self.steps, "key": key,
                "distance": moved / origin if origin > 0 else (0.0 if moved == 0 else math.nan),
                "update_ratio": update / now if now > 0 else (0.0 if update == 0 else math.nan),
            })

    @torch.no_grad()
    def evaluate_source(self) -> dict[str, float]:
        """The source metrics now: each metric's mean over ``source_batches`` (keys ``source_<name>``;
        ``source_value`` for a metric that returns a number). The model runs in eval mode; every
        module's mode is put back.

        Raises:
            ValueError: no ``source_batches`` were given, or they are empty.
        """
        if self.source_batches is None:
            raise ValueError("no source_batches were given")
        assert self.model is not None
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        totals: dict[str, float] = {}
        count = 0
        try:
            for batch in self.source_batches:
                value = self.source_fn(self.model, batch)
                values = value if isinstance(value, Mapping) else {"value": value}
                for name, number in values.items():
                    totals[name] = totals.get(name, 0.0) + float(number)
                count += 1
        finally:
            for module, training in modes:
                module.training = training
        if count == 0:
            raise ValueError("source_batches is empty")
        return {f"source_{name}": total / count for name, total in totals.items()}

    # ---------------------------------------------------------------- results
    def frame(self) -> "pd.DataFrame":
        """Every measurement: one row per measured step and key (``step``, ``key``, ``distance``,
        ``update_ratio``), the source metrics joined on ``step`` where they were taken."""
        import pandas as pd

        frame = pd.DataFrame(self.rows, columns=["step", "key", "distance", "update_ratio"])
        if self.source:
            frame = frame.merge(pd.DataFrame(self.source), on="step", how="outer")
        return frame

    def latest(self, prefix: str = "forgetting/") -> dict[str, float]:
        """The last measurement of every key and the last source metrics, flat, for a logger:
        ``{prefix}distance/<key>``, ``{prefix}update_ratio/<key>``, ``{prefix}source_<name>``."""
        out: dict[str, float] = {}
        for row in self.rows[-len(self._keys):] if self.rows else []:
            out[f"{prefix}distance/{row['key']}"] = row["distance"]
            out[f"{prefix}update_ratio/{row['key']}"] = row["update_ratio"]
        if self.source:
            out.update({f"{prefix}{name}": value for name, value in self.source[-1].items() if name != "step"})
        return out

    def close(self) -> None:
        """Remove the step hooks (the measurements are kept)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "ForgettingMonitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of the tensors together (float32 or wider), as a 0-d tensor."""
    norms = torch._foreach_norm([t if t.is_floating_point() and t.element_size() >= 4 else t.float() for t in tensors])
    return torch.linalg.vector_norm(torch.stack([n.to(torch.float64) for n in norms]))
