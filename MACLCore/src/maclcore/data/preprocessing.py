"""Preprocessing as in the paper (METHOD.md), and its exact inverse.

Forward, per volume: clip intensities to the volume's [1st, 99th] percentile and scale to [0, 1]; resample
every slice in-plane to a fixed spacing; zero-pad (never crop) to a fixed square size. Inverse: crop the
padding and resample class probabilities back to the input's own slice size, so a prediction lands on the
input's grid (same size, spacing, origin and direction).

Slices are taken along the volume's third index axis (numpy axis 0), the slice direction of a short-axis
cine stack. The spacing and size are derived from the training data (:func:`plan_preprocessing`) and
stored in every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError, MaclError
from ..io.volume import Geometry

SIZE_MULTIPLE = 16  # four 2x2 poolings in the U-Net
MAX_SLICE_PIXELS = 2048  # a resampled slice larger than this means the file's spacing is implausible
MIN_SLICE_PIXELS = 4  # ... and one narrower than this too (or a volume that is not a stack of slices)


@dataclass(frozen=True)
class PreprocessingConfig:
    """The fixed in-plane spacing f_r (mm) and padded size f_s (pixels) slices are brought to."""

    spacing: float
    size: int
    percentiles: Tuple[float, float] = (1.0, 99.0)

    def __post_init__(self) -> None:
        if not (self.spacing > 0 and math.isfinite(self.spacing)):
            raise ConfigError("spacing", f"must be a positive number of mm, got {self.spacing}")
        if self.size <= 0 or self.size % SIZE_MULTIPLE:
            raise ConfigError("size", f"must be a positive multiple of {SIZE_MULTIPLE}, got {self.size}")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise ConfigError("percentiles", f"must satisfy 0 <= low < high <= 100, got {self.percentiles}")


def round_up(value: float, multiple: int = SIZE_MULTIPLE) -> int:
    return int(math.ceil(value / multiple) * multiple)


def in_plane_spacing(geometry: Geometry) -> Tuple[float, float]:
    """(row, column) spacing of a slice: y then x."""
    return geometry.spacing[1], geometry.spacing[0]


def resampled_shape(geometry: Geometry, spacing: float) -> Tuple[int, int]:
    """In-plane (height, width) of a slice of ``geometry`` resampled to ``spacing`` mm."""
    rows, cols = geometry.size[1], geometry.size[0]
    row_spacing, col_spacing = in_plane_spacing(geometry)
    return max(1, int(round(rows * row_spacing / spacing))), max(1, int(round(cols * col_spacing / spacing)))


# The finest spacing training derives when none is given. On ACDC (1.5625 mm median) labels taken to 2.5 mm and
# back still score 0.965 mean Dice, and a 2.5 mm slice has 2.5x fewer pixels, so a CPU minute buys 2.5x more
# steps; 2.5 mm with widths 16-256 reached 0.84 mean Dice from 4 patients in 6 minutes where 1.5625 mm with
# 32-512 had not learnt the structures (benchmarks/results/recipe_cpu).
TRAINING_MIN_SPACING = 2.5


def plan_preprocessing(geometries: Iterable[Geometry], spacing: Optional[float] = None,
                       size: Optional[int] = None, min_spacing: float = 0.0) -> PreprocessingConfig:
    """Derive f_r (median in-plane spacing, but not finer than ``min_spacing``) and f_s (largest resampled
    extent, rounded up to 16).

    Either may be given to override it; a given ``size`` smaller than a training slice is an error,
    since slices are never cropped.
    """
    geometries = list(geometries)
    if spacing is not None and not (spacing > 0 and math.isfinite(spacing)):
        raise ConfigError("spacing", f"must be a positive number of mm, got {spacing}")
    if not geometries:
        raise MaclError("no volumes to plan preprocessing from")
    if spacing is None:
        spacing = float(np.median([s for g in geometries for s in in_plane_spacing(g)]))
        spacing = max(float(f"{spacing:.4g}"), min_spacing)  # a readable number; the exact median does not matter
    largest = max(max(resampled_shape(g, spacing)) for g in geometries)
    needed = round_up(largest)
    if size is None:
        size = needed
    elif size < largest:
        raise ConfigError("size", f"{size} is smaller than the largest training slice ({largest} pixels at "
                                  f"{spacing} mm); slices are padded, never cropped: use {{size}} {needed} or a larger "
                                  "{spacing}")
    return PreprocessingConfig(spacing=spacing, size=size)


# Voxels per chunk of slices that are normalised and resampled together (and, at inference, restored): the
# float copies of one chunk exist at a time, so memory stays near the voxel data whatever the volume's size.
CHUNK_VOXELS = 1 << 22


def chunks(count: int, slice_voxels: int) -> Iterable[slice]:
    """Consecutive ranges of ``count`` slices of ``slice_voxels`` each, about CHUNK_VOXELS voxels a range."""
    step = max(1, CHUNK_VOXELS // max(1, slice_voxels))
    return (slice(start, min(count, start + step)) for start in range(0, count, step))


def intensity_window(array: np.ndarray, percentiles: Tuple[float, float] = (1.0, 99.0)) -> Tuple[float, float]:
    """The volume's intensity percentiles, the window :func:`normalise_intensity` scales to [0, 1]."""
    # On the voxels' own type: a float32 copy of an int16 scan would double the memory for nothing.
    source = array if array.dtype.kind in "iub" or array.dtype == np.float32 else np.asarray(array, np.float32)
    low, high = np.percentile(source, percentiles)
    return float(np.float32(low)), float(np.float32(high))


