"""Supervised segmentation losses: cross-entropy, optionally plus soft Dice over the foreground classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice of the foreground classes, pooled over the batch (stable for absent classes).

    Args:
        logits: (N, C, H, W) raw scores.
        target: (N, H, W) integer labels in 0..C-1.
    """
    probs = logits.float().softmax(1)[:, 1:]
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * intersection + eps) / (total + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.0) -> torch.Tensor:
    """Cross-entropy (as in the paper) plus ``dice_weight`` x soft Dice loss; computed in float32."""
    loss = F.cross_entropy(logits.float(), target.long())
    if dice_weight:
        loss = loss + dice_weight * soft_dice_loss(logits, target)
    return loss
