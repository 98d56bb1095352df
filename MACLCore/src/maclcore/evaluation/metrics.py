"""Overlap and distance metrics per class, and summaries over cases.

Conventions (stated because tools differ):
* Dice and IoU of a class absent from both prediction and truth are 1 (nothing to find, nothing found).
* HD95 follows MedPy: the 95th percentile of the pooled surface distances in both directions, in mm,
  computed in 3D with the voxel spacing. It is undefined (NaN) when either mask is empty; summaries
  average over the cases where it is defined and say how many were not.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import numpy as np


def overlap_per_class(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> Dict[str, np.ndarray]:
    """Dice and IoU of each foreground class 1..num_classes-1 (arrays of length num_classes-1)."""
    prediction = np.asarray(prediction, dtype=np.int64).ravel()
    truth = np.asarray(truth, dtype=np.int64).ravel()
    full = np.bincount(truth * num_classes + prediction, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    hits = np.diag(full)[1:].astype(float)
    in_truth = full.sum(1)[1:].astype(float)
    in_pred = full.sum(0)[1:].astype(float)
    union = in_truth + in_pred - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(in_truth + in_pred > 0, 2 * hits / (in_truth + in_pred), 1.0)
        iou = np.where(union > 0, hits / union, 1.0)
    return {"dice": dice, "iou": iou}


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                    border_value=0)
    return mask & ~eroded


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric surface distance (mm) between two boolean masks; NaN if either is empty.

    Args:
        spacing: voxel size in the arrays' axis order (numpy z, y, x for volumes).
    """
    from scipy import ndimage

    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if not prediction.any() or not truth.any():
        return float("nan")
    pred_surface, truth_surface = _surface(prediction), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    distances = np.concatenate([to_truth[pred_surface], to_pred[truth_surface]])
    return float(np.percentile(distances, 95))


def case_metrics(prediction: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float],
                 names: Sequence[str], with_hd95: bool = True) -> Dict[str, Dict[str, float]]:
    """Dice, IoU (and HD95) of every foreground class of one case, keyed by class name."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    overlap = overlap_per_class(prediction, truth, len(names) + 1)
    result = {}
    for index, name in enumerate(names):
        entry = {"dice": float(overlap["dice"][index]), "iou": float(overlap["iou"][index])}
        if with_hd95:
            entry["hd95"] = hd95(prediction == index + 1, truth == index + 1, spacing_zyx)
        result[name] = entry
    return result


def mean_foreground(per_class: Dict[str, Dict[str, float]], metric: str = "dice") -> float:
    values = [v[metric] for v in per_class.values() if not math.isnan(v[metric])]
    return float(np.mean(values)) if values else float("nan")


def summarise(cases: Dict[str, Dict[str, Dict[str, float]]]) -> Dict[str, Any]:
    """Mean, std and count of each metric per class and of the per-case foreground means, over cases."""
    if not cases:
        return {}
    names = list(next(iter(cases.values())).keys())
    metrics = list(next(iter(next(iter(cases.values())).values())).keys())
    summary: Dict[str, Any] = {}

    def stats(values: List[float]) -> Dict[str, Any]:
        defined = [v for v in values if not math.isnan(v)]
        return {"mean": float(np.mean(defined)) if defined else float("nan"),
                "std": float(np.std(defined)) if defined else float("nan"),
                "n": len(defined), "undefined": len(values) - len(defined)}

    for name in names:
        summary[name] = {m: stats([cases[c][name][m] for c in cases]) for m in metrics}
    summary["mean_foreground"] = {m: stats([mean_foreground(cases[c], m) for c in cases]) for m in metrics}
    return summary
