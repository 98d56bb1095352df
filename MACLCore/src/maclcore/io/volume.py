"""3D volumes and their geometry, read and written with SimpleITK.

Arrays are numpy in (z, y, x) order, as SimpleITK and Slicer's ``arrayFromVolume`` give them; geometry
is kept in ITK's (x, y, z) order and LPS coordinates. SimpleITK is imported inside the functions so that
training from a preprocessed cache needs no SimpleITK.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from ..errors import InputError, PathLike
from .atomic import WriteCheckError, atomic_path
from .headers import (_DataLayout, _check_claims, _check_deflate_complete, _check_direction, _check_nifti_complete,
                      _data_layout, _pixel_bytes, _stat_regular)
from .naming import SEG_EXTENSION, VOLUME_EXTENSIONS

# What ITK's readers say (in the exception or on stderr) when a file ends early.
_TRUNCATION_HINTS = ("not read completely", "fread got only", "but received", "end of file")
# An in-plane field of view outside this (mm) means a wrong spacing, such as metres or micrometres for mm.
FIELD_OF_VIEW_MM = (1.0, 5000.0)
T = TypeVar("T")


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


@contextlib.contextmanager
def _keeping_locale() -> Iterator[None]:
    """GDCM switches the process's locale to "C", after which Python reads text files as ASCII; put it back."""
    import locale

    previous = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, previous)


def _read_dicom_series(path: str) -> Any:
    with _keeping_locale():
        return _scan_and_read_dicom_series(path)


def _scan_and_read_dicom_series(path: str) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = _itk_call(path, lambda: reader.GetGDCMSeriesIDs(path), "could not be scanned for DICOM series",
                       forward=False)
    if not series:
        raise InputError(path, "is a folder without a DICOM series")
    if len(series) > 1:
        raise InputError(path, f"holds {len(series)} DICOM series; give the folder of one series")
    files = _itk_call(path, lambda: reader.GetGDCMSeriesFileNames(path, series[0]),
                      "could not be scanned for DICOM series", forward=False)
    _check_dicom_slices(path, files)
    reader.SetFileNames(files)
    return _itk_call(path, reader.Execute, "DICOM series could not be read")


