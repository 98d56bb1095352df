"""Where a volume lies in the encoder's feature space.

A slice's embedding is the mean of the U-Net's centre features (1/16 resolution, the widest layer) over
the cells that cover the slice's own extent (padding is left out, so the field of view does not move the
embedding); a volume's is the mean over its slices. Two volumes with the same content get the same
embedding; an exact copy gets exactly the same one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def feature_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) image mask -> (size, size) mask of the feature cells that overlap the image."""
    return F.adaptive_max_pool2d(mask[None, None].float(), size)[0, 0]


def masked_mean_features(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, D, h, w) features averaged over the cells of ``mask`` (h, w): (N, D)."""
    weight = mask.to(features.dtype)
    return (features * weight).sum((-2, -1)) / weight.sum().clamp_min(1.0)
