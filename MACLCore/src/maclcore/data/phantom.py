"""Synthetic short-axis cardiac cine phantoms with known truth, for tests and the demo.

Each phantom is a stack of short-axis slices from base to apex: an elliptical LV cavity (bright blood)
inside a myocardial ring (dark muscle), an RV crescent wrapped around the septum, inside a textured
body outline. Every phantom differs in slice count, in-plane and slice spacing, heart size, pose (in-plane
rotation and translation), noise, intensity bias field and scanner intensity scale; optionally the volume
is also tilted in space (an oblique direction matrix), to exercise geometry handling.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage

from ..io.volume import Geometry


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # (z, y, x) float32, arbitrary scanner units
    labels: np.ndarray  # (z, y, x) uint8: 1 RV cavity, 2 LV myocardium, 3 LV cavity
    geometry: Geometry


def _rotation(angle: float, axis: np.ndarray) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (field.std() + 1e-8)


def make_phantom(seed: int, oblique: bool = False, slices: Optional[int] = None) -> Phantom:
    """One random phantom; the same seed always gives the same phantom."""
    rng = np.random.default_rng(seed)
    depth = int(slices if slices is not None else rng.integers(6, 13))
    pixel = float(rng.uniform(1.4, 1.8))  # mm
    slice_gap = float(rng.uniform(8.0, 10.0))
    side = int(rng.integers(96, 129))  # field of view up to ~230 mm: a cardiac cine crop
    y, x = (np.mgrid[:side, :side] - (side - 1) / 2) * pixel  # mm, centred

    # Direction from the LV centre to the RV: short-axis views put the RV on one side, give or take 30 degrees.
    angle = np.pi + rng.uniform(-np.pi / 6, np.pi / 6)
    centre = rng.uniform(-18, 18, size=2)
    lv_radius = rng.uniform(20, 27)
    wall = rng.uniform(7, 10)
    elongation = rng.uniform(0.85, 1.15)
    rv_extent = rng.uniform(0.7, 0.95)  # fraction of slices (from the base) that show the RV

    cos, sin = np.cos(angle), np.sin(angle)
    u = (x - centre[1]) * cos + (y - centre[0]) * sin  # along LV -> RV
    v = -(x - centre[1]) * sin + (y - centre[0]) * cos

    body = ((x / (side * pixel * 0.46)) ** 2 + (y / (side * pixel * 0.40)) ** 2) < 1
    labels = np.zeros((depth, side, side), np.uint8)
    image = np.zeros((depth, side, side), np.float32)
    texture = _smooth_noise(rng, (depth, side, side), sigma=(0, 3, 3))
    for k in range(depth):
        t = k / max(1, depth - 1)  # 0 at base, 1 at apex
        cavity = lv_radius * (1 - 0.65 * t)
        outer = cavity + wall * (1 + 0.15 * t)
        r_lv = np.sqrt((u / elongation) ** 2 + (v * elongation) ** 2)
        lv = r_lv < cavity
        myo = (r_lv < outer) & ~lv
        rv = np.zeros_like(lv)
        if t <= rv_extent:
            shrink = 1 - 0.6 * t / rv_extent
            rv_shape = (((u - outer * 0.9) / (1.05 * outer * shrink)) ** 2 + (v / (1.5 * outer * shrink)) ** 2) < 1
            rv = rv_shape & (r_lv >= outer + 1.5) & (u > 0)
        labels[k][rv] = 1
        labels[k][myo] = 2
        labels[k][lv] = 3
        slice_image = np.where(body, 0.35 + 0.06 * texture[k], 0.0)
        slice_image = np.where(myo, 0.22 + 0.03 * texture[k], slice_image)
        slice_image = np.where(lv | rv, 0.85 + 0.04 * texture[k], slice_image)
        image[k] = slice_image

    # Partial-volume blur, multiplicative bias field, noise, and an arbitrary scanner scale.
    image = ndimage.gaussian_filter(image, sigma=(0, 0.8, 0.8))
    bias = 1 + 0.25 * _smooth_noise(rng, (1, side, side), sigma=(0, side / 4, side / 4))
    image = image * bias + rng.normal(0, rng.uniform(0.02, 0.05), image.shape)
    image = (np.clip(image, 0, None) * rng.uniform(200, 2000)).astype(np.float32)

    direction = np.eye(3)
    if oblique:
        direction = _rotation(rng.uniform(0.2, 0.6), rng.standard_normal(3))
    spacing = (pixel, pixel, slice_gap)
    origin = tuple(float(o) for o in rng.uniform(-100, 100, size=3))
    geometry = Geometry(size=(side, side, depth), spacing=spacing, origin=origin,  # type: ignore[arg-type]
                        direction=tuple(float(d) for d in direction.ravel()))
    return Phantom(image=image, labels=labels, geometry=geometry)


def write_phantom_dataset(folder: str, count: int, seed: int = 0, oblique: bool = False,
                          prefix: str = "phantom") -> List[str]:
    """Write ``count`` phantoms in nnU-Net layout (imagesTr/NAME_0000.nii.gz, labelsTr/NAME.nii.gz).

    Returns the case names.
    """
    from ..io.volume import write_volume

    names = []
    for index in range(count):
        name = f"{prefix}_{index:03d}"
        phantom = make_phantom(seed * 1000 + index, oblique=oblique)
        write_volume(phantom.image, phantom.geometry, os.path.join(folder, "imagesTr", f"{name}_0000.nii.gz"))
        write_volume(phantom.labels, phantom.geometry, os.path.join(folder, "labelsTr", f"{name}.nii.gz"))
        names.append(name)
    return names
