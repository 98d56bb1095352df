"""The label-efficiency study's report: Markdown tables, a plot of Dice against M, overlays, raw results."""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from typing import Any, Dict, List, Sequence

import numpy as np

from common import mean_std, pyplot, reproduce, save_figure, save_json, versions

from maclcore.evaluation.metrics import mean_foreground
from maclcore.evaluation.overlay import colour_overlay
from maclcore.io.atomic import write_text_atomic
from maclcore.labels import CARDIAC
from maclcore.models.variants import VARIANTS

METRICS = ("dice", "iou", "hd95")


def arm_label(arm: str) -> str:
    return "Random init" if arm == "random" else VARIANTS[arm].label


def nanmean(values: Sequence[float]) -> float:
    """Mean that skips NaN (a class absent from a case has no HD95); NaN when nothing is left."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def draw_means(results: Sequence[Dict[str, Any]]) -> Dict[tuple, Dict[str, List[float]]]:
    """(arm, M) -> {metric or "class:metric": [per-draw mean over evaluation cases]}."""
    table: Dict[tuple, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        cases = list(result["cases"].values())
        cell = table[(result["arm"], result["M"])]
        for metric in METRICS:
            cell[metric].append(nanmean([mean_foreground(c, metric) for c in cases]))
            for name in CARDIAC.names:
                cell[f"{name}:{metric}"].append(nanmean([c[name][metric] for c in cases]))
    return table


fmt = mean_std  # "mean ± std" over draws, NaN skipped


def headline(config: Dict[str, Any], table: Dict[tuple, Dict[str, List[float]]]) -> List[str]:
    counts = config["labelled_counts"]
    lines = ["| arm | " + " | ".join(f"M = {m}" for m in counts) + " |",
             "|---|" + "---|" * len(counts)]
    for arm in config["arms"]:
        cells = [fmt(table[(arm, m)]["dice"]) if (arm, m) in table else "–" for m in counts]
        lines.append(f"| {arm_label(arm)} | " + " | ".join(cells) + " |")
    return lines


def per_class(config: Dict[str, Any], table: Dict[tuple, Dict[str, List[float]]], m: int) -> List[str]:
    lines = [f"**M = {m}**", "", "| arm | " + " | ".join(f"{n} Dice" for n in CARDIAC.names)
             + " | mean IoU | mean HD95 (mm) |", "|---|" + "---|" * (len(CARDIAC.names) + 2)]
    for arm in config["arms"]:
        if (arm, m) not in table:
            continue
        cell = table[(arm, m)]
        lines.append(f"| {arm_label(arm)} | " + " | ".join(fmt(cell[f"{n}:dice"]) for n in CARDIAC.names)
                     + f" | {fmt(cell['iou'])} | {fmt(cell['hd95'], 1)} |")
    return lines


def plot(config: Dict[str, Any], table: Dict[tuple, Dict[str, List[float]]], path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    figure, axis = plt.subplots(figsize=(6, 4))
    for arm in config["arms"]:
        ms = [m for m in config["labelled_counts"] if (arm, m) in table]
        means = [np.mean(table[(arm, m)]["dice"]) for m in ms]
        stds = [np.std(table[(arm, m)]["dice"]) for m in ms]
        axis.errorbar(ms, means, yerr=stds, marker="o", capsize=3, label=arm_label(arm))
    axis.set_xscale("log", base=2)
    axis.set_xticks(config["labelled_counts"], [str(m) for m in config["labelled_counts"]])
    axis.set_xlabel("labelled patients M")
    axis.set_ylabel("mean foreground Dice (evaluation patients)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    save_figure(plt, figure, path)
    return True


def overlays(config: Dict[str, Any], work: str, folder: str, count: int = 2) -> List[str]:
    """Image | each arm's prediction | truth, for a few evaluation cases at the smallest M (draw 0)."""
    from skimage.io import imsave

    from maclcore.io.segmentation import read_label_map
    from maclcore.io.volume import read_volume
    from acdc_subset import frames

    m = min(config["labelled_counts"])
    written = []
    for patient in config["eval_patients"][:count]:
        case, paths = next(iter(frames(patient, config["data"]).items()))
        image = read_volume(paths["image"])
        truth = read_label_map(paths["label"], CARDIAC, image.geometry)
        k = int(np.argmax((truth > 0).sum((1, 2))))
        panels = [colour_overlay(image.array[k], np.zeros_like(truth[k]), CARDIAC)]
        for arm in config["arms"]:
            prediction_path = os.path.join(work, "runs", arm, f"M{m}_draw0", "predictions", f"{case}.nii.gz")
            if os.path.exists(prediction_path):
                labels = read_label_map(prediction_path, CARDIAC, image.geometry)
                panels.append(colour_overlay(image.array[k], labels[k], CARDIAC))
        panels.append(colour_overlay(image.array[k], truth[k], CARDIAC))
        picture = np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=1) for p in panels], 1)
        name = f"overlay_{case}.png"
        imsave(os.path.join(folder, name), (picture * 255).round().astype(np.uint8), check_contrast=False)
        written.append(name)
    return written


