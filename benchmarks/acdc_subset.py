"""Make a folder in nnU-Net layout holding chosen ACDC patients, as symbolic links to ../shared/data/acdc.

    python benchmarks/acdc_subset.py OUT --patients 1 2 3        # both frames (ED, ES) of each patient
    python benchmarks/acdc_subset.py OUT --range 11 20 --images-only

The data is read where it lies; nothing is copied (and nothing goes into the repository).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Dict, List, Sequence

DEFAULT_ACDC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "acdc")


def patients(root: str = DEFAULT_ACDC) -> List[int]:
    """Patient numbers present in the ACDC folder."""
    found = set()
    for name in os.listdir(os.path.join(root, "imagesTr")):
        match = re.match(r"patient(\d+)_", name)
        if match:
            found.add(int(match.group(1)))
    return sorted(found)


def frames(patient: int, root: str = DEFAULT_ACDC) -> Dict[str, Dict[str, str]]:
    """Case name -> {image, label} paths for both frames of a patient."""
    out = {}
    for frame in ("ED", "ES"):
        case = f"patient{patient:03d}_{frame}"
        out[case] = {"image": os.path.join(root, "imagesTr", f"{case}_0000.nii.gz"),
                     "label": os.path.join(root, "labelsTr", f"{case}.nii.gz")}
    return out


def make_subset(folder: str, chosen: Sequence[int], root: str = DEFAULT_ACDC, images_only: bool = False) -> str:
    """Link the chosen patients' frames into folder/imagesTr (and folder/labelsTr)."""
    for sub in ("imagesTr",) + (() if images_only else ("labelsTr",)):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for patient in chosen:
        for case, paths in frames(patient, root).items():
            links = [(paths["image"], os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))]
            if not images_only:
                links.append((paths["label"], os.path.join(folder, "labelsTr", f"{case}.nii.gz")))
            for source, target in links:
                if not os.path.lexists(target):
                    os.symlink(os.path.abspath(source), target)
    return folder


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--patients", type=int, nargs="*", default=[])
    parser.add_argument("--range", type=int, nargs=2, metavar=("FIRST", "LAST"))
    parser.add_argument("--images-only", action="store_true")
    parser.add_argument("--acdc", default=DEFAULT_ACDC)
    args = parser.parse_args(argv)
    chosen = list(args.patients)
    if args.range:
        available = set(patients(args.acdc))
        chosen += [p for p in range(args.range[0], args.range[1] + 1) if p in available]
    make_subset(args.out, chosen, args.acdc, args.images_only)
    print(f"{len(chosen)} patients -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
