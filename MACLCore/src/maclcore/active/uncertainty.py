"""Predictive uncertainty of a segmentation network, per pixel and per slice.

The model sees each slice four times, turned by 0, 90, 180 and 270 degrees (exact on the square padded
slices, and within the training augmentation's full-circle rotations, unlike flips, which mirror the
anatomy); the probabilities are turned back and averaged. Two quantities follow:

* *uncertainty*: the entropy of the averaged probabilities, normalised by log(C) to [0, 1] per pixel
  (total predictive uncertainty: high where the model hesitates between classes *or* where the turned
  copies disagree);
* *disagreement*: the averaged entropy subtracted from it (the mutual information between the prediction
  and the turn, as in BALD): the part due to the copies disagreeing.

A slice's value is the **sum** over the pixels of its own extent (padding excluded), times the pixel area:
an "uncertain area". Slices are resampled to the model's fixed spacing, so the area is in physical units
and does not shrink when the field of view grows, as a mean over all pixels would (background, confidently
predicted, adds nearly nothing to the sum).
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch

EPS = 1e-12
MAX_TURNS = 4


def normalised_entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy of the distributions along ``dim``, divided by log(C): 0 (certain) .. 1 (uniform)."""
    classes = probs.shape[dim]
    if classes < 2:
        raise ValueError(f"need at least 2 classes along dim {dim}, got {classes}")
    return -(probs * probs.clamp_min(EPS).log()).sum(dim) / math.log(classes)


def turned(images: torch.Tensor, quarter_turns: int) -> torch.Tensor:
    """``images`` (N, C, S, S) rotated by ``quarter_turns`` x 90 degrees in the slice plane."""
    return torch.rot90(images, quarter_turns, dims=(-2, -1))


def check_turns(turns: int) -> int:
    if turns not in (1, 2, 4):
        raise ValueError(f"test-time rotations must be 1, 2 or 4, got {turns}")
    return turns


def turn_angles(turns: int) -> List[int]:
    """Quarter turns used for ``turns`` copies: 1 -> [0], 2 -> [0, 2] (0 and 180 degrees), 4 -> [0, 1, 2, 3]."""
    return list(range(0, MAX_TURNS, MAX_TURNS // check_turns(turns)))


def ensemble_entropies(members: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(total, disagreement) per pixel from ``members`` (T, N, C, H, W) of probabilities.

    total = H(mean_t p_t) / log C; disagreement = total - mean_t H(p_t) / log C (>= 0 up to rounding).
    """
    total = normalised_entropy(members.mean(0), dim=1)
    expected = normalised_entropy(members, dim=2).mean(0)
    return total, (total - expected).clamp_min(0)


def area_per_slice(pixel_map: torch.Tensor, mask: torch.Tensor, pixel_area: float) -> torch.Tensor:
    """Sum of a (N, H, W) map over ``mask`` (H, W) per slice, times the area of a pixel."""
    return (pixel_map * mask).flatten(1).sum(1) * pixel_area