def raw_files(results: Sequence[Dict[str, Any]], folder: str) -> None:
    save_json(folder, "results.json", list(results))
    with open(os.path.join(folder, "per_case.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arm", "M", "draw", "patients", "case", "class", *METRICS])
        for r in results:
            for case, classes in r["cases"].items():
                for name, values in classes.items():
                    writer.writerow([r["arm"], r["M"], r["draw"], " ".join(map(str, r["patients"])), case, name,
                                     *[values[m] for m in METRICS]])


def missing_cells(config: Dict[str, Any], results: Sequence[Dict[str, Any]]) -> List[str]:
    """The cells of the configured study that have no result (yet), as 'arm M=m draw d'."""
    done = {(r["arm"], r["M"], r["draw"]) for r in results}
    return [f"{arm} M={m} draw {d}" for m in config["labelled_counts"] for d in range(config["draws"])
            for arm in config["arms"] if (arm, m, d) not in done]


def compute_hours(config: Dict[str, Any], results: Sequence[Dict[str, Any]], work: str) -> str:
    """Time spent, from what the runs recorded: pretraining (model histories) and finetune + evaluate cells."""
    import torch

    pretraining = 0.0
    for arm in config["arms"]:
        path = os.path.join(work, "pretrained", f"{arm}.pt")
        if arm != "random" and os.path.exists(path):
            history = torch.load(path, map_location="cpu", weights_only=True)["pretraining"]["history"]
            pretraining += history[-1]["elapsed"] if history else 0.0
    cells = sum(r["seconds"] for r in results)
    return f"pretraining {pretraining / 3600:.2f} h, finetune + evaluate cells {cells / 3600:.2f} h"


def _length(settings: Dict[str, Any]) -> str:
    """How long a stage trains, in words: epochs and/or a time budget (neither: the device's default)."""
    parts = ([f"{settings['epochs']} epochs"] if settings.get("epochs") else []) + \
        ([f"a {settings['time_budget']:g}-minute budget"] if settings.get("time_budget") else [])
    return " within ".join(parts) or "the device's default length (10 minutes on a CPU, the full schedule on a GPU)"


def _or_derived(value: Any, unit: str = "") -> str:
    return f"{value}{unit}" if value else "derived from the data as the command line does"



def write_report(config: Dict[str, Any], results: Sequence[Dict[str, Any]], folder: str, argv: Sequence[str],
                 wall_seconds: float, work: str) -> str:
    os.makedirs(folder, exist_ok=True)
    table = draw_means(results)
    raw_files(results, folder)
    plotted = plot(config, table, os.path.join(folder, "dice_vs_m.png"))
    pictures = overlays(config, work, folder)
    lines = [f"# Label-efficiency study: {config['name']}", "",
             "Mean foreground Dice (RV cavity, LV myocardium, LV cavity) on the evaluation patients, mean ± std "
             f"over {config['draws']} draws of the M labelled patients.", ""]
    missing = missing_cells(config, results)
    if missing:
        lines += [f"**Incomplete:** {len(results)} of {len(results) + len(missing)} cells done; the means below "
                  f"are over the draws done. Missing: {', '.join(missing)}.", ""]
    lines += headline(config, table)
    lines += ["", "![Dice against M](dice_vs_m.png)" if plotted else "(matplotlib missing: no plot)", "",
              "## Per class", ""]
    for m in config["labelled_counts"]:
        lines += per_class(config, table, m) + [""]
    lines += ["## Protocol", "",
              f"* Evaluation patients (never used for pretraining, finetuning or any choice): "
              f"{', '.join(map(str, config['eval_patients']))} ({2 * len(config['eval_patients'])} volumes).",
              "* Pretraining: each arm once, on the images of all other patients (labels unused), "
              f"{_length(config['pretrain'])}.",
              f"* Finetuning: M in {config['labelled_counts']} patients (both frames), {config['draws']} nested draws "
              f"per M (seed {config['seed']}), the same recipe and length for every arm "
              f"({json.dumps(config['finetune'])}); the last epoch is kept (no checkpoint selection).",
              *([f"* Unlabelled volumes: every finetuning also self-trains on the images of {config['unlabelled']} "
                 f"other pool patients per draw (never evaluation patients, never the draw's labelled ones), as "
                 f"`maclcore finetune --unlabelled` does."] if config.get("unlabelled") else []),
              f"* Preprocessing: {_or_derived(config.get('spacing'), ' mm')} in-plane, U-Net widths "
              f"{_or_derived(config.get('channels'))}.", "",
              "## Overlays", "", "Image | " + " | ".join(arm_label(a) for a in config["arms"])
              + f" | truth (M = {min(config['labelled_counts'])}, draw 0)", ""]
    lines += [f"![{p}]({p})" for p in pictures]
    lines += ["", *reproduce(argv),
              f"{versions()}; wall time of this invocation {wall_seconds / 3600:.2f} h (cells already done are "
              f"reused); compute recorded by the runs: {compute_hours(config, results, work)}.",
              "", "Raw results: `results.json`, `per_case.csv`; configuration: `config.json`."]
    save_json(folder, "config.json", config)
    path = os.path.join(folder, "report.md")
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
