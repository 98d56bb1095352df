"""The naming rules every front end shares: file extensions, case names from file names, and the files that
live beside a model (its resumable state, its slice cache, its numbered successors).

Pure string and path rules with no torch or SimpleITK import, so the Slicer module uses them as they are
instead of keeping copies.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Iterable, Optional, Tuple

from ..errors import PathLike

VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SEG_EXTENSION = ".seg.nrrd"
LABEL_EXTENSIONS = (SEG_EXTENSION,) + VOLUME_EXTENSIONS
MODEL_EXTENSION = ".pt"
MAX_NAME_BYTES = 255  # a file name's limit on every common file system (ext4, APFS, NTFS, tmpfs)

# nnU-Net's image naming: CASE_0000.nii.gz is channel 0 of CASE.
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_NUMBERED = re.compile(r"^(?P<stem>.+)-(?P<number>\d{3,})$")


def split_extension(filename: str) -> Tuple[str, str]:
    """Split ``name.ext`` knowing the multi-part extensions (``.nii.gz``, ``.seg.nrrd``)."""
    lower = filename.lower()
    for ext in sorted(set(LABEL_EXTENSIONS), key=len, reverse=True):
        if lower.endswith(ext):
            return filename[: -len(ext)], filename[-len(ext):]
    return os.path.splitext(filename)


def short_name(name: str, reserve: int = 0) -> str:
    """``name`` when it fits in a file name with ``reserve`` bytes to spare; else a stable hash of it.

    The hash keeps the extension (writers choose the format by it) and is the same for the same ``name``, so
    files derived from a long but legal name (temp files, locks, a model's resumable state) are found again.
    """
    if len(os.fsencode(name)) + reserve <= MAX_NAME_BYTES:
        return name
    extension = split_extension(name)[1]
    if len(os.fsencode(extension)) > 32:
        extension = ""
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:32] + extension


def _beside(model: PathLike, suffix: str) -> str:
    directory, name = os.path.split(model_stem(model))
    return os.path.join(directory, short_name(name + suffix))


def image_channel(stem: str) -> Optional[str]:
    """The nnU-Net channel number of a file stem (``CASE_0001`` -> ``"0001"``); None when it has none."""
    match = _CHANNEL.match(stem)
    return match.group("channel") if match else None


def case_name(path: PathLike) -> str:
    """The case a file or DICOM folder holds: its name without extension and without a ``_NNNN`` channel
    suffix (``CASE_0000.nii.gz`` and ``CASE.seg.nrrd`` are both ``CASE``; an existing folder keeps its whole
    name, dots included)."""
    path = os.path.normpath(os.fspath(path))
    base = os.path.basename(path)
    stem = base if os.path.isdir(path) else split_extension(base)[0]
    match = _CHANNEL.match(stem)
    return match.group("case") if match else stem


MAX_CASE_NAME = 120  # characters (ASCII here) of a case name made from a free-form name


def safe_case_name(name: str, taken: Iterable[str] = ()) -> str:
    """A file-safe case name made from any name (e.g. a Slicer node's), unique among ``taken``, that
    :func:`case_name` reads back unchanged (it never ends in a ``_NNNN`` channel suffix)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "case"
    # Files are named CASE_0000.seg.nrrd and get temp prefixes: keep well under the 255-byte name limit.
    safe = safe[:MAX_CASE_NAME].rstrip("_") or "case"
    if _CHANNEL.match(safe):
        safe = safe[:-5] + "-" + safe[-4:]
    taken = set(taken)
    candidate, number = safe, 2
    while candidate in taken:
        candidate, number = f"{safe}-{number}", number + 1
    return candidate


def model_stem(model: PathLike) -> str:
    """``MODEL.pt`` -> ``MODEL`` (a path without the model extension is its own stem)."""
    model = os.fspath(model)
    return model[: -len(MODEL_EXTENSION)] if model.endswith(MODEL_EXTENSION) else model


def resume_path(model: PathLike) -> str:
    """``MODEL.pt`` -> ``MODEL.resume.pt``: the resumable state kept while a run is unfinished."""
    return _beside(model, ".resume" + MODEL_EXTENSION)


def cache_path(model: PathLike) -> str:
    """``MODEL.pt`` -> ``MODEL.cache``: where slices that do not fit in memory go when no cache folder is given."""
    return _beside(model, ".cache")


def next_model_path(current: PathLike) -> str:
    """``model.pt`` -> ``model-002.pt``, ``model-002.pt`` -> ``model-003.pt``: the first number above every
    numbered sibling, so that a new model never overwrites an earlier one."""
    folder, file_name = os.path.split(os.path.abspath(os.fspath(current)))
    stem = model_stem(file_name)
    match = _NUMBERED.match(stem)
    stem = match.group("stem") if match else stem
    numbers = [1]
    for entry in os.listdir(folder) if os.path.isdir(folder) else []:
        found = _NUMBERED.match(model_stem(entry)) if entry.endswith(MODEL_EXTENSION) else None
        if found and found.group("stem") == stem:
            numbers.append(int(found.group("number")))
    return os.path.join(folder, f"{stem}-{max(numbers) + 1:03d}{MODEL_EXTENSION}")
