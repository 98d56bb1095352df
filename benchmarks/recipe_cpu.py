"""Few-case finetuning recipes on ACDC under one time budget, evaluated on the study's fixed 10 patients.

A standalone trainer built from the engine's parts (data loading, U-Net, augmentation, loss, inference,
metrics) plus the new mechanisms (training/budget.py, data/sampling.py, training/ema.py), so that recipes can
be compared before they are wired into ``maclcore finetune``. Two recipes:

* ``old``: the engine's default until now: spacing derived (1.5625 mm on ACDC), widths 32-512, whole padded
  slices, batch 8, Adam 5e-4 cosine to 5e-6, no warm-up, last weights kept (bf16 + channels_last on, for speed).
* ``new``: widths 16-256 at 2.5 mm, class-aware crops (``--crop``, 2/3 centred on a labelled voxel of a
  uniformly chosen class, 1/3 random), batch 16, flips, Adam 1e-3 with 5% linear warm-up then cosine to
  1e-5, an EMA of the weights (decay 0.99) kept as the model.

Both fit ``--minutes`` via BudgetClock (step time measured on steps 2-6, then steps and schedule fixed).
The labelled patients are draw ``--draw`` of study.py's draws (seed 0) from the pool that excludes the
evaluation patients; nothing is chosen on the evaluation patients.

    python benchmarks/recipe_cpu.py --recipe new --m 4 --minutes 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from acdc_subset import patients  # noqa: E402
from study import cases_of, draws  # noqa: E402

from maclcore.data.augment import AugmentationConfig, adjust_intensity, random_affines, random_intensity, warp  # noqa: E402
from maclcore.data.dataset import SliceData, load_cases, read_case_geometries  # noqa: E402
from maclcore.data.preprocessing import plan_preprocessing  # noqa: E402
from maclcore.data.sampling import CropConfig, CropSampler, crop_affines  # noqa: E402
from maclcore.evaluation.metrics import case_metrics  # noqa: E402
from maclcore.inference.predict import SegmentationModel, predict_volume  # noqa: E402
from maclcore.io.segmentation import read_label_map  # noqa: E402
from maclcore.io.volume import read_volume  # noqa: E402
from maclcore.labels import CARDIAC  # noqa: E402
from maclcore.losses.segmentation import segmentation_loss  # noqa: E402
from maclcore.models.unet import UNet, UNetConfig  # noqa: E402
from maclcore.runtime.device import autocast  # noqa: E402
from maclcore.training.budget import BudgetClock, TrainingPlan  # noqa: E402
from maclcore.training.ema import ModelEMA  # noqa: E402
from maclcore.training.loop import cosine_lr  # noqa: E402

DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "acdc"))
EVAL = [2, 22, 42, 62, 82, 3, 23, 43, 63, 83]
RECIPES = {
    "old": dict(spacing=None, widths=(32, 64, 128, 256, 512), crop=None, batch=8, lr=5e-4, min_lr=5e-6,
                warmup=0.0, ema=None, flips=False),
    "new": dict(spacing=2.5, widths=(16, 32, 64, 128, 256), crop=96, batch=16, lr=1e-3, min_lr=1e-5,
                warmup=0.05, ema=0.99, flips=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=list(RECIPES), default="new")
    parser.add_argument("--m", type=int, default=4)
    parser.add_argument("--draw", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--spacing", type=float, default=None)
    parser.add_argument("--crop", type=int, default=None)
    parser.add_argument("--tag", default="")
    parser.add_argument("--data", default=DATA)
    args = parser.parse_args()
    recipe = dict(RECIPES[args.recipe])
    if args.spacing:
        recipe["spacing"] = args.spacing
    if args.crop is not None:
        recipe["crop"] = args.crop or None
    torch.manual_seed(args.draw)
    device = torch.device("cpu")
    pool = [p for p in patients(args.data) if p not in set(EVAL)]
    chosen = draws(pool, [args.m], args.draw + 1, 0)[args.m][args.draw]
    cases = cases_of(chosen, args.data)
    started = time.perf_counter()
    plan = plan_preprocessing(read_case_geometries(cases), spacing=recipe["spacing"])
    data = SliceData.from_volumes(load_cases(cases, plan, CARDIAC), plan.size, with_labels=True)
    images, labels = data.images, data.labels.long()
    crop = recipe["crop"] if recipe["crop"] and recipe["crop"] < plan.size else None
    sampler = CropSampler(labels, CARDIAC.num_classes, CropConfig(size=crop, foreground=0.67)) if crop else None
    network = UNet(UNetConfig(num_classes=CARDIAC.num_classes, channels=recipe["widths"])).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(network.parameters(), lr=recipe["lr"])
    ema = ModelEMA(network, recipe["ema"]) if recipe["ema"] else None
    augmentation = AugmentationConfig()
    clock = BudgetClock(args.minutes, probe_steps=5, skip=1, overhead_seconds=45.0)
    setup = time.perf_counter() - started
    clock.start()
    step, total, losses = 0, None, []
    batch = recipe["batch"]
    while total is None or step < total:
        lr_total = total or 10 ** 9
        warm = int(recipe["warmup"] * lr_total) if total else 0
        lr = cosine_lr(step, lr_total, recipe["lr"], recipe["min_lr"], warm) if total else (
            recipe["lr"] * (0.1 if recipe["warmup"] else 1.0))
        for group in optimizer.param_groups:
            group["lr"] = lr
        generator = torch.Generator().manual_seed(args.draw * 1_000_003 + step)
        index = torch.randint(0, images.shape[0], (batch,), generator=generator)
        theta = random_affines(batch, augmentation, generator, device)
        if recipe["flips"]:
            flip = (torch.rand(batch, 2, generator=generator) < 0.5).float() * -2 + 1
            theta[:, :, 0] *= flip[:, :1]
            theta[:, :, 1] *= flip[:, 1:]
        size = None
        if sampler is not None:
            index, centres = sampler.draw(index, generator)
            theta = crop_affines(theta, centres, crop, plan.size)
            size = (crop, crop)
        x = adjust_intensity(warp(images[index], theta, "bilinear", size), random_intensity(batch, augmentation, generator, device))
        y = warp(labels[index][:, None].float(), theta, "nearest", size)[:, 0].long()
        network.train()
        with autocast(device, True):
            loss = segmentation_loss(network(x.contiguous(memory_format=torch.channels_last)), y, 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(network)
        losses.append(float(loss))
        step += 1
        decided = clock.step_done()
        if decided is not None:
            total = decided
            line = TrainingPlan("finetune", "cpu", plan.spacing, plan.size, crop, recipe["widths"], batch, total,
                                clock.step_seconds, total * clock.step_seconds / 60, args.minutes).line()
            print(line, flush=True)
        if step % 100 == 0:
            print(f"step {step}/{total} loss {np.mean(losses[-100:]):.4f} lr {lr:.2e} "
                  f"{(time.perf_counter() - started) / 60:.1f} min", flush=True)
    train_minutes = (time.perf_counter() - started) / 60
    kept = ema.module if ema is not None else network
    model = SegmentationModel(network=kept.eval(), schema=CARDIAC, preprocessing=plan, info={})
    per_volume = {}
    evaluation_started = time.perf_counter()
    for case in cases_of(EVAL, args.data):
        volume = read_volume(case.image)
        truth = read_label_map(case.label, CARDIAC, reference=volume.geometry)
        prediction = predict_volume(model, volume)
        spacing = volume.geometry.spacing[::-1] if hasattr(volume.geometry, "spacing") else (10, 1.5625, 1.5625)
        per_volume[case.name] = case_metrics(prediction, truth, spacing, CARDIAC.names, with_hd95=False)
    names = CARDIAC.names
    dice = {n: float(np.mean([v[n]["dice"] for v in per_volume.values()])) for n in names}
    rv_missed = sum(v[names[0]]["dice"] < 0.1 for v in per_volume.values())
    result = {"recipe": args.recipe, "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.items()},
              "m": args.m, "draw": args.draw, "patients": chosen, "budget_minutes": args.minutes,
              "plan": line, "steps": total, "step_seconds": clock.step_seconds, "setup_s": round(setup, 1),
              "train_minutes": round(train_minutes, 2),
              "eval_minutes": round((time.perf_counter() - evaluation_started) / 60, 2),
              "dice": dice, "mean_dice": float(np.mean(list(dice.values()))), "rv_below_0.1": int(rv_missed),
              "volumes": len(per_volume), "device": "cpu (2-core Xeon, AMX-BF16), bf16 autocast + channels_last",
              "per_volume": per_volume}
    out = os.path.join(HERE, "results", "recipe_cpu", f"{args.recipe}{args.tag}_m{args.m}_d{args.draw}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps({k: result[k] for k in ("recipe", "m", "patients", "steps", "train_minutes", "dice",
                                              "mean_dice", "rv_below_0.1")}), flush=True)


if __name__ == "__main__":
    main()
