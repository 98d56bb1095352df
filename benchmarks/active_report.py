"""The simulated-annotator study's report: Dice against annotated patients per strategy, annotations needed to
reach Dice thresholds, time per round; a plot and the raw results."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from common import mean_std, pyplot, reproduce, save_figure, save_json, versions

from maclcore.io.atomic import write_text_atomic

LABELS = {"suggest": "Suggested (uncertainty x diversity)", "random": "Random"}


def curves(config: Dict[str, Any], results: Sequence[Dict[str, Any]]) -> Dict[str, Dict[int, Dict[int, float]]]:
    """strategy -> number of annotated patients -> seed -> mean foreground Dice (the start model in every curve)."""
    table: Dict[str, Dict[int, Dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for result in results:
        strategies = config["strategies"] if result["strategy"] == "start" else [result["strategy"]]
        for strategy in strategies:
            table[strategy][result["annotated"]][result["seed"]] = result["mean_dice"]
    return table


def fmt(values: Sequence[float]) -> str:
    """Mean foreground Dice over seeds, as 'mean ± std'."""
    return mean_std(values, 3)


def seconds(values: Sequence[float]) -> str:
    """Seconds over rounds, as 'mean ± std'."""
    return mean_std(values, 1)


def needed(points: Dict[int, Dict[int, float]], seed: int, threshold: float) -> Optional[int]:
    """The fewest annotated patients at which the seed's model reached ``threshold`` (None: never)."""
    reached = [n for n in sorted(points) if seed in points[n] and points[n][seed] >= threshold]
    return reached[0] if reached else None


def dice_table(config: Dict[str, Any], table: Dict[str, Dict[int, Dict[int, float]]]) -> List[str]:
    counts = sorted({n for strategy in table.values() for n in strategy})
    lines = ["| strategy | " + " | ".join(f"{n} annotated" for n in counts) + " |", "|---|" + "---|" * len(counts)]
    for strategy in config["strategies"]:
        cells = [fmt(list(table[strategy][n].values())) if n in table[strategy] else "–" for n in counts]
        lines.append(f"| {LABELS[strategy]} | " + " | ".join(cells) + " |")
    return lines


def threshold_table(config: Dict[str, Any], table: Dict[str, Dict[int, Dict[int, float]]]) -> List[str]:
    thresholds = config.get("thresholds", [0.80, 0.85])
    most = max((n for strategy in table.values() for n in strategy), default=0)
    lines = ["| strategy | " + " | ".join(f"patients to reach Dice {t:.2f}" for t in thresholds) + " |",
             "|---|" + "---|" * len(thresholds)]
    for strategy in config["strategies"]:
        cells = []
        for threshold in thresholds:
            per_seed = [needed(table[strategy], seed, threshold) for seed in config["seeds"]]
            reached = [n for n in per_seed if n is not None]
            shown = ", ".join(str(n) if n is not None else f">{most}" for n in per_seed)
            mean = f"{np.mean(reached):.1f}" if len(reached) == len(per_seed) else \
                f"reached by {len(reached)}/{len(per_seed)} seeds"
            cells.append(f"{mean} (seeds: {shown})")
        lines.append(f"| {LABELS[strategy]} | " + " | ".join(cells) + " |")
    return lines


def time_table(config: Dict[str, Any], results: Sequence[Dict[str, Any]]) -> List[str]:
    lines = ["| step | choose next patient (s) | finetune (s) | evaluate (s) | rounds |", "|---|---|---|---|---|"]
    for strategy in ["start"] + list(config["strategies"]):
        rounds = [r["seconds"] for r in results if r["strategy"] == strategy]
        if not rounds:
            continue
        cells = [seconds([s.get(k, math.nan) for s in rounds]) if k != "choose" or strategy != "start" else "–"
                 for k in ("choose", "finetune", "evaluate")]
        name = "first model (start patients)" if strategy == "start" else f"round, {LABELS[strategy].lower()}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(rounds)} |")
    return lines


def plot(config: Dict[str, Any], table: Dict[str, Dict[int, Dict[int, float]]], path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    figure, axes = plt.subplots(figsize=(6, 4))
    for strategy in config["strategies"]:
        counts = sorted(table[strategy])
        means = np.array([np.mean(list(table[strategy][n].values())) for n in counts])
        stds = np.array([np.std(list(table[strategy][n].values())) for n in counts])
        axes.plot(counts, means, marker="o", label=LABELS[strategy])
        axes.fill_between(counts, means - stds, means + stds, alpha=0.2)
    for threshold in config.get("thresholds", [0.80, 0.85]):
        axes.axhline(threshold, color="grey", linestyle=":", linewidth=1)
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("annotated patients")
    axes.set_ylabel("mean foreground Dice (evaluation patients)")
    axes.set_title(f"{config['name']}: mean ± std over {len(config['seeds'])} seeds")
    axes.legend()
    axes.grid(alpha=0.3)
    save_figure(plt, figure, path)
    return True


def write_report(config: Dict[str, Any], results: Sequence[Dict[str, Any]], folder: str, argv: Sequence[str],
                 wall_seconds: float) -> str:
    os.makedirs(folder, exist_ok=True)
    table = curves(config, results)
    save_json(folder, "results.json", list(results))
    save_json(folder, "config.json", config)
    plotted = plot(config, table, os.path.join(folder, "dice_vs_annotated.png"))
    lines = [f"# Simulated-annotator study: {config['name']}", "",
             "Mean foreground Dice (RV cavity, LV myocardium, LV cavity) on the evaluation patients after each "
             f"round, mean ± std over seeds {config['seeds']}.", ""]
    lines += dice_table(config, table)
    lines += ["", "![Dice against annotated patients](dice_vs_annotated.png)" if plotted
              else "(matplotlib missing: no plot)", "", "## Annotations needed", ""]
    lines += threshold_table(config, table)
    lines += ["", "## Time per round", ""] + time_table(config, results)
    lines += ["", "## Protocol", "",
              f"* Evaluation patients (never suggested, never trained on): "
              f"{', '.join(map(str, config['eval_patients']))}.",
              f"* Start: {config.get('start_patients', 1)} patient(s) drawn per seed; first model "
              f"{'from ' + config['init'] if config.get('init') else 'from scratch'}, "
              f"{json.dumps(config['initial'])}; both strategies continue from it.",
              f"* Each of {config['rounds']} rounds adds one patient (both frames), chosen by `maclcore suggest`'s "
              "first-ranked volume (current model; labelled frames as reference) or at random; the ground truth "
              "stands in for the correction; the model is finetuned on all labelled patients continuing from the "
              f"previous model ({json.dumps(config['round'])}); the last epoch is kept.",
              f"* Preprocessing: {config['spacing']} mm in-plane, U-Net widths {config['channels']}; suggestion "
              f"settings {json.dumps(config.get('suggest', {}))}.", "",
              *reproduce(argv),
              f"{versions()}; wall time {wall_seconds / 3600:.2f} h (rounds already done are reused).", "",
              "Raw results: `results.json` (per round: patients, added patient, suggestion ranking, per-case Dice, "
              "seconds); configuration: `config.json`."]
    path = os.path.join(folder, "report.md")
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
