"""Label maps: plain volumes (NIfTI/NRRD/MHA) and Slicer ``.seg.nrrd`` segmentations (:mod:`.seg_nrrd`).

:func:`read_label_map` is the one reader of labels and references for every command (finetune, evaluate,
suggest, the demo): values checked against the schema, the result on the image's grid (a ``.seg.nrrd``
cropped to its segments' extent, as Slicer writes it, is pasted back).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ..errors import InputError, PathLike
from ..labels import LabelSchema
from .seg_nrrd import is_seg_nrrd, read_seg_geometry, read_seg_nrrd, write_seg_nrrd
from .volume import Geometry, read_geometry, read_volume, write_volume


def write_label_map(labels: np.ndarray, geometry: Geometry, path: PathLike, schema: LabelSchema) -> None:
    """Write a (z, y, x) label map as ``.seg.nrrd`` (named segments) or as a plain label volume."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > len(schema.names):
        raise ValueError(f"label values must lie in 0..{len(schema.names)}")
    if is_seg_nrrd(path):
        write_seg_nrrd(labels.astype(np.uint8), geometry, path, schema)
    else:
        write_volume(labels.astype(np.uint8), geometry, path)


def _paste_into(path: str, labels: np.ndarray, geometry: Geometry, reference: Geometry) -> np.ndarray:
    """Place a label map stored on a cropped or shifted copy of ``reference``'s grid back onto it."""
    if geometry.matches(reference):
        return labels
    same_axes = (np.allclose(geometry.spacing, reference.spacing, atol=1e-4)
                 and np.allclose(geometry.direction, reference.direction, atol=1e-4))
    if same_axes:
        matrix = np.asarray(reference.direction).reshape(3, 3) * np.asarray(reference.spacing)
        offset = np.linalg.solve(matrix, np.asarray(geometry.origin) - np.asarray(reference.origin))
        index = np.round(offset)
        if np.allclose(offset, index, atol=1e-3):
            out = np.zeros(reference.shape, dtype=np.uint8)
            start = index.astype(int)[::-1]  # to (z, y, x)
            stop = start + np.asarray(labels.shape)
            src = tuple(slice(max(0, -s), labels.shape[a] - max(0, e - reference.shape[a]))
                        for a, (s, e) in enumerate(zip(start, stop)))
            dst = tuple(slice(max(0, s), min(reference.shape[a], e)) for a, (s, e) in enumerate(zip(start, stop)))
            lost = int(np.count_nonzero(labels)) - int(np.count_nonzero(labels[src]))
            if lost:
                raise InputError(path, f"{lost} labelled voxels lie outside its image")
            out[dst] = labels[src]
            return out
    raise _off_grid(path, geometry, reference)


def _off_grid(path: str, geometry: Geometry, reference: Geometry) -> InputError:
    """The error of a label map that does not lie on its image's grid, saying what differs."""
    shift = float(np.linalg.norm(np.subtract(geometry.origin, reference.origin)))
    if geometry.describe() != reference.describe():
        detail = f"{geometry.describe()}; the image: {reference.describe()}"
    elif not np.allclose(geometry.direction, reference.direction, atol=1e-4):
        detail = "its axes point in other directions than the image's"
    else:
        detail = f"its origin is {shift:.3g} mm from the image's"
    return InputError(path, f"is on a different grid than its image ({detail})")


def label_geometry(path: PathLike) -> Geometry:
    """The grid a label file is stored on, from its header (a Slicer ``.seg.nrrd`` may be cropped)."""
    return read_seg_geometry(path) if is_seg_nrrd(path) else read_geometry(path)


def read_label_map(path: PathLike, schema: LabelSchema, reference: Optional[Geometry] = None) -> np.ndarray:
    """Read a label map (plain volume or ``.seg.nrrd``) with values checked against ``schema``.

    With ``reference`` (the image's geometry) the result lies on the image's grid: a ``.seg.nrrd`` cropped
    to its segments' extent is pasted back; any other difference of grid is an error.
    """
    path = os.fspath(path)
    if is_seg_nrrd(path):
        labels, geometry = read_seg_nrrd(path, schema)
    else:
        volume = read_volume(path)
        values = volume.array
        if values.dtype.kind == "f" and not np.all(values == np.round(values)):
            raise InputError(path, "has non-integer values; a label map is expected")
        present = np.unique(values)
        bad = [int(v) for v in present if v < 0 or v > len(schema.names)]
        if bad:
            raise InputError(path, f"has label values {bad[:5]} outside the label schema 0..{len(schema.names)} "
                                   f"({', '.join(schema.names)})")
        labels, geometry = values.astype(np.uint8), volume.geometry
    if reference is not None and is_seg_nrrd(path):
        labels = _paste_into(path, labels, geometry, reference)
    elif reference is not None and not geometry.matches(reference):
        raise _off_grid(path, geometry, reference)
    return labels
