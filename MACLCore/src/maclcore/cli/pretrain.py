"""``maclcore pretrain``: self-supervised MACL pretraining on unlabelled volumes."""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..errors import MaclError
from ..io.guard import refuse_overwriting_inputs
from ..io.naming import resume_path
from ..io.pairing import find_images
from ..losses.mlc import MLCLossConfig
from ..models.macl import MACLNetConfig
from ..models.variants import VARIANTS
from ..training.pretrain import PretrainConfig, pretrain, pretrain_config
from ..runtime.progress import Reporter
from .options import (add_augmentation_options, add_loop_options, add_preprocessing_options, add_storage_options,
                      augmentation_config, given, loop_config, storage_config)


def _floats(text: str) -> tuple:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pretrain", help="self-supervised pretraining on unlabelled volumes",
        description="MACL pretraining of the U-Net encoder and first decoder blocks on unlabelled volumes (no "
                    "labels needed; any readable volume works). Several GPUs: run the same command under "
                    "torchrun --nproc_per_node N -m maclcore pretrain ...")
    parser.add_argument("--images", nargs="+",
                        help="folders and/or files of volumes (NIfTI, NRRD, MHA, DICOM series folders); may be "
                             "left out with a --cache-dir built before")
    parser.add_argument("--out", required=True, help="pretrained model file to write, e.g. pretrained.pt")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="macl",
                        help="pretraining method: " + "; ".join(f"{k} = {v.label}" for k, v in VARIANTS.items()))
    base = PretrainConfig()
    parser.add_argument("--lr", type=float, help=f"SGD learning rate (default {base.lr})")
    parser.add_argument("--warmup", type=float,
                        help=f"fraction of the steps with a linear learning-rate warm-up (default {base.warmup})")
    parser.add_argument("--decoder-depth", type=int, help="decoder blocks pretrained (0-4; default from --variant)")
    parser.add_argument("--lambdas", type=_floats, help="weights of L_g, L_d, L_ER (default from --variant)")
    parser.add_argument("--temperature", type=float, help=f"contrastive temperature (default {base.loss.temperature})")
    parser.add_argument("--threshold", type=float,
                        help=f"slices closer than this in normalised position are positives (default {base.loss.threshold})")
    add_loop_options(parser, base.loop)
    add_preprocessing_options(parser)
    add_augmentation_options(parser)
    add_storage_options(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    config = pretrain_config(args.variant)
    network: MACLNetConfig = replace(config.network, **given(args, decoder_depth="decoder_depth"))
    loss: MLCLossConfig = replace(config.loss, **given(args, lambdas="lambdas", temperature="temperature",
                                                       threshold="threshold"))
    return replace(config, network=network, loss=loss, loop=loop_config(args, config.loop),
                   augmentation=augmentation_config(args, config.augmentation),
                   **given(args, lr="lr", warmup="warmup", spacing="spacing", size="size", channels="channels"))


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    if not args.images and not args.cache_dir:
        raise MaclError("give --images, or --cache-dir with a slice cache built before")
    refuse_overwriting_inputs([("output", [args.out, resume_path(args.out)])], [("images", args.images)])
    storage = storage_config(args)
    cases = find_images(args.images) if args.images else []
    pretrain(cases, args.out, config_from_args(args), device=args.device, reporter=reporter,
             resume=args.resume, stop_file=args.stop_file, storage=storage)
    return 0
