"""``maclcore demo``: the whole pipeline on synthetic cardiac phantoms, no data needed."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from ..demo import DemoConfig, quick, run_demo
from ..runtime.progress import Reporter
from .options import given


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    defaults = DemoConfig()
    parser = subparsers.add_parser(
        "demo", help="run the whole pipeline on synthetic cardiac phantoms",
        description="Generate synthetic cardiac phantoms, pretrain with MACL on the unlabelled images, finetune on "
                    f"{defaults.labelled} labelled phantoms from random init and from the pretrained model, predict "
                    "held-out phantoms, print Dice per class and write predictions, a report and an overlay PNG.")
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--pretrain-epochs", type=int, help=f"default {defaults.pretrain_epochs}")
    parser.add_argument("--finetune-epochs", type=int, help=f"default {defaults.finetune_epochs}")
    parser.add_argument("--unlabelled", type=int, help=f"unlabelled phantoms for pretraining (default {defaults.unlabelled})")
    parser.add_argument("--seed", type=int, help=f"default {defaults.seed}")
    parser.add_argument("--no-pretrain", action="store_true", help="skip pretraining (finetune from random init only)")
    parser.add_argument("--quick", action="store_true", help="a tiny run that only checks the machinery")
    return parser


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    config = replace(DemoConfig(), **given(args, pretrain_epochs="pretrain_epochs", finetune_epochs="finetune_epochs",
                                           unlabelled="unlabelled", seed="seed"), pretrain=not args.no_pretrain)
    if args.quick:
        config = quick(config)
    report = run_demo(args.out, config, device=args.device, reporter=reporter)
    reporter.close()
    if args.progress != "json":
        for arm, table in report["tables"].items():
            print(f"\n== {arm} (test phantoms) ==\n{table}")
        print(f"\nmean foreground Dice: " + ", ".join(f"{arm} {d:.4f}" for arm, d in report["mean_dice"].items()))
        print(f"overlay: {report['overlay']}\nreport: {args.out}/report.json ({report['seconds']} s)")
    sys.stdout.flush()
    return 0
