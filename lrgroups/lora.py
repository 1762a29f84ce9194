"""LoRA+ as rules: the LoRA ``B`` matrices at ``lr_ratio`` times the lr of the ``A`` matrices.

LoRA+ (Hayou, Ghosh & Yu, ICML 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models",
arXiv:2402.12354; reference code ``nikhil-ghosh-berkeley/loraplus``) trains the adapter's ``B``
matrix with a larger learning rate than its ``A`` matrix: ``lr_B = lr_ratio * lr_A`` (the paper
suggests ``lr_ratio`` of about 16, or 2^4). peft's helper ``peft.optimizers.create_loraplus_optimizer``
builds an optimizer of its own, so it cannot compose with layer decay, frozen norms or a schedule;
here LoRA+ is a rule (a multiplier), so it composes with every other rule: under layer decay each
adapter's ``B`` is ``lr_ratio`` times its own ``A``, at whatever depth the adapted layer has.

Example:
    >>> import peft, torch, torch.nn as nn, lrgroups
    >>> from lrgroups.lora import lora_plus
    >>> model = peft.get_peft_model(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)),
    ...                             peft.LoraConfig(target_modules=["0", "2"], r=2))
    >>> opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-4,
    ...                                   rules=[lrgroups.layer_decay(0.5), *lora_plus(16)])
    >>> lrs = opt.explain().set_index("name")["lr"]
    >>> [float(lrs[name]) for name in ("0.lora_A.default.weight", "0.lora_B.default.weight",
    ...                                  "2.lora_A.default.weight", "2.lora_B.default.weight")]
    [5e-05, 0.0008, 0.0001, 0.0016]
"""

from __future__ import annotations

import math

from .rules import Rule

__all__ = ["lora_plus", "LORA_B", "LORA_EMBEDDING"]

#: A LoRA ``B`` matrix by peft's names: ``<layer>.lora_B.<adapter>.weight`` (Linear, Conv) and
#: ``<layer>.lora_embedding_B.<adapter>`` (Embedding).
LORA_B = r"(^|\.)lora_(embedding_)?B(\.|$)"
#: The adapter matrices of a LoRA-wrapped embedding: ``<layer>.lora_embedding_A/B.<adapter>``.
LORA_EMBEDDING = r"(^|\.)lora_embedding_[AB](\.|$)"


def lora_plus(lr_ratio: float = 16.0, *, vectors: bool = False, embedding_lr: float | None = None) -> list[Rule]:
    """LoRA+'s rules: every LoRA ``B`` matrix at ``lr_ratio`` times the running lr (Hayou et al., 2024).

    The rules multiply: whatever lr earlier rules gave a parameter (layer decay, a head rule), its
    ``B`` matrix gets ``lr_ratio`` times that. Put them after the rules they should scale (a later
    absolute ``lr=`` rule replaces the product). Parameter names are peft's (``lora_B``,
    ``lora_embedding_B``), with or without peft's ``base_model.model.`` prefix.

    With ``vectors=True, embedding_lr=1e-6`` the lrs equal those of peft's
    ``create_loraplus_optimizer(model, cls, lr=lr, loraplus_lr_ratio=lr_ratio)``, which also puts
    every trainable 1-D tensor (biases, norm weights, DoRA magnitudes) at the ``B`` rate and the
    adapters of LoRA-wrapped embeddings at an absolute ``1e-6`` (add :func:`~lrgroups.no_weight_decay`
    for peft's weight-decay split of the ``B`` group).

    Args:
        lr_ratio: ``lr_B / lr_A``, finite and > 0 (the paper: >= 1, about 16 for LLaMA / RoBERTa).
        vectors: also multiply every 1-D tensor by ``lr_ratio``, as peft's helper does.
        embedding_lr: an absolute lr (> 0) for both adapter matrices of LoRA-wrapped embeddings, as
            peft's ``loraplus_lr_embedding`` (default there ``1e-6``); ``None`` treats them as any
            other adapter (``lora_embedding_B`` at the ratio).

    Returns:
        The rules, a list to splice into ``rules=``: ``rules=[layer_decay(0.8), *lora_plus(16)]``.

    Raises:
        ValueError: ``lr_ratio`` or ``embedding_lr`` not finite and > 0.
        lrgroups.NoMatchError: at plan time, the model has no LoRA ``B`` matrix (no adapters, or
            adapters of another method).
    """
    if not (isinstance(lr_ratio, (int, float)) and math.isfinite(lr_ratio) and lr_ratio > 0):
        raise ValueError(f"lr_ratio must be finite and > 0, got {lr_ratio!r}")
    if embedding_lr is not None and not (math.isfinite(embedding_lr) and embedding_lr > 0):
        raise ValueError(f"embedding_lr must be finite and > 0 (or None), got {embedding_lr!r}")
    rules = [Rule(regex=LORA_B, lr_mult=lr_ratio, name=f"lora_plus(B x{lr_ratio})")]
    if vectors:
        rules.append(
            Rule(ndim=1, lr_mult=lr_ratio, allow_empty=True, name=f"lora_plus(1-D x{lr_ratio})")
        )
    if embedding_lr is not None:
        rules.append(
            Rule(regex=LORA_EMBEDDING, lr=embedding_lr, allow_empty=True, name=f"lora_plus(embedding lr {embedding_lr})")
        )
    return rules
