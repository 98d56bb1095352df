"""``maclcore evaluate``: Dice, IoU and HD95 of predictions against reference labels."""

from __future__ import annotations

import argparse
import sys

from ..evaluation.evaluate import evaluate_folders, format_summary
from ..labels import get_schema
from ..io.guard import refuse_overwriting_inputs, schema_file
from ..runtime.progress import Reporter
from .options import add_schema_option


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", help="compare predictions with reference labels",
        description="Per case and per class Dice, IoU and HD95 (mm), with mean and std over cases. Predictions "
                    "pair with labels by case name.")
    parser.add_argument("--pred", required=True, help="folder of predicted label maps")
    parser.add_argument("--labels", required=True, help="folder of reference label maps")
    parser.add_argument("--json", help="write the full report (per case, per class, summary) to this JSON file")
    parser.add_argument("--no-hd95", action="store_true", help="skip the (slower) HD95 distance")
    add_schema_option(parser)
    return parser


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    refuse_overwriting_inputs([("json_path", args.json)],  # before any work
                              [("pred", args.pred), ("labels", args.labels),
                               ("labels_schema", schema_file(args.labels_schema))])
    report = evaluate_folders(args.pred, args.labels, get_schema(args.labels_schema), args.json,
                              with_hd95=not args.no_hd95, reporter=reporter)
    if args.progress != "json":
        print(format_summary(report), file=sys.stdout)
    return 0
