"""Argument helpers shared by the subcommands: settings dataclasses overridden by the options given."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Tuple

from ..data.augment import AugmentationConfig
from ..labels import SCHEMAS
from ..training.loop import LoopConfig
from ..data.storage import SliceStorage


# Engine settings (configuration fields and API arguments, as the engine's messages name them) and the
# options that set them. A setting that no option sets is shown under its own name.
FLAGS = {
    "epochs": "--epochs", "time_budget": "--time-budget", "ema_decay": "--ema-decay", "crop": "--crop",
    "foreground": "--foreground", "batch_size": "--batch-size", "steps_per_epoch": "--steps-per-epoch", "seed": "--seed",
    "checkpoint_every": "--checkpoint-every", "amp": "--no-amp", "compile": "--compile", "resume": "--resume",
    "stop_file": "--stop-file", "lr": "--lr", "warmup": "--warmup", "dice_weight": "--dice-weight",
    "val_fraction": "--val-fraction", "min_val_groups": "--min-val-groups", "spacing": "--spacing", "size": "--size",
    "channels": "--channels", "labels_schema": "--labels-schema", "device": "--device", "init": "--init",
    "output": "--out", "images": "--images", "labels": "--labels", "format": "--format", "top": "--top",
    "turns": "--rotations", "json_path": "--json", "variant": "--variant", "decoder_depth": "--decoder-depth",
    "lambdas": "--lambdas", "temperature": "--temperature", "threshold": "--threshold",
    "augmentation.rotation": "--rotation", "augmentation.translation": "--translation",
    "augmentation.scale": "--scale", "augmentation": "--rotation/--translation/--scale",
    "augmentation.contrast": "--contrast", "augmentation.blur": "--blur",
    "storage.cache_dir": "--cache-dir", "storage.max_memory": "--max-memory",
    "storage.cache_dtype": "--cache-dtype", "model": "--model", "pred": "--pred",
    "pretrain_epochs": "--pretrain-epochs", "finetune_epochs": "--finetune-epochs", "unlabelled": "--unlabelled",
    "unlabelled_cache": "--unlabelled-cache",
    "labelled": "--labelled", "unlabelled_loss.passes": "--unlabelled-passes",
    "unlabelled_loss.share": "--unlabelled-share", "unlabelled_loss.confidence": "--unlabelled-confidence",
    "unlabelled_loss.copy_paste": "--unlabelled-copy-paste",
}


def flag_name(setting: str) -> str:
    """The command-line option that sets an engine setting (the setting's own name when none does)."""
    return FLAGS.get(setting, setting)


def int_list(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _pair(text: str) -> Tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers LOW,HIGH, got {text!r}") from None
    return low, high


def add_loop_options(parser: argparse.ArgumentParser, defaults: LoopConfig) -> None:
    group = parser.add_argument_group("training length")
    group.add_argument("--time-budget", type=float, metavar="MINUTES",
                       help="minutes the run may take, reading the data included: the first steps are timed, then "
                            "the number of steps is fixed so that it ends on time and the learning-rate schedule "
                            "completes (default: 10 on a CPU unless --epochs is given, none on a GPU; 0: none)")
    group.add_argument("--epochs", type=int,
                       help="passes over the training slices (default: as many as the time budget allows, "
                            "100 without a budget; with --time-budget an upper bound)")
    group.add_argument("--ema-decay", type=float,
                       help="keep an average of the weights with this decay as the model (0: the weights "
                            f"themselves; default {defaults.ema_decay or 0})")
    group.add_argument("--batch-size", type=int, help=f"slices per step and process (default {defaults.batch_size})")
    group.add_argument("--steps-per-epoch", type=int,
                       help="steps per epoch (default: one pass over the slices)")
    group.add_argument("--seed", type=int, help=f"random seed (default {defaults.seed})")
    group.add_argument("--checkpoint-every", type=int,
                       help=f"save the resumable state every N epochs (default {defaults.checkpoint_every})")
    group.add_argument("--no-amp", action="store_true",
                       help="train in float32 (default: bf16 autocast, on CUDA and on CPUs)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the network: a slower start, faster steps (worth it on a GPU)")
    group.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from OUT's .resume.pt state")
    group.add_argument("--stop-file", help="stop cleanly (resumable) when this file appears; the portable "
                                           "cancel used by the Slicer module (Ctrl-C and SIGTERM work too)")


def add_stop_file_option(parser: argparse.ArgumentParser) -> None:
    """``--stop-file`` of the inference commands (predict, suggest): checked between volumes."""
    parser.add_argument("--stop-file", help="stop cleanly before the next volume when this file appears (exit "
                                            "code 130, no partial output); the portable cancel used by the "
                                            "Slicer module")


def loop_config(args: argparse.Namespace, base: LoopConfig) -> LoopConfig:
    config = replace(base, **given(args, epochs="epochs", time_budget="time_budget", batch_size="batch_size",
                                   steps_per_epoch="steps_per_epoch", seed="seed", checkpoint_every="checkpoint_every"),
                     amp=base.amp and not args.no_amp, compile=base.compile or args.compile)
    if args.ema_decay is not None:
        config = replace(config, ema_decay=args.ema_decay or None)
    return config


def add_augmentation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("augmentation (random affine and intensity, on the device)")
    defaults = AugmentationConfig()
    group.add_argument("--rotation", type=float, help=f"max rotation in degrees (default {defaults.rotation})")
    group.add_argument("--translation", type=float,
                       help=f"max shift as a fraction of the slice size (default {defaults.translation})")
    group.add_argument("--scale", type=_pair, metavar="LOW,HIGH",
                       help=f"zoom range (default {defaults.scale[0]},{defaults.scale[1]})")
    group.add_argument("--contrast", type=_pair, metavar="LOW,HIGH",
                       help=f"contrast factor range about each slice's mean (default {defaults.contrast[0]:g},"
                            f"{defaults.contrast[1]:g}: off)")
    group.add_argument("--blur", type=float, metavar="PIXELS",
                       help=f"largest Gaussian blur sigma, applied to a third of the slices (default {defaults.blur:g}: off)")
    group.add_argument("--no-augment", action="store_true", help="train without augmentation")
    group.add_argument("--no-flip", action="store_true", help="no random mirroring (finetuning mirrors by default)")


def augmentation_config(args: argparse.Namespace, base: AugmentationConfig) -> AugmentationConfig:
    return replace(base, **given(args, rotation="rotation", translation="translation", scale="scale",
                                 contrast="contrast", blur="blur"),
                   enabled=base.enabled and not args.no_augment, flip=base.flip and not args.no_flip)


def add_preprocessing_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("preprocessing (derived from the training data when not given)")
    group.add_argument("--spacing", type=float, help="in-plane spacing f_r slices are resampled to, in mm")
    group.add_argument("--size", type=int, help="square size f_s slices are zero-padded to (multiple of 16)")
    group.add_argument("--channels", type=int_list,
                       help="U-Net widths of the 4 encoder blocks and the centre, e.g. 32,64,128,256,512")


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data in memory or on disk")
    group.add_argument("--cache-dir", help="keep the preprocessed slices in this folder and reuse them while the "
                                           "images are unchanged (rebuilt when stale); a cache built elsewhere "
                                           "trains without the images or SimpleITK")
    group.add_argument("--max-memory", type=float, metavar="GB",
                       help="GB of slices to hold in the training device's memory; more stream from the cache "
                            "batch by batch (default: half the free GPU memory or RAM)")
    group.add_argument("--cache-dtype", choices=("float32", "float16"),
                       help="precision of cached images: float32 (exact, default) or float16 (half the disk)")


def storage_config(args: argparse.Namespace) -> SliceStorage:
    return SliceStorage(cache_dir=args.cache_dir, max_memory=args.max_memory, cache_dtype=args.cache_dtype)


def add_schema_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels-schema", default="cardiac", metavar="NAME_OR_JSON",
                        help=f"names and colours of the labels: {', '.join(sorted(SCHEMAS))} (default: cardiac = "
                             "RV cavity, LV myocardium, LV cavity), or a JSON file {\"names\": [...], "
                             "\"colors\": [[r, g, b], ...]} with colours in 0..1")


def given(args: argparse.Namespace, **mapping: str) -> dict:
    """{field: value} for the options the user actually gave (argparse default None = not given)."""
    return {name: getattr(args, option) for name, option in mapping.items() if getattr(args, option) is not None}
