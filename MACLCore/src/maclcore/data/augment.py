"""Random augmentation of a whole batch at once, on the batch's device.

Geometry (the paper's): rotation, translation and scaling. One affine matrix per sample is drawn, then a
single ``affine_grid`` + ``grid_sample`` call warps the batch: bilinear for images, nearest-neighbour for
label maps, with the same matrices for both. We use torch's own ops rather than kornia: for pure affine
warps kornia calls the same two kernels, so it would add a dependency without adding speed.

Intensity (our addition, for MRI's varying contrast): a random gamma and gain per sample, applied to the
[0, 1]-normalised image only.
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

    # Full-circle rotation: short-axis stacks come in any in-plane orientation (ACDC's range over ~180
    # degrees), and a few labelled cases cannot show them all. Scale covers hearts of different sizes and
    # files whose spacing is only nominal.
    rotation: float = 180.0  # degrees, in [-rotation, rotation]
    translation: float = 0.1  # fraction of the image size, in [-translation, translation] per axis
    scale: Tuple[float, float] = (0.75, 1.33)  # zoom factor range (log-uniform)
    gamma: Tuple[float, float] = (0.7, 1.5)  # intensity exponent range (1, 1: off)
    gain: Tuple[float, float] = (0.9, 1.1)  # intensity factor range (1, 1: off)
    enabled: bool = True
    # Mirror each axis with probability 1/2 (short-axis slices come in either handedness). Finetuning turns
    # it on (its default recipe, benchmarks/results/recipe_cpu); pretraining's two views keep it off.
    flip: bool = False

    def __post_init__(self) -> None:
        if self.rotation < 0 or self.translation < 0:
            raise ConfigError("augmentation", "rotation and translation ranges must be >= 0")
        for name in ("scale", "gamma", "gain"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ConfigError(f"augmentation.{name}", f"must satisfy 0 < low <= high, got {(low, high)}")


def _log_uniform(u: torch.Tensor, bounds: Tuple[float, float]) -> torch.Tensor:
    """Map uniform [0, 1) draws into [low, high], uniform in log scale (x and 1/x equally likely)."""
    low, high = bounds
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def random_affines(count: int, config: AugmentationConfig, generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """(count, 2, 3) matrices for ``affine_grid``: output pixel -> input pixel, in normalised coordinates."""
    if not config.enabled:
        eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=device)
        return eye.expand(count, 2, 3).contiguous()
    draws = torch.rand(count, 4, generator=generator, device=generator.device).to(device)
    angle = (2 * draws[:, 0] - 1) * math.radians(config.rotation)
    zoom = _log_uniform(draws[:, 1], config.scale)
    shift = (2 * draws[:, 2:] - 1) * (2 * config.translation)  # normalised coords span 2 per image size
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    if config.flip:  # drawn after the affine, so runs without flips draw exactly what they drew before
        signs = torch.where(torch.rand(count, 2, generator=generator, device=generator.device).to(device) < 0.5,
                            -1.0, 1.0)
        theta = torch.cat([theta[:, :, :2] * signs[:, None, :], theta[:, :, 2:]], 2)
    return theta


def warp(batch: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear",
         size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Warp an (N, C, H, W) batch by per-sample affines; ``size`` resamples to another output size."""
    height, width = size if size is not None else batch.shape[-2:]
    grid = F.affine_grid(theta.to(batch.dtype), [batch.shape[0], batch.shape[1], height, width], align_corners=False)
    return F.grid_sample(batch, grid, mode=mode, padding_mode="zeros", align_corners=False)


def random_intensity(count: int, config: AugmentationConfig, generator: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    """(count, 2) per-sample (gamma, gain); (1, 1) when augmentation is off."""
    if not config.enabled:
        return torch.ones(count, 2, device=device)
    draws = torch.rand(count, 2, generator=generator, device=generator.device).to(device)
    return torch.stack([_log_uniform(draws[:, 0], config.gamma), _log_uniform(draws[:, 1], config.gain)], 1)


def adjust_intensity(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """x -> gain * x ** gamma per sample, for images in [0, 1] of shape (N, C, H, W)."""
    gamma, gain = params[:, 0, None, None, None], params[:, 1, None, None, None]
    return images.clamp(min=0).pow(gamma) * gain


@dataclass(frozen=True)
class Augmentation:
    """Per-sample random parameters: affine matrices (N, 2, 3) and intensity (gamma, gain) pairs (N, 2)."""

    theta: torch.Tensor
    intensity: torch.Tensor


def draw_augmentation(total: int, rows: torch.Tensor, config: AugmentationConfig, generator: torch.Generator,
                      device: torch.device) -> Augmentation:
    """Draw parameters for ``total`` samples and keep ``rows``: every process of a distributed run draws the
    same global set and takes its own part, so sample g is augmented identically on 1 or P processes."""
    theta = random_affines(total, config, generator, device)
    intensity = random_intensity(total, config, generator, device)
    return Augmentation(theta=theta[rows], intensity=intensity[rows])


def augment_batch(images: torch.Tensor, labels: Optional[torch.Tensor], augmentation: Augmentation,
                  size: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Warp images (N, 1, H, W) bilinearly and labels (N, H, W) by nearest neighbour with the same affines
    (to ``size`` pixels: crops); then adjust the images' intensity."""
    warped = adjust_intensity(warp(images, augmentation.theta, "bilinear", size), augmentation.intensity)
    if labels is None:
        return warped, None
    return warped, warp(labels[:, None].float(), augmentation.theta, "nearest", size)[:, 0].to(labels.dtype)
