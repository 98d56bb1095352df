"""What an image file's header claims, checked before any voxel is read.

A 200-byte file whose header claims 10 GB, a detached header whose data file is a FIFO or ``/dev/zero``, a
compressed file that ends early, a skewed direction matrix: each is refused here, from the header and the
file system alone, so that a false header costs neither memory nor time (ITK would allocate the claimed
volume first, or pad missing data with zeros). :mod:`maclcore.io.volume` calls these checks.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from ..errors import InputError


# The largest volume read: 2**31 voxels (8 GB as float32) is far beyond any scan; more is a false header.
MAX_VOXELS = 2 ** 31
# Deflate (gzip, zlib) expands data at most ~1032:1: claimed voxel data beyond that is a false header.
_DEFLATE_RATIO = 1100
_HEADER_LIMIT = 1 << 20  # bytes of a text header (NRRD, MetaIO) looked at


@dataclass(frozen=True)
class _DataLayout:
    """Where an image file's voxel data lies and how it is encoded, read from the header's text."""

    data_file: str  # the file holding the voxels (the image file itself when attached)
    offset: int  # where the voxels begin in ``data_file`` (0 for a detached data file)
    encoding: str  # "raw", "deflate" (gzip/zlib), "bzip2", "text" or "unknown"
    dtype: Optional[np.dtype] = None  # NIfTI: the voxels' type, for the scan for NaN that ITK hides


def _file_kind(mode: int) -> str:
    import stat

    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"


def _stat_regular(path: str, owner: str, role: str) -> os.stat_result:
    """``os.stat`` of a file that must be a regular file; ``owner`` is the file named in the error."""
    import stat

    prefix = "" if owner == path else f"names the {role} {path}, which "
    try:
        result = os.stat(path)
    except FileNotFoundError:
        problem = "is a broken symbolic link" if os.path.islink(path) else "does not exist"
        raise InputError(owner, prefix + problem) from None
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            raise InputError(owner, prefix + "is a symbolic link loop") from None
        raise InputError(owner, prefix + f"cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(result.st_mode):
        raise InputError(owner, prefix + f"is {_file_kind(result.st_mode)}, not a regular file; give an image file"
                         if owner == path else prefix + f"is {_file_kind(result.st_mode)}, not a regular file")
    return result


def _nifti_layout(header: bytes) -> Optional[Tuple[int, int, Optional[np.dtype]]]:
    """(data start, data end, float dtype or None) of a single-file NIfTI-1 or NIfTI-2 (None: not NIfTI)."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims, bitpix = struct.unpack(order + "8h", header[40:56]), struct.unpack(order + "h", header[72:74])[0]
            datatype = struct.unpack(order + "h", header[70:72])[0]
            offset, minimum = struct.unpack(order + "f", header[108:112])[0], 352
        elif len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            dims, bitpix = struct.unpack(order + "8q", header[16:80]), struct.unpack(order + "h", header[14:16])[0]
            datatype = struct.unpack(order + "h", header[12:14])[0]
            offset, minimum = struct.unpack(order + "q", header[168:176])[0], 544
        else:
            continue
        start = int(offset) if math.isfinite(offset) and offset > minimum else minimum
        count = math.prod(max(1, d) for d in dims[1:1 + min(max(dims[0], 0), 7)])
        dtype = {16: np.dtype(order + "f4"), 64: np.dtype(order + "f8")}.get(datatype)
        return start, start + count * max(bitpix, 0) // 8, dtype
    return None


def _nifti_data_end(header: bytes) -> Optional[int]:
    """Where the voxel data of a single-file NIfTI-1 or NIfTI-2 ends, from its header (None: not NIfTI)."""
    layout = _nifti_layout(header)
    return layout[1] if layout else None


