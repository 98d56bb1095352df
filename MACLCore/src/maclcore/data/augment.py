"""Random augmentation of a whole batch at once, on the batch's device.

Geometry (the paper's): rotation, translation and scaling. One affine matrix per sample is drawn, then a
single ``affine_grid`` + ``grid_sample`` call warps the batch: bilinear for images, nearest-neighbour for
label maps, with the same matrices for both. We use torch's own ops rather than kornia: for pure affine
warps kornia calls the same two kernels, so it would add a dependency without adding speed.

Intensity (our addition, for MRI's varying contrast): a random gamma and gain per sample, applied to the
[0, 1]-normalised image only; optionally (``contrast``, ``blur``) a contrast change about the sample's mean
and a Gaussian blur of random width, as nnU-Net's augmentation does, for scans sharper or softer than the
few labelled ones.
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
    contrast: Tuple[float, float] = (1.0, 1.0)  # factor about the sample's mean (log-uniform; 1, 1: off)
    blur: float = 0.0  # largest Gaussian blur sigma in pixels, applied to a third of the samples (0: off)

    def __post_init__(self) -> None:
        if self.rotation < 0 or self.translation < 0:
            raise ConfigError("augmentation", "rotation and translation ranges must be >= 0")
        if not 0 <= self.blur <= 1.5:
            raise ConfigError("augmentation.blur", f"must be in [0, 1.5] pixels, got {self.blur}")
        for name in ("scale", "gamma", "gain", "contrast"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ConfigError(f"augmentation.{name}", f"must satisfy 0 < low <= high, got {(low, high)}")

    @property
    def changes_contrast(self) -> bool:
        return self.enabled and tuple(self.contrast) != (1.0, 1.0)

    @property
    def blurs(self) -> bool:
        return self.enabled and self.blur > 0


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
    """(count, 4) per-sample (gamma, gain, contrast, blur sigma); (1, 1, 1, 0) when augmentation is off.
    Contrast and blur are drawn only when configured, so runs without them draw what they drew before."""
    if not config.enabled:
        return torch.tensor([1.0, 1.0, 1.0, 0.0], device=device).expand(count, 4).contiguous()
    draws = torch.rand(count, 2, generator=generator, device=generator.device).to(device)
    columns = [_log_uniform(draws[:, 0], config.gamma), _log_uniform(draws[:, 1], config.gain)]
    contrast, sigma = torch.ones(count, device=device), torch.zeros(count, device=device)
    if config.changes_contrast or config.blurs:
        more = torch.rand(count, 3, generator=generator, device=generator.device).to(device)
        contrast = _log_uniform(more[:, 0], config.contrast)
        low = min(0.5, config.blur)  # a third of the samples blurred, sigma uniform in [0.5, blur]
        sigma = torch.where(more[:, 1] < 1 / 3, low + more[:, 2] * (config.blur - low), sigma)
    return torch.stack(columns + [contrast, sigma], 1)


BLUR_RADIUS = 3  # taps each side: a 7-tap kernel holds a Gaussian of sigma <= 1.5 px


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each sample of (N, 1, H, W) by its own Gaussian of ``sigma`` (N,) pixels (0: unchanged), as two
    separable grouped convolutions over the whole batch, with mirrored borders."""
    offsets = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, device=images.device, dtype=images.dtype)
    width = sigma.to(images.dtype).clamp(min=1e-3)[:, None]
    taps = torch.exp(-0.5 * (offsets[None] / width) ** 2)
    taps = taps / taps.sum(1, keepdim=True)  # sigma 0: all weight on the centre tap
    n, _, h, w = images.shape
    x = F.pad(images.reshape(1, n, h, w), (BLUR_RADIUS,) * 4, mode="reflect")
    x = F.conv2d(x, taps.reshape(n, 1, 1, -1), groups=n)
    x = F.conv2d(x, taps.reshape(n, 1, -1, 1), groups=n)
    return x.reshape(n, 1, h, w)


def adjust_intensity(images: torch.Tensor, params: torch.Tensor, contrast: bool = False,
                     blur: bool = False) -> torch.Tensor:
    """x -> gain * x ** gamma per sample, for images in [0, 1] of shape (N, C, H, W), from ``params`` rows
    (gamma, gain[, contrast, blur sigma]); with ``contrast`` the contrast change about each sample's mean,
    with ``blur`` the Gaussian blur. Whether they apply is the settings' choice, not the drawn values', so no
    step waits on the device to decide."""
    gamma, gain = params[:, 0, None, None, None], params[:, 1, None, None, None]
    images = images.clamp(min=0).pow(gamma) * gain
    if contrast:
        mean = images.mean((1, 2, 3), keepdim=True)
        images = (images - mean) * params[:, 2, None, None, None] + mean
    if blur:
        images = gaussian_blur(images, params[:, 3])
    return images


@dataclass(frozen=True)
class Augmentation:
    """Per-sample random parameters: affine matrices (N, 2, 3) and intensity (gamma, gain, contrast, blur
    sigma) rows (N, 4); whether the settings change the contrast and blur at all."""

    theta: torch.Tensor
    intensity: torch.Tensor
    contrast: bool = False
    blur: bool = False


def draw_augmentation(total: int, rows: torch.Tensor, config: AugmentationConfig, generator: torch.Generator,
                      device: torch.device) -> Augmentation:
    """Draw parameters for ``total`` samples and keep ``rows``: every process of a distributed run draws the
    same global set and takes its own part, so sample g is augmented identically on 1 or P processes."""
    theta = random_affines(total, config, generator, device)
    intensity = random_intensity(total, config, generator, device)
    return Augmentation(theta=theta[rows], intensity=intensity[rows], contrast=config.changes_contrast,
                        blur=config.blurs)


def augment_batch(images: torch.Tensor, labels: Optional[torch.Tensor], augmentation: Augmentation,
                  size: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Warp images (N, 1, H, W) bilinearly and labels (N, H, W) by nearest neighbour with the same affines
    (to ``size`` pixels: crops); then adjust the images' intensity."""
    warped = adjust_intensity(warp(images, augmentation.theta, "bilinear", size), augmentation.intensity,
                              augmentation.contrast, augmentation.blur)
    if labels is None:
        return warped, None
    return warped, warp(labels[:, None].float(), augmentation.theta, "nearest", size)[:, 0].to(labels.dtype)