def normalise_window(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to [low, high] and scale to [0, 1] (float32); an empty window gives zeros."""
    array = np.asarray(array, dtype=np.float32)
    if not high > low:
        return np.zeros_like(array)
    low32, high32 = np.float32(low), np.float32(high)
    return ((np.clip(array, low32, high32) - low32) / (high32 - low32)).astype(np.float32)


def normalise_intensity(array: np.ndarray, percentiles: Tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """Clip to the volume's percentiles and scale to [0, 1] (float32). A constant volume gives zeros."""
    return normalise_window(array, *intensity_window(array, percentiles))


@dataclass
class PreparedVolume:
    """A volume after preprocessing, before padding: slices at the fixed spacing, and where it came from."""

    name: str
    image: np.ndarray  # (Z, h, w) float32 in [0, 1]
    geometry: Geometry  # the input's own grid, for the inverse
    label: Optional[np.ndarray] = None  # (Z, h, w) uint8
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])

    def positions(self) -> np.ndarray:
        """Normalised slice positions p = (k + 0.5) / Z, in (0, 1), centred in each slice's extent."""
        count = self.num_slices
        return ((np.arange(count) + 0.5) / count).astype(np.float32)


def _resize(stack: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (Z, C, H, W) float tensor, antialiased when shrinking."""
    if tuple(stack.shape[-2:]) == tuple(shape):
        return stack
    shrinking = shape[0] < stack.shape[-2] or shape[1] < stack.shape[-1]
    return F.interpolate(stack, size=shape, mode="bilinear", align_corners=False, antialias=shrinking)


def resample_labels(labels: np.ndarray, shape: Tuple[int, int], num_classes: int) -> np.ndarray:
    """Resample a (Z, H, W) label map in-plane via one-hot bilinear + argmax (smoother than nearest)."""
    if tuple(labels.shape[-2:]) == tuple(shape):
        return labels.astype(np.uint8)
    onehot = F.one_hot(torch.from_numpy(labels.astype(np.int64)), num_classes).permute(0, 3, 1, 2).float()
    return _resize(onehot, shape).argmax(1).numpy().astype(np.uint8)


def prepare_volume(name: str, array: np.ndarray, geometry: Geometry, config: PreprocessingConfig,
                   label: Optional[np.ndarray] = None, num_classes: int = 0) -> PreparedVolume:
    """Normalise and resample one volume (and its label map) to ``config``'s spacing."""
    shape = resampled_shape(geometry, config.spacing)
    if max(shape) > MAX_SLICE_PIXELS or min(shape) < MIN_SLICE_PIXELS:
        raise InputError(name, f"its in-plane spacing {in_plane_spacing(geometry)} mm would make slices of "
                               f"{shape[0]}x{shape[1]} pixels at {config.spacing} mm; check the file's spacing")
    window = intensity_window(array, config.percentiles)
    image = np.empty((array.shape[0],) + tuple(shape), np.float32)
    for part in chunks(array.shape[0], array.shape[1] * array.shape[2]):
        normalised = torch.from_numpy(normalise_window(array[part], *window))
        image[part] = _resize(normalised[:, None], shape)[:, 0].numpy()
    if label is not None:
        label = resample_labels(label, shape, num_classes)
    return PreparedVolume(name=name, image=image, geometry=geometry,
                          label=label)


def padded_size(shape: Tuple[int, int], config: PreprocessingConfig) -> int:
    """The square size a slice of ``shape`` is padded to: f_s, or more (never crop) for a larger slice."""
    return max(config.size, round_up(max(shape)))


def pad_offsets(shape: Tuple[int, int], size: int) -> Tuple[int, int]:
    """Top and left padding that centre a slice of ``shape`` in a ``size`` square."""
    return (size - shape[0]) // 2, (size - shape[1]) // 2


def pad_slices(stack: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad the last two axes of ``stack`` to ``size`` x ``size``, centred."""
    top, left = pad_offsets(stack.shape[-2:], size)
    out = np.zeros(stack.shape[:-2] + (size, size), dtype=stack.dtype)
    out[..., top:top + stack.shape[-2], left:left + stack.shape[-1]] = stack
    return out


def stack_slices(stacks: Sequence[np.ndarray], size: int, channel: bool = True) -> torch.Tensor:
    """The slices of (Z, h, w) stacks, zero-padded to ``size`` and stacked in order into one tensor.

    Args:
        stacks: slice stacks of one dtype (images float32, label maps uint8); each slice must fit ``size``.
        size: the square size every slice is padded to.
        channel: add the channel axis the networks take: (N, 1, S, S) instead of (N, S, S).
    """
    if not stacks:
        raise ValueError("no slice stacks to stack")
    padded = pad_slices(stacks[0], size) if len(stacks) == 1 else np.concatenate([pad_slices(s, size) for s in stacks])
    tensor = torch.from_numpy(padded)
    return tensor[:, None] if channel else tensor


def restore_probabilities(probs: torch.Tensor, prepared_shape: Tuple[int, int], geometry: Geometry) -> torch.Tensor:
    """Invert padding and resampling: (Z, C, S, S) probabilities -> (Z, C, H, W) on the input's slices."""
    size = probs.shape[-1]
    top, left = pad_offsets(prepared_shape, size)
    cropped = probs[..., top:top + prepared_shape[0], left:left + prepared_shape[1]]
    return _resize(cropped.float(), (geometry.size[1], geometry.size[0]))

