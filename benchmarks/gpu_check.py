"""The GPU check: the GPU study's M = 2 and 4 cells (draw 0) and the pretraining speed benchmark, in one run of a
few minutes on a machine with neither the ACDC files nor SimpleITK.

    python benchmarks/gpu_check.py pack                # here (data + SimpleITK): caches in gpu_pack.tar.gz
    python benchmarks/gpu_check.py run --minutes 7     # there (carry gpu_pack.tar.gz): results JSON + table

``pack`` preprocesses, with the GPU study's spacing (benchmarks/configs/acdc_gpu.json) and one slice size for
all, float16 caches of: the labelled patients of draw 0 at M = 2 and at M = 4, the 10 evaluation patients (with
labels) and the study's 30 unlabelled pool patients (images only; its rule: never an evaluation or labelled
patient), writes ``pack.json`` and archives the folder as ``gpu_pack.tar.gz`` (gzip: the padded slices
shrink ~3x, so the pack fits the 64 MiB that travel to a lent GPU; ``run`` unpacks it).

``run`` first times the pretraining step with ``bench_pretrain.py`` (fast path vs a plain PyTorch reference,
about a minute), then finetunes, for M = 2 and 4, random init on the labelled cache alone and random init + self-training on
the unlabelled cache (``maclcore finetune --cache-dir ... --unlabelled-cache ...``, the same code path as from
files), with the study's widths and schedule (100 epochs of 25 steps, batch 16) capped by a time budget so that
the whole check ends within ``--minutes`` (the schedule still completes: the budget logic fixes the steps).
Each model segments the evaluation slices as ``predict`` does (whole slices, flips averaged, the post-processing)
and is scored per volume against the cached labels. Dice is measured on the preprocessed grid (the study's
spacing in-plane, the volumes' own slices), not on each scan's original grid as ``maclcore evaluate`` does;
labels resampled that way and back score ~0.95-0.97 Dice, so the two differ by a point or two; HD95 is not
reported. Results: benchmarks/results/gpu_check_<device type>.json (device name included) and the pretraining speed file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import environment, save_report  # noqa: E402

DEFAULT_PACK = os.path.join(HERE, "..", "gpu_pack")
DEFAULT_CONFIG = os.path.join(HERE, "configs", "acdc_gpu.json")
COUNTS = (2, 4)
ARMS = ("random", "self-training")


# -- here: the caches ------------------------------------------------------------------------------------------
def pack(config_path: str, out: str, unlabelled: int, draw: int = 0, dtype: str = "float16") -> Dict[str, Any]:
    """Build the caches of the check (see the module's docstring) in ``out``, images as ``dtype``; returns
    what ``pack.json`` holds."""
    from study import cases_of, draws, load_config, pool_of, unlabelled_patients

    from maclcore.data.cache import build_cache
    from maclcore.data.dataset import read_case_geometries
    from maclcore.data.preprocessing import plan_preprocessing, resampled_shape
    from maclcore.labels import CARDIAC

    config = load_config(config_path)
    pool = pool_of(config)
    chosen = draws(pool, COUNTS, draw + 1, config["seed"])
    sets = {f"M{m}": (cases_of(chosen[m][draw], config["data"]), CARDIAC) for m in COUNTS}
    sets["eval"] = (cases_of(config["eval_patients"], config["data"]), CARDIAC)
    others = unlabelled_patients(pool, draw, unlabelled, max(COUNTS))
    sets["unlabelled"] = (cases_of(others, config["data"], with_labels=False), None)
    geometries = {name: read_case_geometries(cases) for name, (cases, _) in sets.items()}
    # One size for every cache: a model trained on one segments the others' slices, and the self-training
    # reads the unlabelled slices with the labelled ones' plan.
    plan = plan_preprocessing([g for found in geometries.values() for g in found], spacing=config["spacing"])
    for name, (cases, schema) in sets.items():
        build_cache(os.path.join(out, name), cases, plan, [g.size[2] for g in geometries[name]], schema, dtype,
                    (plan.spacing, plan.size))
    # Each evaluation volume's slice region inside the padding: scored there only, as predict crops it.
    shapes = {case.name: list(resampled_shape(g, plan.spacing)) for case, g in zip(sets["eval"][0], geometries["eval"])}
    manifest = {"config": os.path.basename(config_path), "draw": draw, "spacing": plan.spacing, "size": plan.size,
                "eval_shapes": shapes,
                "labelled": {f"M{m}": chosen[m][draw] for m in COUNTS}, "eval_patients": config["eval_patients"],
                "unlabelled_patients": others, "channels": config["channels"], "finetune": config["finetune"],
                "seed": config["seed"]}
    with open(os.path.join(out, "pack.json"), "w") as handle:
        json.dump(manifest, handle, indent=1)
    with tarfile.open(out.rstrip(os.sep) + ".tar.gz", "w:gz") as archive:
        archive.add(out, arcname=os.path.basename(out.rstrip(os.sep)))
    return manifest


def unpack(pack_dir: str) -> None:
    """Unpack ``PACK.tar.gz`` beside it when the folder itself did not travel."""
    archive = pack_dir.rstrip(os.sep) + ".tar.gz"
    if not os.path.exists(os.path.join(pack_dir, "pack.json")) and os.path.exists(archive):
        with tarfile.open(archive) as opened:
            target = os.path.dirname(os.path.abspath(pack_dir))
            try:
                opened.extractall(target, filter="data")  # refuses links and paths outside the target
            except TypeError:  # a Python without extraction filters: the archive is our own
                opened.extractall(target)


# -- there: the cells ------------------------------------------------------------------------------------------
def score_cache(model_path: str, cache_dir: str, device: Any, shapes: Dict[str, Sequence[int]],
                batch_size: int = 32) -> Dict[str, Any]:
    """Segment every volume of a labelled slice cache as ``predict`` does and score it within its slices'
    ``shapes`` (rows, columns; the rest is padding): per-case Dice of each class on the cache's grid, and
    their means."""
    import torch

    from maclcore.data.cache import SliceCache
    from maclcore.data.preprocessing import pad_offsets
    from maclcore.evaluation.metrics import overlap_per_class
    from maclcore.inference.postprocess import clean_prediction
    from maclcore.inference.predict import load_segmentation_model, predict_slices, trained_with_flips

    model = load_segmentation_model(model_path, device)
    data = SliceCache.open(cache_dir).load(device)
    probabilities = predict_slices(model.network, data.images, batch_size, tta=trained_with_flips(model))
    predicted = probabilities.argmax(1).to(torch.uint8).cpu().numpy()
    truth, volumes = data.labels.cpu().numpy(), data.volumes.cpu().numpy()
    positions = data.positions.cpu().numpy()
    names = list(model.schema.names)
    cases: Dict[str, Dict[str, float]] = {}
    for index, case in enumerate(data.names):
        rows = np.flatnonzero(volumes == index)
        rows = rows[np.argsort(positions[rows], kind="stable")]  # slice order, as the post-processing expects
        height, width = shapes[case]
        top, left = pad_offsets((height, width), predicted.shape[-1])
        region = (slice(None), slice(top, top + height), slice(left, left + width))
        stack = np.ascontiguousarray(predicted[rows][region])
        clean_prediction(stack, model.schema)
        dice = overlap_per_class(stack, truth[rows][region], model.schema.num_classes)["dice"]
        cases[case] = {name: float(d) for name, d in zip(names, dice)}
    per_class = {name: float(np.mean([c[name] for c in cases.values()])) for name in names}
    return {"dice": per_class, "mean_dice": float(np.mean(list(per_class.values()))), "cases": cases}


def run_cells(pack_dir: str, work: str, minutes_per_model: float, device: Any, quick: bool = False,
              reporter: Any = None) -> List[Dict[str, Any]]:
    """Finetune and score every (M, arm) of the check; one result dict per cell."""
    from maclcore.data.storage import SliceStorage
    from maclcore.training.finetune import FinetuneConfig, finetune
    from maclcore.training.loop import LoopConfig

    with open(os.path.join(pack_dir, "pack.json")) as handle:
        manifest = json.load(handle)
    schedule = manifest["finetune"]
    base = FinetuneConfig()
    loop = LoopConfig(**{**base.loop.__dict__, "epochs": 2 if quick else schedule["epochs"],
                         "steps_per_epoch": 2 if quick else schedule["steps_per_epoch"],
                         "batch_size": 2 if quick else schedule["batch_size"], "time_budget": minutes_per_model,
                         "seed": manifest["seed"] + manifest["draw"], "validate_every": 0})
    channels = (4, 8, 8, 16, 16) if quick else tuple(manifest["channels"])
    results = []
    for m in COUNTS:
        for arm in ARMS:
            config = FinetuneConfig(loop=loop, channels=channels, val_fraction=0.0)
            model = os.path.join(work, f"{arm}_M{m}.pt")
            started = time.perf_counter()
            summary = finetune([], model, config, device=str(device), reporter=reporter,
                               storage=SliceStorage(cache_dir=os.path.join(pack_dir, f"M{m}")),
                               unlabelled_cache=os.path.join(pack_dir, "unlabelled") if arm != "random" else None)
            seconds = time.perf_counter() - started
            scored = score_cache(model, os.path.join(pack_dir, "eval"), device, manifest["eval_shapes"])
            plan = summary["plan"].get("line")
            results.append({"m": m, "arm": arm, "patients": manifest["labelled"][f"M{m}"],
                            "unlabelled_patients": manifest["unlabelled_patients"] if arm != "random" else [],
                            "finetune_minutes": round(seconds / 60, 2), "plan": plan,
                            "steps": summary["history"][-1]["step"], **scored})
            print(f"M = {m} {arm:>13}: mean Dice {scored['mean_dice']:.3f} ("
                  + ", ".join(f"{k} {v:.3f}" for k, v in scored["dice"].items())
                  + f") in {seconds / 60:.1f} min; {plan}", flush=True)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    making = commands.add_parser("pack", help="build the caches (here: needs the data and SimpleITK)")
    making.add_argument("--config", default=DEFAULT_CONFIG)
    making.add_argument("--out", default=DEFAULT_PACK)
    making.add_argument("--unlabelled", type=int, default=30, help="unlabelled pool patients (default: the study's 30)")
    running = commands.add_parser("run", help="train, score and time (there)")
    running.add_argument("--pack", default=DEFAULT_PACK)
    running.add_argument("--work", default=os.path.join(DEFAULT_PACK, "work"))
    running.add_argument("--minutes", type=float, default=7.0,
                         help="the whole check's time: models get what the speed benchmark leaves (default 7)")
    running.add_argument("--device", default=None, help="default: cuda when there is one, else cpu")
    running.add_argument("--quick", action="store_true", help="tiny network and 4 steps (to test the script)")
    running.add_argument("--no-speed", action="store_true", help="skip the pretraining speed benchmark")
    running.add_argument("--out", help="results JSON (default benchmarks/results/gpu_check_<device>.json)")
    args = parser.parse_args(argv)
    if args.command == "pack":
        manifest = pack(args.config, args.out, args.unlabelled)
        size = os.path.getsize(args.out.rstrip(os.sep) + ".tar.gz")
        print(f"{args.out}.tar.gz: {size / 2 ** 20:.1f} MiB, {manifest['spacing']} mm, {manifest['size']}² slices; "
              f"labelled {manifest['labelled']}, {len(manifest['unlabelled_patients'])} unlabelled patients")
        return 0

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    unpack(args.pack)
    started = time.perf_counter()
    os.makedirs(args.work, exist_ok=True)
    speed: Optional[str] = None
    if not args.no_speed:
        # The pretraining step at the study's size: fast path vs plain reference, bf16 and fp32 (about a minute);
        # a --quick run's numbers mean nothing and stay out of benchmarks/results.
        speed = (os.path.join(args.work, "pretrain_speed.json") if args.quick
                 else os.path.join(HERE, "results", f"pretrain_{device.type}.json"))
        command = [sys.executable, os.path.join(HERE, "bench_pretrain.py"), "--device", device.type, "--out", speed]
        command += ["--sizes", "64", "--batch-sizes", "4", "--steps", "2", "--warmup", "1"] if args.quick else \
            ["--sizes", "256", "--batch-sizes", "16", "32"]
        subprocess.run(command, check=True)
    left = args.minutes - (time.perf_counter() - started) / 60
    per_model = max(0.2, 0.85 * left / (len(COUNTS) * len(ARMS)))  # scoring and start-up take the rest
    cells = run_cells(args.pack, args.work, per_model, device, quick=args.quick)
    with open(os.path.join(args.pack, "pack.json")) as handle:
        packed = json.load(handle)
    report = {"benchmark": "gpu_check", **environment(device), "pack": packed,
              "minutes_per_model_budget": round(per_model, 2), "total_minutes": round((time.perf_counter() - started) / 60, 2),
              "grid": "preprocessed slices (the pack's spacing), not each scan's own grid", "speed_results": speed,
              "cells": cells}
    out = save_report(report, args.out or (os.path.join(args.work, "gpu_check.json") if args.quick else None),
                      "gpu_check", device.type)
    print(f"saved {out} ({report['total_minutes']} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
