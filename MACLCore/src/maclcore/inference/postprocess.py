"""Post-processing of predicted label maps."""

from __future__ import annotations

from typing import Tuple

import numpy as np


def _bounding_box(mask_of_slices: np.ndarray, mask_of_rows: np.ndarray, mask_of_columns: np.ndarray
                  ) -> Tuple[slice, slice, slice]:
    box = []
    for present in (mask_of_slices, mask_of_rows, mask_of_columns):
        where = np.flatnonzero(present)
        box.append(slice(int(where[0]), int(where[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def keep_largest_component(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """For each foreground class keep only its largest 3D connected component (26-connectivity), in place.

    Each cardiac structure (RV cavity, LV myocardium, LV cavity) is one connected object, so smaller
    islands of a class are false positives; they become background. Memory: each class is labelled within
    its bounding box (the heart is a small part of a scan's field of view), in 16-bit component numbers
    where they suffice, and ``labels`` is changed in place (it is returned too).
    """
    from scipy import ndimage

    out = labels
    structure = np.ones((3, 3, 3), dtype=bool)
    for value in range(1, num_classes):
        mask = out == value
        slices, rows = mask.any(axis=(1, 2)), mask.any(axis=(0, 2))
        if not slices.any():
            continue
        box = _bounding_box(slices, rows, mask.any(axis=(0, 1)))
        del mask
        region = out[box]  # a view: islands are removed in place
        inside = region == value
        try:
            components = np.empty(inside.shape, np.uint16)
            count = ndimage.label(inside, structure=structure, output=components)
        except RuntimeError:  # more than 65535 islands (a model that predicts noise)
            components, count = ndimage.label(inside, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            islands = components != int(sizes.argmax())
            islands &= inside
            region[islands] = 0
    return out
