"""3D volumes and their geometry, read and written with SimpleITK.

Arrays are numpy in (z, y, x) order, as SimpleITK and Slicer's ``arrayFromVolume`` give them; geometry
is kept in ITK's (x, y, z) order and LPS coordinates. SimpleITK is imported inside the functions so that
training from a preprocessed cache needs no SimpleITK.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np

from ..errors import InputError, PathLike
from .atomic import atomic_path

VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """Where a voxel grid lies in patient space (ITK order: x, y, z; LPS)."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]  # 3x3 row-major: column i is the direction of index axis i

    @property
    def shape(self) -> Tuple[int, int, int]:
        """The numpy (z, y, x) shape of an array on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    @classmethod
    def from_sitk(cls, image: Any) -> "Geometry":
        return cls(size=tuple(int(s) for s in image.GetSize()),  # type: ignore[arg-type]
                   spacing=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
                   origin=tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
                   direction=tuple(float(d) for d in image.GetDirection()))

    def apply_to(self, image: Any) -> None:
        """Copy spacing, origin and direction onto a SimpleITK image of the same size."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    def matches(self, other: "Geometry", tolerance: float = 1e-4) -> bool:
        """Same grid: equal size, and spacing/origin/direction equal within ``tolerance`` (mm / cosine)."""
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, rtol=0, atol=tolerance)
                and np.allclose(self.origin, other.origin, rtol=0, atol=tolerance * max(1.0, max(self.spacing)))
                and np.allclose(self.direction, other.direction, rtol=0, atol=tolerance))

    def describe(self) -> str:
        size = "x".join(str(s) for s in self.size)
        spacing = "x".join(f"{s:.4g}" for s in self.spacing)
        return f"{size} voxels of {spacing} mm"

    def to_dict(self) -> Dict[str, list]:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Geometry":
        return cls(size=tuple(int(v) for v in data["size"]),  # type: ignore[arg-type]
                   spacing=tuple(float(v) for v in data["spacing"]),  # type: ignore[arg-type]
                   origin=tuple(float(v) for v in data["origin"]),  # type: ignore[arg-type]
                   direction=tuple(float(v) for v in data["direction"]))


@dataclass
class Volume:
    """A 3D scalar volume: voxel values in (z, y, x) order and the grid they lie on."""

    array: np.ndarray
    geometry: Geometry
    source: str = ""


def has_volume_extension(path: PathLike) -> bool:
    return os.fspath(path).lower().endswith(VOLUME_EXTENSIONS)


def is_dicom_folder(path: PathLike) -> bool:
    """True for a folder holding DICOM files (by name or by the 'DICM' magic at byte 128)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    for entry in sorted(os.listdir(path))[:20]:
        full = os.path.join(path, entry)
        if not os.path.isfile(full):
            continue
        if entry.lower().endswith((".dcm", ".ima")):
            return True
        try:
            with open(full, "rb") as handle:
                handle.seek(128)
                if handle.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def _read_dicom_series(path: str) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(path)
    if not series:
        raise InputError(path, "is a folder without a DICOM series")
    if len(series) > 1:
        raise InputError(path, f"holds {len(series)} DICOM series; give the folder of one series")
    files = reader.GetGDCMSeriesFileNames(path, series[0])
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(path, f"DICOM series could not be read ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # SimpleITK's messages start with a C++ source location; the useful part is the last line.
    return text[-1].strip() if text else type(exc).__name__


def read_sitk_image(path: PathLike) -> Any:
    """Read a 3D scalar image (file or DICOM series folder) with checks that name the problem."""
    import SimpleITK as sitk

    path = os.fspath(path)
    if os.path.isdir(path):
        if not is_dicom_folder(path):
            raise InputError(path, "is a folder, but not a DICOM series")
        image = _read_dicom_series(path)
    else:
        check_readable_file(path)
        try:
            image = sitk.ReadImage(path)
        except RuntimeError as exc:
            raise InputError(path, f"is not a readable image ({_first_line(exc)})") from None
    _check_header(path, image.GetSize(), image.GetNumberOfComponentsPerPixel(), image.GetSpacing())
    return image


def _check_header(path: str, size: Tuple[int, ...], components: int, spacing: Tuple[float, ...]) -> None:
    """Refuse what is not one 3D grayscale volume with a usable spacing."""
    if len(size) == 4 and size[3] == 1:
        size, spacing = size[:3], spacing[:3]
    if len(size) == 2:
        raise InputError(path, f"is a 2D image ({size[0]}x{size[1]}); a 3D volume is needed")
    if len(size) != 3:
        raise InputError(path, f"is a {len(size)}D image ({'x'.join(map(str, size))}); a single 3D volume is needed")
    if components != 1:
        raise InputError(path, f"has {components} components per voxel (colour or vector image); "
                               "a grayscale volume is needed")
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InputError(path, f"has an invalid voxel spacing {tuple(spacing)}")


def read_volume(path: PathLike) -> Volume:
    """Read a 3D scalar volume (NIfTI, NRRD, MHA or a DICOM series folder)."""
    import SimpleITK as sitk

    path = os.fspath(path)
    image = read_sitk_image(path)
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(path, f"contains {bad} NaN or infinite voxel values")
    return Volume(array=array, geometry=Geometry.from_sitk(image), source=path)


def write_volume(array: np.ndarray, geometry: Geometry, path: PathLike) -> None:
    """Write a (z, y, x) array on ``geometry`` to NIfTI/NRRD/MHA, atomically."""
    import SimpleITK as sitk

    path = os.fspath(path)
    if array.shape != geometry.shape:
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    if not has_volume_extension(path):
        raise InputError(path, f"unknown output format; use one of {', '.join(VOLUME_EXTENSIONS)}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    geometry.apply_to(image)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, tmp, useCompression=True)


def read_geometry(path: PathLike) -> Geometry:
    """The geometry of a volume, from its header alone where the format allows (DICOM reads the series)."""
    import SimpleITK as sitk

    path = os.fspath(path)
    if os.path.isdir(path):
        return read_volume(path).geometry
    check_readable_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, f"is not a readable image ({_first_line(exc)})") from None
    size, spacing = reader.GetSize(), reader.GetSpacing()
    _check_header(path, size, reader.GetNumberOfComponents(), spacing)
    dimension = len(size)
    direction = np.asarray(reader.GetDirection()).reshape(dimension, dimension)[:3, :3]
    return Geometry(size=tuple(int(s) for s in size[:3]), spacing=tuple(float(s) for s in spacing[:3]),  # type: ignore
                    origin=tuple(float(o) for o in reader.GetOrigin()[:3]),  # type: ignore[arg-type]
                    direction=tuple(float(d) for d in direction.ravel()))


def check_readable_file(path: str) -> None:
    """The checks every file read starts with: it exists, is readable and is not empty."""
    if not os.path.exists(path):
        raise InputError(path, "does not exist")
    if not os.access(path, os.R_OK):
        raise InputError(path, "cannot be read (permission denied)")
    if os.path.getsize(path) == 0:
        raise InputError(path, "is an empty file")