def _dicom_slice_geometry(path: str, file: str) -> Tuple[np.ndarray, np.ndarray]:
    """(position, unit normal) of one DICOM slice, from its header alone."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    _itk_call(file, reader.ReadImageInformation, "is not a readable DICOM file", forward=False)
    try:
        position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        orientation = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
    except (RuntimeError, ValueError):
        raise InputError(path, f"slice {os.path.basename(file)} has no usable Image Position/Orientation "
                               "(0020,0032)/(0020,0037): the slices cannot be placed") from None
    if position.shape != (3,) or orientation.shape != (6,):
        raise InputError(path, f"slice {os.path.basename(file)} has a malformed Image Position or Orientation")
    normal = np.cross(orientation[:3], orientation[3:])
    return position, normal / max(float(np.linalg.norm(normal)), 1e-12)


def _check_dicom_slices(path: str, files: Sequence[str]) -> None:
    """Refuse a series whose slices are not one evenly spaced stack: a missing slice, two slices at one position
    or slices of another orientation would be read into a volume with the slices misplaced by millimetres."""
    if len(files) < 2:
        return
    geometry = [_dicom_slice_geometry(path, f) for f in files]
    normal = geometry[0][1]
    for file, (_, other) in zip(files, geometry):
        if abs(float(np.dot(normal, other))) < 0.9999:
            raise InputError(path, f"slice {os.path.basename(file)} has another orientation than "
                                   f"{os.path.basename(files[0])}; give the folder of one stack")
    depth = np.array([float(np.dot(position, normal)) for position, _ in geometry])
    order = np.argsort(depth)
    gaps = np.diff(depth[order])
    step = float(np.median(gaps))
    for index, gap in enumerate(gaps):
        first, second = (os.path.basename(files[order[index + j]]) for j in (0, 1))
        if gap < 1e-3:
            raise InputError(path, f"slices {first} and {second} lie at the same position "
                                   f"({depth[order[index]]:.4g} mm along the stack); give one series without "
                                   "repeated slices")
        if abs(gap - step) > max(0.01, 0.05 * step):
            raise InputError(path, f"has uneven slice spacing: {gap:.4g} mm between {first} and {second}, "
                                   f"{step:.4g} mm elsewhere (a missing slice?)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # SimpleITK's messages start with a C++ source location; the useful part is the last line.
    return text[-1].strip() if text else type(exc).__name__


@contextlib.contextmanager
def _captured_stderr() -> Iterator[List[str]]:
    """Collect what C++ code (ITK, GDCM, MetaIO) writes to the stderr file descriptor meanwhile."""
    lines: List[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2 (some embedded interpreters)
        yield lines
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines.extend(line for line in capture.read().decode(errors="replace").splitlines() if line.strip())


def _itk_call(path: str, call: Callable[[], T], problem: str, forward: bool = True) -> T:
    """Run a SimpleITK read. On failure its C++ messages become part of one error line (instead of stray lines
    on stderr) and a file that ends early is called truncated; on success they are passed on (``forward``)."""
    failure: Optional[RuntimeError] = None
    with _captured_stderr() as messages:
        try:
            result = call()
        except RuntimeError as exc:
            failure = exc
    if failure is None:
        if messages and forward:
            print("\n".join(messages), file=sys.stderr)
        return result
    detail = _first_line(failure)
    early = [m.strip() for m in messages + [detail] if any(hint in m for hint in _TRUNCATION_HINTS)]
    if early:
        problem, detail = "is truncated (its voxel data ends early)", early[0]
    raise InputError(path, f"{problem} ({detail})") from None


# Float voxels whose magnitude leaves this range lose their contrast as float32 (overflow or underflow).
_FLOAT32_SAFE = (1e-30, 1e30)


def _read_information(path: str) -> Tuple[Any, Optional[_DataLayout]]:
    """Read and check a file's header, before any voxel is read: the file and its data file are regular files,
    the voxels claimed fit in the file and in memory, the grid is one 3D volume with orthonormal axes."""
    import SimpleITK as sitk

    check_readable_file(path)
    if path.lower().endswith(SEG_EXTENSION):
        # ITK would read it as a volume of label values and a model would segment that as if it were an MRI.
        raise InputError(path, "is a Slicer segmentation (.seg.nrrd), not an image; give the scan it segments")
    layout = _data_layout(path)
    if layout is not None and layout.data_file != path:
        _stat_regular(layout.data_file, path, "data file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    _itk_call(path, reader.ReadImageInformation, "is not a readable image")
    size = reader.GetSize()
    _check_header(path, size, reader.GetNumberOfComponents(), reader.GetSpacing())
    _check_direction(path, reader.GetDirection(), len(size))
    _check_claims(path, layout, size, reader.GetNumberOfComponents(), _pixel_bytes(reader.GetPixelID()))
    return reader, layout


def read_sitk_image(path: PathLike) -> Any:
    """Read a 3D scalar image (file or DICOM series folder) with checks that name the problem.

    Files are checked from their header first (see :func:`_read_information`), so that a false header costs
    neither memory nor time; compressed data is checked complete before ITK, which pads it with zeros, reads it.
    """
    import SimpleITK as sitk

    path = os.fspath(path)
    if os.path.isdir(path):
        if not is_dicom_folder(path):
            raise InputError(path, "is a folder, but not a DICOM series")
        image = _read_dicom_series(path)
        _check_direction(path, image.GetDirection(), image.GetDimension())
    else:
        reader, layout = _read_information(path)
        if path.lower().endswith((".nii", ".nii.gz")):
            _check_nifti_complete(path)
        elif layout is not None and layout.encoding == "deflate":
            needed = (math.prod(reader.GetSize()) * max(1, reader.GetNumberOfComponents())
                      * _pixel_bytes(reader.GetPixelID()))
            _check_deflate_complete(path, layout, needed)
        image = _itk_call(path, lambda: sitk.ReadImage(path), "is not a readable image")
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
    extent = (size[0] * spacing[0], size[1] * spacing[1])
    if not (FIELD_OF_VIEW_MM[0] <= min(extent) and max(extent) <= FIELD_OF_VIEW_MM[1]):
        raise InputError(path, f"has an implausible in-plane spacing {spacing[0]:.4g} x {spacing[1]:.4g} mm (a field "
                               f"of view of {extent[0]:.4g} x {extent[1]:.4g} mm); check the file's spacing")


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
        array = _float32_safe(array)
    return Volume(array=array, geometry=Geometry.from_sitk(image), source=path)


def _float32_safe(array: np.ndarray) -> np.ndarray:
    """Float voxels scaled (in float64, by a power of two) into a range that float32 holds with full contrast.

    Preprocessing works in float32 and normalises each volume by its own percentiles, so a global scale changes
    nothing downstream, while values such as 1e300 (inf as float32) or 1e-300 (0 as float32) would lose every
    contrast. Arrays already in range are returned as they are.
    """
    peak = float(np.max(np.abs(array), initial=0.0))
    if peak == 0.0 or _FLOAT32_SAFE[0] <= peak <= _FLOAT32_SAFE[1]:
        return array
    scale = 2.0 ** -math.floor(math.log2(peak))
    return (array.astype(np.float64) * scale).astype(np.float32)


def write_volume(array: np.ndarray, geometry: Geometry, path: PathLike) -> None:
    """Write a (z, y, x) array on ``geometry`` to NIfTI/NRRD/MHA, atomically."""
    import SimpleITK as sitk

    path = os.fspath(path)
    if array.shape != geometry.shape:
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    if not has_volume_extension(path):
        raise InputError(path, f"unknown output format; use one of {', '.join(VOLUME_EXTENSIONS)}")
    array = np.ascontiguousarray(array)
    image = sitk.GetImageFromArray(array)
    geometry.apply_to(image)

    def verify(tmp: str) -> None:
        # ITK's NIfTI writer reports no failed write (full disk, file-size limit): read the file back, header
        # and voxels, and compare with what was meant.
        if tmp.lower().endswith((".nii", ".nii.gz")):
            _check_nifti_complete(tmp)
        back = sitk.ReadImage(tmp)
        if not Geometry.from_sitk(back).matches(geometry):
            raise WriteCheckError("the header read back describes another grid")
        if not np.array_equal(sitk.GetArrayViewFromImage(back), array, equal_nan=array.dtype.kind == "f"):
            raise WriteCheckError("the voxels read back differ")

    with atomic_path(path, verify) as tmp:
        with _captured_stderr() as messages:  # ITK's complaints of a failed write: the error says it in one line
            sitk.WriteImage(image, tmp, useCompression=True)
    if messages:
        print("\n".join(messages), file=sys.stderr)


def read_geometry(path: PathLike) -> Geometry:
    """The geometry of a volume, from its header alone where the format allows (DICOM reads the series).

    The header gets the same checks as for reading the volume (regular files, claimed size, orthonormal axes).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return read_volume(path).geometry
    reader, _ = _read_information(path)
    size, spacing = reader.GetSize(), reader.GetSpacing()
    dimension = len(size)
    direction = np.asarray(reader.GetDirection()).reshape(dimension, dimension)[:3, :3]
    return Geometry(size=tuple(int(s) for s in size[:3]), spacing=tuple(float(s) for s in spacing[:3]),  # type: ignore
                    origin=tuple(float(o) for o in reader.GetOrigin()[:3]),  # type: ignore[arg-type]
                    direction=tuple(float(d) for d in direction.ravel()))


def check_readable_file(path: str) -> None:
    """The checks every file read starts with: it exists, is a regular file (not a FIFO or device, which would
    hang or never end), is readable and is not empty."""
    if not os.path.lexists(path):
        raise InputError(path, "does not exist")
    result = _stat_regular(path, path, "file")
    if not os.access(path, os.R_OK):
        raise InputError(path, "cannot be read (permission denied)")
    if result.st_size == 0:
        raise InputError(path, "is an empty file")
