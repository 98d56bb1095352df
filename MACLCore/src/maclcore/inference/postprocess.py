"""Post-processing of predicted label maps."""

from __future__ import annotations

import numpy as np


def keep_largest_component(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """For each foreground class keep only its largest 3D connected component (26-connectivity).

    Each cardiac structure (RV cavity, LV myocardium, LV cavity) is one connected object, so smaller
    islands of a class are false positives; they become background.
    """
    from scipy import ndimage

    out = labels.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for value in range(1, num_classes):
        mask = labels == value
        if not mask.any():
            continue
        components, count = ndimage.label(mask, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != int(sizes.argmax()))] = 0
    return out
