"""Random rotation, translation and scaling of a whole batch at once, on the batch's device.

One affine matrix per sample is drawn, then a single ``affine_grid`` + ``grid_sample`` call warps the
batch: bilinear for images, nearest-neighbour for label maps, with the same matrices for both. We use
torch's own ops rather than kornia: for pure affine warps kornia calls the same two kernels, so it would
add a dependency without adding speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError


@dataclass(frozen=True)
class AugmentationConfig:
    """Ranges of the random affine transform (uniform draws)."""

    rotation: float = 15.0  # degrees, in [-rotation, rotation]
    translation: float = 0.1  # fraction of the image size, in [-translation, translation] per axis
    scale: Tuple[float, float] = (0.85, 1.15)  # zoom factor range
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.rotation < 0 or self.translation < 0:
            raise ConfigError("augmentation: rotation and translation ranges must be >= 0")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"augmentation: scale range must satisfy 0 < low <= high, got {self.scale}")


def random_affines(count: int, config: AugmentationConfig, generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """(count, 2, 3) matrices for ``affine_grid``: output pixel -> input pixel, in normalised coordinates."""
    if not config.enabled:
        eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=device)
        return eye.expand(count, 2, 3).contiguous()
    draws = torch.rand(count, 4, generator=generator, device=generator.device).to(device)
    angle = (2 * draws[:, 0] - 1) * math.radians(config.rotation)
    low, high = config.scale
    # Uniform in log-scale, so zooming in and out by the same factor are equally likely.
    zoom = torch.exp(math.log(low) + draws[:, 1] * (math.log(high) - math.log(low)))
    shift = (2 * draws[:, 2:] - 1) * (2 * config.translation)  # normalised coords span 2 per image size
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def warp(batch: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear",
         size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Warp an (N, C, H, W) batch by per-sample affines; ``size`` resamples to another output size."""
    height, width = size if size is not None else batch.shape[-2:]
    grid = F.affine_grid(theta.to(batch.dtype), [batch.shape[0], batch.shape[1], height, width], align_corners=False)
    return F.grid_sample(batch, grid, mode=mode, padding_mode="zeros", align_corners=False)


def augment_batch(images: torch.Tensor, labels: Optional[torch.Tensor],
                  theta: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Warp images (N, 1, H, W) bilinearly and labels (N, H, W) by nearest neighbour, by the same affines."""
    warped = warp(images, theta, "bilinear")
    if labels is None:
        return warped, None
    return warped, warp(labels[:, None].float(), theta, "nearest")[:, 0].to(labels.dtype)
