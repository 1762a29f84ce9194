"""Linear probes in closed form: the features a model's head receives (:func:`head_features`), an
L2-regularised multinomial logistic regression fitted on them (:func:`fit_linear_probe`, LP-FT's first
stage, Kumar et al. 2022, and the usual linear-evaluation protocol), and the fitted probe written
into the head (:func:`set_linear_head`). :func:`lrgroups.recipes.lp_ft` uses them; so can any loop.

Example:
    >>> import torch, torch.nn as nn
    >>> from lrgroups.probe import fit_linear_probe, head_features, set_linear_head
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> inputs, labels = torch.randn(60, 4), torch.arange(60) % 3
    >>> set_linear_head(model[2], *fit_linear_probe(head_features(model, inputs), labels, C=0.5))
    >>> model(inputs).shape
    torch.Size([60, 3])
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._util import kept_training_modes
from .depth import find_head, unwrap_model

__all__ = ["fit_linear_probe", "head_features", "set_linear_head"]


def head_features(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """What the model's head receives for ``inputs``: the features a linear probe is fitted on.

    The model runs in eval mode under ``torch.no_grad()`` (its modes are put back afterwards); a
    forward pre-hook on the head (:func:`lrgroups.depth.find_head`) records its input.

    Args:
        model: a classifier whose head is found by :func:`~lrgroups.depth.find_head`.
        inputs: ``(N, ...)`` model inputs, on the model's device.
        batch_size: inputs per forward pass.

    Returns:
        ``(N, D)`` features (flattened after the batch dimension), on the model's device.

    Raises:
        ValueError: the model has no head, ``inputs`` is empty or ``batch_size < 1``.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> head_features(model, torch.randn(10, 4)).shape
        torch.Size([10, 8])
    """
    head = find_head(model)
    if head is None:
        raise ValueError(f"{type(unwrap_model(model)).__name__} has no head (no classifier or nn.Linear) to probe")
    if len(inputs) == 0 or batch_size < 1:
        raise ValueError(f"need inputs (got {len(inputs)}) and batch_size >= 1 (got {batch_size})")
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].flatten(1)))
    try:
        with kept_training_modes(model), torch.no_grad():
            model.eval()
            for start in range(0, len(inputs), batch_size):
                model(inputs[start:start + batch_size])
    finally:
        hook.remove()
    return torch.cat(captured)


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, *, C: float = 1.0, max_iter: int = 1000,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear probe in closed form: L2-regularised multinomial logistic regression (scikit-learn's
    ``LogisticRegression(C=C)``, lbfgs, fitted to convergence), as LP-FT's first stage (Kumar et al.
    2022) and the usual linear evaluation protocol (CLIP, SimCLR) fit it.

    Args:
        features: ``(N, D)`` float features (e.g. from :func:`head_features`).
        labels: ``(N,)`` integer class indices in ``0 .. K-1``; every class must occur.
        C: inverse L2 regularisation strength (scikit-learn's ``C``; choose it on validation data).
        max_iter: lbfgs iterations (scikit-learn warns with ``ConvergenceWarning`` if not converged).
        num_classes: ``K``; default ``labels.max() + 1``.

    Returns:
        ``(weight (K, D), bias (K,))`` in ``features``' dtype and device: the logits are
        ``features @ weight.T + bias``. With ``K = 2`` scikit-learn fits one logistic regression
        ``(w, b)``; it is returned as the equivalent two-logit head ``[-w/2, w/2], [-b/2, b/2]``.

    Raises:
        ImportError: scikit-learn is missing (``pip install lrgroups[probe]``).
        ValueError: shapes disagree, features are not finite, a class in ``0 .. K-1`` has no
            example, fewer than 2 classes, or ``C <= 0``.

    Example:
        >>> import torch
        >>> features = torch.randn(60, 5); labels = torch.arange(60) % 3
        >>> weight, bias = fit_linear_probe(features, labels, C=0.5)
        >>> weight.shape, bias.shape
        (torch.Size([3, 5]), torch.Size([3]))
    """
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("fit_linear_probe needs scikit-learn: pip install 'lrgroups[probe]'") from error
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise ValueError(f"need features (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}")
    if not features.is_floating_point() or not torch.isfinite(features).all():
        raise ValueError("features must be finite floating-point values")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C!r}")
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    present = set(labels.unique().tolist())
    absent = [c for c in range(k) if c not in present]
    outside = sorted(present - set(range(k)))
    if k < 2 or absent or outside:
        raise ValueError(f"labels must cover classes 0..{k - 1} (K >= 2): missing {absent[:10]}, outside {outside[:10]}")
    model = LogisticRegression(C=C, max_iter=max_iter)
    model.fit(features.detach().cpu().double().numpy(), labels.detach().cpu().numpy())
    weight = torch.from_numpy(model.coef_)
    bias = torch.from_numpy(model.intercept_)
    if k == 2:
        weight, bias = torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
    return weight.to(features), bias.to(features)


def set_linear_head(head: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Write a fitted probe into ``head`` (in place, no autograd): ``head.weight = weight`` (K, D),
    ``head.bias = bias`` (K,), cast to the head's dtype and device.

    Raises:
        TypeError: ``head`` is not an ``nn.Linear`` with a bias.
        ValueError: the shapes differ from the head's.

    Example:
        >>> import torch, torch.nn as nn
        >>> head = nn.Linear(5, 3)
        >>> set_linear_head(head, torch.ones(3, 5), torch.zeros(3)); head.weight.sum().item()
        15.0
    """
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise TypeError(f"set_linear_head needs an nn.Linear with a bias, got {head!r}")
    if tuple(weight.shape) != tuple(head.weight.shape) or tuple(bias.shape) != tuple(head.bias.shape):
        raise ValueError(
            f"probe of shape {tuple(weight.shape)}/{tuple(bias.shape)} does not fit the head's "
            f"{tuple(head.weight.shape)}/{tuple(head.bias.shape)} (out_features = number of classes)"
        )
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
