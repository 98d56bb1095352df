"""Crops around the labelled structures: what a training step sees when a few cases must teach a model.

A padded slice is mostly background (a 128² slice at 3.6 mm is ~90% background), and a small structure such
as the right ventricle is missed when a step rarely shows it. :class:`CropSampler` draws, per sample, a crop
centre: with probability ``foreground`` a random voxel of a class chosen uniformly among the labelled
classes (class-aware: every class is equally often the centre, however small), else a uniform random point.
The crop is folded into the augmentation's affine warp (:func:`crop_affines`), so cropping, rotation,
scaling and translation cost one ``grid_sample`` of the crop only. Inference still runs on the whole slice
(the U-Net is fully convolutional): only training sees crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class CropConfig:
    """Training crops. ``size`` None trains on whole slices; ``foreground`` is the share of crops centred on
    a labelled voxel (class-aware); the rest are centred uniformly at random."""

    size: Optional[int] = None
    foreground: float = 0.67

    def __post_init__(self) -> None:
        if self.size is not None and (self.size < 16 or self.size % 16):
            raise ConfigError("crop", f"must be a positive multiple of 16 pixels, got {self.size}")
        if not 0 <= self.foreground <= 1:
            raise ConfigError("foreground", f"must be in [0, 1], got {self.foreground}")


class CropSampler:
    """Crop centres for slices with label maps ``labels`` (N, S, S), in normalised coordinates [-1, 1].

    The labelled voxels of each class are indexed once (slice, row, column); a draw picks a class among
    those present in the training set, then one of its voxels, and also says which slice that is, so a
    foreground sample brings its own slice (class-aware slice sampling).
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, config: CropConfig) -> None:
        self.config, self.size = config, int(labels.shape[-1])
        self.voxels = []
        for label in range(1, num_classes):
            where = torch.nonzero(torch.as_tensor(labels) == label)  # (V, 3): slice, row, column
            if where.shape[0]:
                self.voxels.append(where)

    @property
    def classes(self) -> int:
        return len(self.voxels)

    def draw(self, slices: torch.Tensor, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """For the given slice indices (B,), the slices to use (foreground draws replace theirs) and the crop
        centres (B, 2) as (x, y) in normalised coordinates of the slice."""
        count = slices.shape[0]
        device = generator.device
        u = torch.rand(count, 4, generator=generator, device=device).cpu()
        slices = slices.cpu().clone()
        centres = (2 * u[:, 2:] - 1) * (1 - (self.config.size or self.size) / self.size)  # uniform, crop inside
        if self.classes:
            for i in torch.nonzero(u[:, 0] < self.config.foreground).flatten().tolist():
                voxels = self.voxels[min(int(u[i, 1] * self.classes), self.classes - 1)]
                pick = voxels[min(int(u[i, 2] * voxels.shape[0]), voxels.shape[0] - 1)]
                slices[i] = pick[0]
                row, column = float(pick[1]), float(pick[2])
                jitter = (u[i, 3] - 0.5) * 0.25 * (self.config.size or self.size)
                centres[i, 0] = (2 * (column + jitter + 0.5) / self.size) - 1
                centres[i, 1] = (2 * (row - jitter + 0.5) / self.size) - 1
        return slices, centres.clamp(-1, 1)


def crop_affines(theta: torch.Tensor, centres: torch.Tensor, crop: int, size: int) -> torch.Tensor:
    """Compose per-sample augmentation affines (N, 2, 3) with crops of ``crop`` pixels around ``centres``
    (N, 2) of ``size``-pixel slices: the crop is rotated/scaled about its own centre, then translated."""
    scale = crop / size
    out = theta.clone()
    out[:, :, :2] = theta[:, :, :2] * scale
    out[:, :, 2] = theta[:, :, 2] * scale + centres.to(theta)
    return out


def foreground_rate(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Per class (1..classes-1), the share of samples (N, H, W) in which that class appears."""
    return torch.stack([(labels == c).flatten(1).any(1).float().mean() for c in range(1, classes)])
