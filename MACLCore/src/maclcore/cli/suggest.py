"""``maclcore suggest``: which unlabelled volumes to annotate next."""

from __future__ import annotations

import argparse
import sys

from ..active.suggest import format_table, suggest
from ..io.guard import refuse_overwriting_inputs
from ..runtime.progress import Reporter
from .options import add_stop_file_option


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "suggest", help="rank unlabelled volumes by how much annotating them should help",
        description="Rank unlabelled volumes for annotation: the current model's uncertainty (entropy of its "
                    "prediction averaged over 4 in-plane rotations) times diversity (distance in the encoder's "
                    "feature space to the labelled volumes and to the volumes ranked before; near-duplicates "
                    "score ~0). Prints a table, best first.")
    parser.add_argument("--model", required=True, help="segmentation model file (maclcore finetune)")
    parser.add_argument("--images", required=True, nargs="+",
                        help="candidate volumes: image files, DICOM series folders, or folders of images")
    parser.add_argument("--labelled", nargs="+", default=[],
                        help="images already annotated (files or folders; their label maps are not needed); "
                             "candidates among them are left out")
    parser.add_argument("--top", type=int, help="show only the first K suggestions (default: all)")
    parser.add_argument("--json", help="also write the ranking with every score to this JSON file")
    parser.add_argument("--rotations", type=int, choices=(1, 2, 4), default=4,
                        help="test-time rotations by multiples of 90 degrees (default 4; 1: no test-time "
                             "augmentation, faster)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default 16; "
                                                                   "halved automatically when memory runs out)")
    add_stop_file_option(parser)
    return parser


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    refuse_overwriting_inputs([("json_path", args.json)],  # before any work
                              [("model", args.model), ("images", args.images), ("labelled", args.labelled)])
    report = suggest(args.model, args.images, args.labelled, top=args.top, json_path=args.json, device=args.device,
                     turns=args.rotations, batch_size=args.batch_size, reporter=reporter,
                     stop_file=args.stop_file)
    if args.progress != "json":
        print(format_table(report), file=sys.stdout)
    return 0
