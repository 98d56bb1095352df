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
from typing import Any, List, Optional, Tuple

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

    The labelled voxels of each class are indexed once (slice, row, column), reading ``labels`` in chunks
    so that streamed label maps work too; a draw picks a class among those present in the training set,
    then one of its voxels, and uses that voxel's slice (class-aware slice sampling). Vectorised over the
    batch: the only Python loop is over the classes.
    """

    CHUNK = 256  # slices read at once while indexing

    def __init__(self, labels: Any, num_classes: int, config: CropConfig) -> None:
        self.config, self.size = config, int(labels.shape[-1])
        found: List[List[torch.Tensor]] = [[] for _ in range(1, num_classes)]
        for start in range(0, int(labels.shape[0]), self.CHUNK):
            chunk = torch.as_tensor(labels[start:start + self.CHUNK])
            for label in range(1, num_classes):
                where = torch.nonzero(chunk == label).to(torch.int32)  # (V, 3): slice, row, column
                where[:, 0] += start
                found[label - 1].append(where)
        device = torch.as_tensor(labels[0:1]).device
        self.voxels = [torch.cat(parts).to(device) for parts in found if sum(p.shape[0] for p in parts)]

    @property
    def classes(self) -> int:
        return len(self.voxels)

    @property
    def crop(self) -> int:
        return self.config.size or self.size

    def draw(self, slices: torch.Tensor, generator: torch.Generator, rows: Optional[torch.Tensor] = None,
             total: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """For the slice indices ``slices`` (B,), the slices to use (foreground draws bring their own) and
        the crop centres (B, 2) as (x, y) in normalised coordinates of the slice.

        ``total`` draws are made and ``rows`` of them kept, so that every process of a distributed run
        draws the same global set and takes its own part (as the augmentation does).
        """
        count = slices.shape[0]
        rows = torch.arange(count) if rows is None else rows
        u = torch.rand(total or count, 6, generator=generator, device=generator.device)[rows.to(generator.device)]
        u = u.to(slices.device)
        centres = (2 * u[:, 2:4] - 1) * (1 - self.crop / self.size)  # uniform, the crop inside the slice
        if not self.classes:
            return slices, centres
        chosen = (u[:, 1] * self.classes).long().clamp(max=self.classes - 1)
        pick = torch.zeros(count, 3, dtype=torch.int32, device=slices.device)
        for label, voxels in enumerate(self.voxels):
            which = (u[:, 4] * voxels.shape[0]).long().clamp(max=voxels.shape[0] - 1)
            pick = torch.where((chosen == label)[:, None], voxels[which], pick)
        # The structure is not always at the crop's centre: shift by up to 1/8 of the crop each way.
        jitter = (u[:, 5] - 0.5) * 0.25 * self.crop
        around = torch.stack([2 * (pick[:, 2] + jitter + 0.5) / self.size - 1,
                              2 * (pick[:, 1] - jitter + 0.5) / self.size - 1], 1)
        foreground = u[:, 0] < self.config.foreground
        centres = torch.where(foreground[:, None], around, centres).clamp(-1, 1)
        return torch.where(foreground, pick[:, 0].to(slices.dtype), slices), centres


CROP_MM = 240.0  # default crop side: the largest ACDC heart spans ~145 mm, so a crop holds it with context


def crop_pixels(crop: Optional[int], spacing: float, size: int) -> Optional[int]:
    """The crop side in pixels for slices of ``size`` pixels at ``spacing`` mm: ``crop`` when given (0: no
    crops), else :data:`CROP_MM` rounded to a multiple of 16; None when the crop would hold the whole slice."""
    if crop is None:
        crop = max(32, int(round(CROP_MM / spacing / 16)) * 16)
    return crop if 0 < crop < size else None


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
