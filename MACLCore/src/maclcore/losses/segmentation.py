"""Supervised segmentation losses: cross-entropy, optionally plus soft Dice over the foreground classes."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5,
                   valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1 - mean soft Dice of the foreground classes, pooled over the batch (stable for absent classes).

    Args:
        logits: (N, C, H, W) raw scores.
        target: (N, H, W) integer labels in 0..C-1 (anything where ``valid`` is False).
        valid: (N, H, W) bool, the pixels that count (None: all).
    """
    probs = logits.float().softmax(1)[:, 1:]
    if valid is not None:
        target = torch.where(valid, target.long(), 0)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    if valid is not None:
        probs, onehot = probs * valid[:, None], onehot * valid[:, None]
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * intersection + eps) / (total + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.0,
                      ignore_index: Optional[int] = None) -> torch.Tensor:
    """Cross-entropy (as in the paper) plus ``dice_weight`` x soft Dice loss; computed in float32.
    Pixels labelled ``ignore_index`` count in neither term (0 when every pixel is ignored)."""
    if ignore_index is None:
        loss = F.cross_entropy(logits.float(), target.long())
        return loss + dice_weight * soft_dice_loss(logits, target) if dice_weight else loss
    valid = target != ignore_index
    ce = F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index, reduction="sum")
    loss = ce / valid.sum().clamp(min=1)  # the mean over kept pixels, 0 when none is kept
    return loss + dice_weight * soft_dice_loss(logits, target, valid=valid) if dice_weight else loss
