"""``maclcore predict``: segment volumes with a trained model."""

from __future__ import annotations

import argparse

from ..inference.predict import output_paths, predict_files
from ..io.guard import refuse_overwriting_inputs
from ..io.pairing import find_images
from ..runtime.progress import Reporter
from .options import add_stop_file_option


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict", help="segment volumes with a trained model",
        description="Segment one or more volumes; each prediction lies on its input's grid (same size, spacing, "
                    "origin, direction). Writes .nii.gz, .nrrd or Slicer .seg.nrrd (named, coloured segments).")
    parser.add_argument("--model", required=True, help="model file from maclcore finetune")
    parser.add_argument("--image", required=True, nargs="+", help="image files, DICOM series folders, or folders of images")
    parser.add_argument("--out", required=True,
                        help="output file (one image: .nii.gz, .nrrd or .seg.nrrd) or folder (CASE.<format> per image)")
    parser.add_argument("--format", default="nii.gz", help="file format in an output folder: nii.gz, nrrd, "
                                                            "seg.nrrd, mha (default nii.gz)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default 16; "
                                                                   "halved automatically when memory runs out)")
    parser.add_argument("--no-postprocess", action="store_true",
                        help="the network's labels as they are (default: keep each label's largest connected "
                             "component; for the cardiac labels, within the largest component of all foreground, the "
                             "heart, then the background the myocardium's ring encloses becomes LV cavity)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="test-time augmentation: also segment each slice's flips and average (4x the network's "
                             "time, under a second a volume on a CPU; on ACDC 0.0 to +1.2 Dice points for models from "
                             "2-4 cases, -0.7 to +1.1 for ones from a single case). Default: on for models trained "
                             "with flips, as finetune's default recipe is; --no-tta: plain")
    add_stop_file_option(parser)
    return parser


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    images = [case.image for case in find_images(args.image)]
    refuse_overwriting_inputs([("output", output_paths(images, args.out, args.format))],  # before any work
                              [("images", args.image), ("model", args.model)])
    predict_files(args.model, images, args.out, fmt=args.format, device=args.device, batch_size=args.batch_size,
                  postprocess=not args.no_postprocess, reporter=reporter, stop_file=args.stop_file, tta=args.tta)
    return 0
