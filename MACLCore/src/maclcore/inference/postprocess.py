"""Post-processing of predicted label maps."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def _bounding_box(mask_of_slices: np.ndarray, mask_of_rows: np.ndarray, mask_of_columns: np.ndarray
                  ) -> Tuple[slice, slice, slice]:
    box = []
    for present in (mask_of_slices, mask_of_rows, mask_of_columns):
        where = np.flatnonzero(present)
        box.append(slice(int(where[0]), int(where[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def _keep_largest_island(labels: np.ndarray, value: Optional[int]) -> None:
    """Set to background, in place, every voxel of label ``value`` (None: of any foreground label) outside
    its largest 3D connected component (26-connectivity). Labelled within the bounding box (the heart is a
    small part of a scan's field of view), in 16-bit component numbers where they suffice, and without
    holding a whole-volume mask while labelling."""
    from scipy import ndimage

    def chosen(array: np.ndarray) -> np.ndarray:
        return array > 0 if value is None else array == value

    mask = chosen(labels)
    slices, rows = mask.any(axis=(1, 2)), mask.any(axis=(0, 2))
    if not slices.any():
        return
    box = _bounding_box(slices, rows, mask.any(axis=(0, 1)))
    del mask
    region = labels[box]  # a view: islands are removed in place
    inside = chosen(region)
    structure = np.ones((3, 3, 3), dtype=bool)
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


def keep_largest_component(labels: np.ndarray, num_classes: int, one_object: bool = False) -> np.ndarray:
    """For each foreground class keep only its largest 3D connected component (26-connectivity), in place.

    Each cardiac structure (RV cavity, LV myocardium, LV cavity) is one connected object, so smaller
    islands of a class are false positives; they become background. With ``one_object`` (the labels
    together form one object: the RV cavity and the LV cavity both touch the myocardium) the largest
    connected component of all foreground is kept first. Why: a class's largest island is not always the
    right one when the model is unsure of that class (a bright structure far from the heart called LV
    cavity); the heart as a whole is. On ACDC's 20 evaluation volumes (benchmarks/results/
    postprocess_cpu.json, 10 models from 1-4 patients) it changed the mean Dice by -1.7 to +2.5 points,
    +0.2 on average: a guard against the stray blob, not a general gain. ``labels`` is changed in place
    (it is returned too).
    """
    if one_object:
        _keep_largest_island(labels, None)
    for value in range(1, num_classes):
        _keep_largest_island(labels, value)
    return labels
