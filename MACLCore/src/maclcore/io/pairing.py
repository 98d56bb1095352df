"""Find cases in folders and pair images with their label maps.

Pairing follows nnU-Net's naming (``CASE_0000.nii.gz`` with ``CASE.nii.gz``) or equal names
(``CASE.nrrd`` with ``CASE.seg.nrrd``); extensions may differ between image and label.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from ..errors import InputError, MaclError, PathLike
from .naming import LABEL_EXTENSIONS, SEG_EXTENSION, VOLUME_EXTENSIONS, case_name, image_channel, split_extension
from .volume import is_dicom_folder


@dataclass(frozen=True)
class Case:
    """One volume, with its label map when it has one."""

    name: str
    image: str
    label: Optional[str] = None


def _entries(folder: str, extensions: Sequence[str]) -> Dict[str, str]:
    """Case name -> path for the volumes in ``folder`` (DICOM series sub-folders count as volumes)."""
    if not os.path.exists(folder):
        raise InputError(folder, "does not exist")
    if not os.path.isdir(folder):
        raise InputError(folder, "is not a folder")
    found: Dict[str, str] = {}
    for entry in sorted(os.listdir(folder)):
        if entry.startswith("."):
            continue
        full = os.path.join(folder, entry)
        stem, ext = split_extension(entry)
        if os.path.isdir(full):
            if not is_dicom_folder(full):
                continue
            stem = entry
        elif ext.lower() not in extensions:
            continue
        if image_channel(stem) not in (None, "0000"):
            raise InputError(full, "is a second image channel; MACLCore segments single-channel volumes")
        name = case_name(full)
        if name in found:
            raise InputError(full, f"has the same case name {name!r} as {os.path.basename(found[name])}")
        found[name] = full
    return found


def find_images(sources: Sequence[PathLike]) -> List[Case]:
    """Cases from folders and/or files (a folder contributes every volume in it)."""
    cases: Dict[str, Case] = {}
    for source in sources:
        source = os.fspath(source)
        if os.path.isdir(source) and not is_dicom_folder(source):
            entries = _entries(source, VOLUME_EXTENSIONS)
        elif os.path.exists(source):
            entries = {case_name(source): source}
        else:
            raise InputError(source, "does not exist")
        for name, path in entries.items():
            if name in cases:
                raise InputError(path, f"has the same case name {name!r} as {cases[name].image}")
            cases[name] = Case(name=name, image=path)
    if not cases:
        raise MaclError(f"no volumes found in {', '.join(os.fspath(s) for s in sources)} "
                        f"(looked for {', '.join(VOLUME_EXTENSIONS)} and DICOM series folders)")
    return [cases[name] for name in sorted(cases)]


def pair_cases(images: PathLike, labels: PathLike,
               image_extensions: Sequence[str] = VOLUME_EXTENSIONS) -> List[Case]:
    """Pair every image in ``images`` with its label map in ``labels``; unmatched files are an error.

    ``image_extensions``: what counts as an image (LABEL_EXTENSIONS pairs predictions, .seg.nrrd included).
    """
    images, labels = os.fspath(images), os.fspath(labels)
    image_entries = _entries(images, image_extensions)
    label_entries = _entries(labels, LABEL_EXTENSIONS)
    if not image_entries:
        raise InputError(images, f"holds no volumes ({', '.join(VOLUME_EXTENSIONS)} or DICOM series folders)")
    missing = sorted(set(image_entries) - set(label_entries))
    if missing:
        raise InputError(labels, f"has no label map for {len(missing)} image(s): {', '.join(missing[:5])}"
                                 f"{' ...' if len(missing) > 5 else ''} (expected e.g. {missing[0]}.nii.gz "
                                 f"or {missing[0]}{SEG_EXTENSION})")
    extra = sorted(set(label_entries) - set(image_entries))
    if extra:
        raise InputError(images, f"has no image for label map(s): {', '.join(extra[:5])}")
    return [Case(name=name, image=image_entries[name], label=label_entries[name]) for name in sorted(image_entries)]
