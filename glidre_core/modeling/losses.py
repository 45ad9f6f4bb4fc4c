"""Losses over (pair x label) logits. Unknown names are an error, never a silent fallback."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glidre_core.config import LOSS_NAMES


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Element-wise sigmoid focal loss with explicit alpha (positive weight) and gamma.

    FL = -alpha * y * (1-p)^gamma * log p - (1-alpha) * (1-y) * p^gamma * log(1-p)
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * ce


def adaptive_threshold_loss(logits: torch.Tensor, threshold_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ATLOP's adaptive-threshold loss per pair. ``threshold_logits``: [P] learned TH class.

    Positives must score above TH (softmax over positives + TH); TH must score above every
    negative (softmax over negatives + TH).
    """
    full = torch.cat([threshold_logits.unsqueeze(-1), logits], -1)  # [P, 1+R]
    pos = torch.cat([torch.zeros_like(targets[:, :1]), targets], -1)
    neg = 1 - pos
    neg[:, 0] = 0  # TH itself is neither
    # Part 1: positives vs TH
    logit1 = full.masked_fill(neg.bool(), float("-inf"))
    # masked_fill, not a product: masked entries are -inf and -inf * 0 is NaN
    loss1 = -F.log_softmax(logit1, dim=-1).masked_fill(~pos.bool(), 0.0).sum(-1)
    # Part 2: TH vs negatives (the TH column is never masked)
    logit2 = full.masked_fill(pos.bool(), float("-inf"))
    loss2 = -F.log_softmax(logit2, dim=-1)[:, 0]
    return loss1 + loss2


def pair_losses(
    name: str,
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float = 0.8,
    gamma: float = 2.0,
    threshold_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair loss ``[P]`` (summed over labels) of ``[P, R]`` logits against 0/1 targets."""
    targets = targets.float()
    logits = logits.float()
    if name == "focal":
        return focal_loss(logits, targets, alpha, gamma).sum(-1)
    if name == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)
    if name == "adaptive_threshold":
        if threshold_logits is None:
            raise ValueError("adaptive_threshold loss needs threshold logits")
        return adaptive_threshold_loss(logits, threshold_logits.float(), targets)
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSS_NAMES)}")


def relation_loss(
    name: str,
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float = 0.8,
    gamma: float = 2.0,
    threshold_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over labels, mean over pairs (one document's relation loss)."""
    if logits.numel() == 0:
        return logits.sum()
    return pair_losses(name, logits, targets, alpha=alpha, gamma=gamma, threshold_logits=threshold_logits).mean()


def span_losses(
    name: str, logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.8, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise entity-span loss (same shape as ``logits``). ``focal`` down-weights the many
    easy negative spans (a document has ~10 candidate spans per word and a handful of mentions)."""
    targets = targets.float()
    if name == "focal":
        return focal_loss(logits.float(), targets, alpha, gamma)
    if name == "bce":
        return F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    raise ValueError(f"unknown span loss {name!r}; expected 'focal' or 'bce'")


def span_loss(
    name: str, logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.8, gamma: float = 2.0
) -> torch.Tensor:
    """Entity-span loss over ``[S, T]`` (span x entity type) logits: sum over types, mean over
    candidate spans, like :func:`relation_loss`."""
    if logits.numel() == 0:
        return logits.sum()
    return span_losses(name, logits, targets, alpha=alpha, gamma=gamma).sum(-1).mean()
