"""``maclcore cache``: preprocess volumes once into a slice cache that training reads (here or elsewhere)."""

from __future__ import annotations

import argparse

from ..data.cache import DTYPES, build_cache, read_manifest, stale_reason
from ..data.dataset import read_case_geometries
from ..data.preprocessing import plan_preprocessing
from ..errors import MaclError
from ..io.pairing import find_images, pair_cases
from ..labels import get_schema
from ..runtime.progress import Reporter
from .options import add_schema_option


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cache", help="preprocess volumes into a slice cache for training",
        description="Read and preprocess volumes once into a slice cache folder (reused while the images are "
                    "unchanged). Training reads it with --cache-dir, on this machine or on one without the images "
                    "or SimpleITK (copy the folder there).")
    parser.add_argument("--images", required=True, nargs="+", help="folders and/or files of volumes")
    parser.add_argument("--labels", help="folder of label maps: a labelled cache, for finetuning (needs exactly one "
                                         "--images folder)")
    parser.add_argument("--cache-dir", required=True, help="the cache folder to build or check")
    parser.add_argument("--spacing", type=float, help="in-plane spacing in mm (default: derived from the images)")
    parser.add_argument("--size", type=int, help="slice size in pixels (default: derived from the images)")
    parser.add_argument("--cache-dtype", choices=DTYPES, default="float32",
                        help="precision of the cached images (default float32)")
    add_schema_option(parser)
    return parser


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    if args.labels:
        if len(args.images) != 1:
            raise MaclError("--labels pairs with exactly one --images folder")
        cases, schema = pair_cases(args.images[0], args.labels), get_schema(args.labels_schema)
    else:
        cases, schema = find_images(args.images), None
    reason = stale_reason(read_manifest(args.cache_dir), cases, schema, args.cache_dtype, args.spacing, args.size)
    if reason is None:
        _say(args, reporter, f"{args.cache_dir}: up to date ({len(cases)} volumes)")
        return 0
    geometries = read_case_geometries(cases)
    plan = plan_preprocessing(geometries, spacing=args.spacing, size=args.size)
    reporter.stage("cache", len(cases))
    manifest = build_cache(args.cache_dir, cases, plan, [g.size[2] for g in geometries], schema, args.cache_dtype,
                           (args.spacing, args.size),
                           lambda index, count, name: reporter.progress("cache", index, count, case=name))
    reporter.done(output=args.cache_dir, metrics={"slices": manifest["count"]})
    _say(args, reporter, f"{args.cache_dir}: {manifest['count']} slices of {manifest['size']}x{manifest['size']} at "
                         f"{manifest['preprocessing']['spacing']} mm from {len(cases)} volumes")
    return 0


def _say(args: argparse.Namespace, reporter: Reporter, text: str) -> None:
    """The result line: on stdout for people, as a message event in JSON mode (stdout stays JSON lines)."""
    if args.progress == "json":
        reporter.message(text)
    else:
        print(text)