def _check_nifti_complete(path: str) -> None:
    """ITK fills a NIfTI file that ends early with zeros, and reads NaN voxels as zeros, silently: refuse both.

    One streaming pass over the (decompressed) data; nothing the size of the volume is allocated.
    """
    opener: Callable[..., Any] = gzip.open if path.lower().endswith(".gz") else open
    bad, carry = 0, b""
    try:
        with opener(path, "rb") as stream:
            header = stream.read(544)
            layout, present = _nifti_layout(header), len(header)
            if layout is None:
                return
            start, end, dtype = layout
            pending = header[start:end] if present > start else b""
            while True:
                if dtype is not None and pending:
                    data = carry + pending
                    usable = len(data) - len(data) % dtype.itemsize
                    values = np.frombuffer(data[:usable], dtype=dtype)
                    bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                    carry = data[usable:]
                if present >= end:
                    break
                chunk = stream.read(1 << 22)
                if not chunk:
                    break
                first = present
                present += len(chunk)
                pending = chunk[max(0, start - first):max(0, end - first)]
    except (EOFError, OSError, zlib.error):
        raise InputError(path, "is truncated or corrupt (its compressed data ends early)") from None
    if present < end:
        raise InputError(path, f"is truncated (its voxel data ends early: {present} of {end} bytes)")
    if bad:
        raise InputError(path, f"contains {bad} NaN or infinite voxel values")


def _text_header(path: str) -> Tuple[bytes, str]:
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_LIMIT)
    return head, head.decode("latin-1")


def _several_files(path: str, spec: str) -> InputError:
    return InputError(path, f"names several data files ({spec!r}); only a single data file is supported")


def _nrrd_layout(path: str) -> Optional[_DataLayout]:
    head, text = _text_header(path)
    if not text.startswith("NRRD"):
        return None
    end = min((i for i in (text.find("\n\n"), text.find("\r\n\r\n")) if i >= 0), default=-1)
    fields: Dict[str, str] = {}
    for line in (text[:end] if end >= 0 else text).splitlines()[1:]:
        if line.startswith("#") or ": " not in line:
            continue  # comments and key:=value pairs (where ":=" comes before ": ")
        key, value = line.split(": ", 1)
        if ":=" in key:
            continue
        fields[key.strip().lower()] = value.strip()
    encoding = {"raw": "raw", "gz": "deflate", "gzip": "deflate", "bz2": "bzip2", "bzip2": "bzip2", "txt": "text",
                "text": "text", "ascii": "text", "hex": "text"}.get(fields.get("encoding", "raw").lower(), "unknown")
    spec = fields.get("data file", fields.get("datafile"))
    if spec is not None:
        if spec.upper().startswith("LIST") or len(spec.split()) > 1:
            raise _several_files(path, spec)
        return _DataLayout(os.path.join(os.path.dirname(os.path.abspath(path)), spec), 0, encoding)
    if end < 0:
        return _DataLayout(path, len(head), "unknown")  # header longer than looked at: leave it to the reader
    return _DataLayout(path, end + (2 if text[end:end + 2] == "\n\n" else 4), encoding)


def _meta_layout(path: str) -> Optional[_DataLayout]:
    _, text = _text_header(path)
    fields: Dict[str, str] = {}
    position, data_spec = 0, None
    for line in text.splitlines(keepends=True):
        position += len(line)
        if "=" not in line:
            break
        key, value = (part.strip() for part in line.split("=", 1))
        fields[key.lower()] = value
        if key.lower() == "elementdatafile":
            data_spec = value
            break
    if data_spec is None or "ndims" not in fields:
        return None
    compressed = fields.get("compresseddata", "false").lower() == "true"
    encoding = "deflate" if compressed else "raw"
    if data_spec.upper() == "LOCAL":
        return _DataLayout(path, position, encoding)
    if data_spec.upper().startswith("LIST") or "%" in data_spec or len(data_spec.split()) > 1:
        raise _several_files(path, data_spec)
    return _DataLayout(os.path.join(os.path.dirname(os.path.abspath(path)), data_spec), 0, encoding)


def _data_layout(path: str) -> Optional[_DataLayout]:
    """Where ``path``'s voxels are, from its header (None: a format whose layout is left to ITK)."""
    lower = path.lower()
    if lower.endswith((".nrrd", ".nhdr")):
        return _nrrd_layout(path)
    if lower.endswith((".mha", ".mhd")):
        return _meta_layout(path)
    if lower.endswith((".nii", ".nii.gz")):
        with (gzip.open if lower.endswith(".gz") else open)(path, "rb") as stream:  # type: ignore[operator]
            try:
                layout = _nifti_layout(stream.read(544))
            except (EOFError, OSError, zlib.error):
                layout = None
        if layout is not None:
            compressed = lower.endswith(".gz")  # then the header's offset counts decompressed bytes
            return _DataLayout(path, 0 if compressed else layout[0], "deflate" if compressed else "raw", layout[2])
    return None


