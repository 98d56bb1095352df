"""PNG pictures of segmentations over their images, for reports and the demo."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import PathLike
from ..io.atomic import atomic_path
from ..labels import LabelSchema


def _grey(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, (1, 99))
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1)


def colour_overlay(image: np.ndarray, labels: np.ndarray, schema: LabelSchema, alpha: float = 0.45) -> np.ndarray:
    """RGB (H, W, 3) in [0, 1]: the grey image with each label blended in its schema colour."""
    rgb = np.repeat(_grey(image)[..., None], 3, axis=-1)
    for value, colour in enumerate(schema.colors, start=1):
        mask = labels == value
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour)
    return rgb


def pick_slices(labels: np.ndarray, count: int) -> Sequence[int]:
    """Up to ``count`` slices spread over those with foreground (or over all slices if none has any)."""
    present = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(1))
    pool = present if present.size else np.arange(labels.shape[0])
    return sorted({int(pool[i]) for i in np.linspace(0, pool.size - 1, min(count, pool.size)).round().astype(int)})


def save_overlay_png(path: PathLike, image: np.ndarray, prediction: np.ndarray, schema: LabelSchema,
                     truth: Optional[np.ndarray] = None, slices: int = 4) -> None:
    """One row per chosen slice: image | prediction overlay | truth overlay (when given)."""
    from skimage.io import imsave

    rows = []
    for k in pick_slices(truth if truth is not None else prediction, slices):
        panels = [np.repeat(_grey(image[k])[..., None], 3, -1), colour_overlay(image[k], prediction[k], schema)]
        if truth is not None:
            panels.append(colour_overlay(image[k], truth[k], schema))
        rows.append(np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=1) for p in panels], 1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=1) for r in rows]
    picture = (np.concatenate(rows, 0) * 255).round().astype(np.uint8)
    def verify(tmp: str) -> None:
        from skimage.io import imread

        if not np.array_equal(imread(tmp), picture):
            raise ValueError("the picture read back differs")

    with atomic_path(path, verify) as tmp:
        imsave(tmp, picture, check_contrast=False)
