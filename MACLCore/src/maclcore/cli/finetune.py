"""``maclcore finetune``: train the segmentation U-Net on labelled volumes."""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..errors import MaclError
from ..io.guard import refuse_overwriting_inputs, schema_file
from ..io.naming import resume_path
from ..io.pairing import find_images, pair_cases
from ..labels import get_schema
from ..training.finetune import FinetuneConfig, finetune
from ..runtime.progress import Reporter
from .options import (add_augmentation_options, add_loop_options, add_preprocessing_options, add_schema_option,
                      add_storage_options, augmentation_config, given, loop_config, storage_config)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "finetune", help="train a segmentation model on labelled volumes",
        description="Train the segmentation U-Net on labelled volumes (optionally starting from a MACL-pretrained "
                    "model) and write a self-describing model file. Images pair with label maps by the nnU-Net "
                    "naming (CASE_0000.nii.gz with CASE.nii.gz) or by equal names; label maps may be .seg.nrrd.")
    parser.add_argument("--images", help="folder of images (NIfTI, NRRD, MHA, DICOM series folders); without "
                                         "--images and --labels, the volumes of a labelled --cache-dir")
    parser.add_argument("--labels", help="folder of label maps or .seg.nrrd segmentations")
    parser.add_argument("--out", required=True, help="model file to write, e.g. model.pt")
    parser.add_argument("--unlabelled", nargs="+", metavar="IMAGES",
                        help="unlabelled volumes (folders and/or files) to learn from too: at 40%%, 60%% and 80%% "
                             "of the run the model's weight average labels them (flips averaged), and half of "
                             "each batch from the first pass on is crops of them, sure and stable pixels only "
                             "(benchmarks/results/acdc_defaults_cpu.json: what it adds)")
    parser.add_argument("--unlabelled-cache", metavar="DIR",
                        help="instead of --unlabelled: a slice cache of unlabelled volumes (maclcore cache), built "
                             "with the --spacing and --size of the labelled slices; no images or SimpleITK needed")
    terms = FinetuneConfig().unlabelled_loss
    group = parser.add_argument_group("self-training on --unlabelled volumes")
    group.add_argument("--unlabelled-passes", type=float, nargs="+", metavar="SHARE",
                       help=f"shares of the run at which they are (re)labelled (default "
                            f"{' '.join(f'{p:g}' for p in terms.passes)})")
    group.add_argument("--unlabelled-share", type=float,
                       help=f"share of each batch taken from them after the first pass (default {terms.share:g})")
    group.add_argument("--unlabelled-confidence", type=float,
                       help=f"pixels the model is less sure of are ignored (default {terms.confidence:g})")
    group.add_argument("--unlabelled-no-tta", dest="unlabelled_tta", action="store_false", default=None,
                       help="label them without averaging the flips (4x faster labelling passes)")
    group.add_argument("--unlabelled-copy-paste", type=float, metavar="SIDE",
                       help=f"swap a square of this side (share of the crop, e.g. 0.67) between each of their crops "
                            f"and a labelled crop (default {terms.copy_paste:g}: off)")
    parser.add_argument("--init", help="start from this pretrained (maclcore pretrain) or segmentation model; a "
                                       "segmentation model is continued (all weights, its preprocessing) and "
                                       "recorded as the new model's parent in its lineage")
    defaults = FinetuneConfig()
    parser.add_argument("--lr", type=float, help=f"Adam learning rate (default {defaults.lr})")
    parser.add_argument("--warmup", type=float,
                        help=f"fraction of the steps over which the learning rate rises to --lr (default {defaults.warmup})")
    parser.add_argument("--crop", type=int, metavar="PIXELS",
                        help="train on crops of this side (a multiple of 16) around the labelled structures; "
                             "inference still sees whole slices (default: about 240 mm; 0: whole slices)")
    parser.add_argument("--foreground", type=float,
                        help=f"share of crops centred on a labelled voxel of a class drawn uniformly, the rest at "
                             f"random (default {defaults.foreground})")
    parser.add_argument("--dice-weight", type=float,
                        help=f"weight of the Dice loss added to cross-entropy (default {defaults.dice_weight})")
    parser.add_argument("--val-fraction", type=float,
                        help=f"share of patients held out for model selection (default {defaults.val_fraction}; "
                             f"used with at least {defaults.min_val_groups} patients)")
    parser.add_argument("--min-val-groups", type=int,
                        help=f"hold out a validation split only with at least this many patients "
                             f"(default {defaults.min_val_groups})")
    add_schema_option(parser)
    add_loop_options(parser, defaults.loop)
    add_preprocessing_options(parser)
    add_augmentation_options(parser)
    add_storage_options(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    base = FinetuneConfig()
    passes = args.unlabelled_passes
    terms = replace(base.unlabelled_loss, **given(args, share="unlabelled_share", confidence="unlabelled_confidence",
                                                  tta="unlabelled_tta", copy_paste="unlabelled_copy_paste"),
                    **({"passes": tuple(passes)} if passes else {}))
    return replace(base, loop=loop_config(args, base.loop), augmentation=augmentation_config(args, base.augmentation),
                   unlabelled_loss=terms,
                   **given(args, lr="lr", warmup="warmup", crop="crop", foreground="foreground",
                           dice_weight="dice_weight", val_fraction="val_fraction",
                           min_val_groups="min_val_groups",
                           spacing="spacing", size="size", channels="channels"))


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    if bool(args.images) != bool(args.labels) or not (args.images or args.cache_dir):
        raise MaclError("give --images and --labels, or --cache-dir with a labelled slice cache built before "
                        "(maclcore cache --images ... --labels ...)")
    refuse_overwriting_inputs([("output", [args.out, resume_path(args.out)])],  # before any work
                              [("images", args.images), ("labels", args.labels), ("init", args.init),
                               *[("unlabelled", path) for path in args.unlabelled or []],
                               ("unlabelled_cache", args.unlabelled_cache),
                               ("labels_schema", schema_file(args.labels_schema))])
    config = config_from_args(args)  # a bad option is told before the data is read
    cases = pair_cases(args.images, args.labels) if args.images else []
    unlabelled = find_images(args.unlabelled) if args.unlabelled else []
    finetune(cases, args.out, config, schema=get_schema(args.labels_schema), init=args.init,
             device=args.device, reporter=reporter, resume=args.resume, stop_file=args.stop_file,
             storage=storage_config(args), unlabelled=unlabelled, unlabelled_cache=args.unlabelled_cache)
    return 0