def _pixel_bytes(pixel_id: int) -> int:
    """Bytes per component of an ITK pixel type."""
    import SimpleITK as sitk

    sizes = {"Int8": 1, "UInt8": 1, "Int16": 2, "UInt16": 2, "Int32": 4, "UInt32": 4, "Int64": 8, "UInt64": 8,
             "Float32": 4, "Float64": 8, "ComplexFloat32": 8, "ComplexFloat64": 16}
    for name, size in sizes.items():
        for prefix in ("sitk", "sitkVectorOf"):
            if getattr(sitk, prefix + name, None) == pixel_id:
                return size
    return 1


def _physical_memory() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_claims(path: str, layout: Optional[_DataLayout], size: Tuple[int, ...], components: int,
                  pixel_bytes: int) -> None:
    """Refuse, before anything is allocated, a header claiming more voxels than its file or this machine holds."""
    voxels = math.prod(int(s) for s in size)
    needed = voxels * max(1, components) * pixel_bytes
    shape = "x".join(str(s) for s in size)
    if voxels > MAX_VOXELS:
        raise InputError(path, f"claims {voxels} voxels ({shape}), more than the {MAX_VOXELS} a volume may have; "
                               "its header is wrong or the file is not one scan")
    memory = _physical_memory()
    if memory is not None and needed > memory:
        raise InputError(path, f"claims {needed / 1e9:.3g} GB of voxel data ({shape}), more than this machine's "
                               f"{memory / 1e9:.3g} GB of memory")
    if layout is None:
        return
    available = max(0, os.path.getsize(layout.data_file) - layout.offset)
    where = "" if layout.data_file == path else f" in {layout.data_file}"
    if layout.encoding == "raw" and available < needed:
        raise InputError(path, f"is truncated (its header claims {needed} bytes of voxel data ({shape}), "
                               f"{available} are there{where})")
    if layout.encoding == "deflate" and needed > available * _DEFLATE_RATIO + 65536:
        raise InputError(path, f"claims {needed} bytes of voxel data ({shape}), more than its {available} bytes of "
                               f"compressed data{where} can hold: the file is truncated or its header is wrong")
    if layout.encoding == "text" and available < voxels:
        raise InputError(path, f"is truncated (its header claims {voxels} voxels ({shape}), its text data{where} "
                               f"has {available} characters)")


def _check_deflate_complete(path: str, layout: _DataLayout, needed: int) -> None:
    """Compressed MetaIO/NRRD data that ends early is read by ITK as a zero-padded volume: count what is there.

    Streams the data once through zlib (gzip or zlib framing), never holding more than a few MB.
    """
    inflater = zlib.decompressobj(32 + 15)  # 32: detect a gzip or zlib header
    produced = 0
    try:
        with open(layout.data_file, "rb") as handle:
            handle.seek(layout.offset)
            while produced < needed and not inflater.eof:
                chunk = inflater.unconsumed_tail or handle.read(1 << 20)
                if not chunk:
                    break
                produced += len(inflater.decompress(chunk, 1 << 24))
    except (OSError, zlib.error) as exc:
        raise InputError(path, f"has corrupt compressed voxel data ({exc})") from None
    if produced < needed:
        raise InputError(path, f"is truncated (its compressed voxel data ends early: {produced} of {needed} bytes)")


def _check_direction(path: str, direction: Tuple[float, ...], dimension: int) -> None:
    """Refuse a direction matrix that is not a rotation (or reflection): the grid would land in the wrong place."""
    matrix = np.asarray(direction, dtype=float).reshape(dimension, dimension)[:3, :3]
    if not np.all(np.isfinite(matrix)) or not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-3):
        shown = " ".join(f"{v:.4g}" for v in matrix.ravel())
        raise InputError(path, f"has a direction matrix whose axes are not perpendicular unit vectors ({shown}); "
                               "its voxels cannot be placed correctly")


def check_data_claims(path: str, size: Tuple[int, ...], pixel_bytes: int) -> None:
    """The header-first checks for a file whose voxels are read without ITK (a Slicer ``.seg.nrrd`` by pynrrd):
    its data file is a regular file, the claimed voxels fit in the file and in memory, compressed data is complete.
    """
    layout = _data_layout(path)
    if layout is not None and layout.data_file != path:
        _stat_regular(layout.data_file, path, "data file")
    _check_claims(path, layout, size, 1, pixel_bytes)
    if layout is not None and layout.encoding == "deflate":
        _check_deflate_complete(path, layout, math.prod(size) * pixel_bytes)
