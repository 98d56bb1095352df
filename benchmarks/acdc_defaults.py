"""What a clinician gets: ``maclcore finetune`` with no options on M ACDC patients, then predict and evaluate.

Each arm is run as the user runs it, by the command line, and timed as a whole (reading the data, the
plan, training, writing the model); the model is then evaluated on the study's fixed 10 evaluation
patients (20 volumes, ED + ES), which no training draw contains. ``--reference`` adds arms with the
flags given after it (e.g. the previous default recipe under the same budget), in the same run.

    python benchmarks/acdc_defaults.py --m 2 4
    python benchmarks/acdc_defaults.py --m 2 4 --draw 1              # another draw
    python benchmarks/acdc_defaults.py --m 2 --skip-default --with-unlabelled 30 \
        --unlabelled-arm macl-unlabelled "--init pretrained.pt"      # pretraining + unlabelled volumes
    python benchmarks/acdc_defaults.py --table                       # this CPU's runs: mean ± std over draws
    Each model is scored twice, by ``predict --no-tta`` (the entry's Dice, comparable across all entries) and
    by ``predict --tta`` (``inference.tta``); ``inference_default`` records which of them plain ``maclcore
    predict`` gave when the entry was measured ("none" before TTA became the default; "tta" for the M = 1 entry
    of results/acdc_defaults_cpu_avx2.json, measured while TTA was once the default, whose ``inference.no_tta``
    is plain).
    python benchmarks/acdc_defaults.py --m 4 --reference old "--spacing 1.5625 --channels 32,64,128,256,512 \
        --crop 0 --batch-size 8 --lr 5e-4 --warmup 0 --ema-decay 0 --no-flip"

Results: benchmarks/results/acdc_defaults_<device>.json (merged across runs, one entry per arm and M).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from acdc_subset import DEFAULT_ACDC, make_subset, patients  # noqa: E402
from common import bf16_flags, cpu_model  # noqa: E402
from study import draws, unlabelled_patients  # noqa: E402

EVAL = [2, 22, 42, 62, 82, 3, 23, 43, 63, 83]  # the study's evaluation patients


def _maclcore(args: Sequence[str], log: str) -> float:
    """Run one maclcore command (its output into ``log``); its wall time in seconds."""
    started = time.perf_counter()
    with open(log, "a") as handle:
        handle.write("$ maclcore " + " ".join(args) + "\n")
        handle.flush()
        code = subprocess.call([sys.executable, "-m", "maclcore", *args, "--progress", "bar"], stdout=handle,
                               stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"maclcore {args[0]} failed (exit {code}); see {log}")
    return time.perf_counter() - started


def run_arm(name: str, flags: List[str], chosen: List[int], work: str, data: str, log: str) -> Dict[str, object]:
    import torch

    train = make_subset(os.path.join(work, f"train_{'_'.join(map(str, chosen))}"), chosen, data)
    evaluation = make_subset(os.path.join(work, "eval"), EVAL, data)
    model = os.path.join(work, f"{name}_m{len(chosen)}.pt")
    predictions = os.path.join(work, f"pred_{name}_m{len(chosen)}")
    report = os.path.join(work, f"eval_{name}_m{len(chosen)}.json")
    timing = model + ".seconds"  # the command's wall time, so that a rerun can reuse a finished model
    if not os.path.exists(timing):
        finetune_s = _maclcore(["finetune", "--images", os.path.join(train, "imagesTr"), "--labels",
                                os.path.join(train, "labelsTr"), "--out", model, *flags], log)
        with open(timing, "w") as handle:
            handle.write(str(finetune_s))
    with open(timing) as handle:
        finetune_s = float(handle.read())
    def scored(variant: str, flags: List[str]) -> Dict[str, object]:
        """Predict the evaluation volumes with ``flags`` and score them: Dice per class, mean, minutes."""
        folder, json_path = f"{predictions}{variant}", report.replace(".json", f"{variant}.json")
        seconds = _maclcore(["predict", "--model", model, "--image", os.path.join(evaluation, "imagesTr"),
                             "--out", folder, *flags], log)
        _maclcore(["evaluate", "--pred", folder, "--labels", os.path.join(evaluation, "labelsTr"),
                   "--json", json_path], log)
        with open(json_path) as handle:
            evaluated = json.load(handle)
        summary, classes = evaluated["summary"], evaluated["classes"]
        rv = [case[classes[0]]["dice"] for case in evaluated["cases"].values()]
        return {"dice": {k: summary[k]["dice"]["mean"] for k in classes},
                "mean_dice": summary["mean_foreground"]["dice"]["mean"],
                # HD95 is undefined (and left out of the mean) where a class is missing from the prediction;
                # hd95_undefined counts those volumes.
                "hd95_mm": {k: summary[k]["hd95"]["mean"] for k in classes},
                "hd95_undefined": {k: summary[k]["hd95"]["undefined"] for k in classes},
                "mean_hd95_mm": summary["mean_foreground"]["hd95"]["mean"],
                # The failure criterion: share of evaluation volumes whose RV Dice is below 0.1.
                "rv_below_0.1": sum(d < 0.1 for d in rv) / len(rv),
                "predict_minutes": round(seconds / 60, 2)}

    plain = scored("", ["--no-tta"])
    variants = {"tta": scored("_tta", ["--tta"])}  # as a user runs predict
    saved = torch.load(model, weights_only=True)
    return {"arm": name, "flags": flags, "m": len(chosen), "patients": chosen,
            "finetune_minutes": round(finetune_s / 60, 2), "predict_minutes_20_volumes": plain["predict_minutes"],
            "plan": saved["training"].get("plan", {}).get("line"),
            "steps": saved["training"]["history"][-1]["step"],
            **{k: plain[k] for k in ("dice", "mean_dice", "hd95_mm", "hd95_undefined", "mean_hd95_mm",
                                     "rv_below_0.1")}, "inference_default": "tta",  # what plain `maclcore predict` does
            "inference": variants}


def _spread(values: List[float], digits: int = 3) -> str:
    """mean ± std (population) of the values, or the one value."""
    import numpy as np

    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def machine(run: Dict[str, object]) -> tuple:
    """What tells machines apart in the results: CPU model and its bf16 flags (None for the early entries
    that did not record them). A budgeted run's steps, so its Dice, depend on the machine."""
    return run.get("cpu"), tuple(run.get("cpu_flags") or ())


def table(runs: Sequence[Dict[str, object]], on: tuple = None) -> str:
    """A Markdown table over draws: per (M, arm), the number of draws and mean ± std of each class's Dice,
    the mean Dice, the mean Dice of the same models predicted with ``--tta`` (with the number of draws scored so
    when not all were), the mean HD95, the share of volumes with RV Dice < 0.1, the minutes and steps. ``on``
    keeps one :func:`machine`'s runs, so that budgeted runs of different machines are not pooled."""
    chosen = [r for r in runs if on is None or machine(r) == on]
    groups: Dict[tuple, List[Dict[str, object]]] = {}
    for run in chosen:
        groups.setdefault((run["m"], run["arm"]), []).append(run)
    classes = list(chosen[0]["dice"]) if chosen else []
    lines = ["| M | arm | draws | " + " | ".join(classes) + " | mean Dice | with `--tta` | mean HD95 (mm) | RV < 0.1 | minutes "
             "| steps |", "|---|---|---|" + "---|" * (len(classes) + 6)]
    for (m, arm), group in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] != "default", item[0][1])):
        hd95 = [r["mean_hd95_mm"] for r in group if "mean_hd95_mm" in r]
        missed = [r["rv_below_0.1"] for r in group if "rv_below_0.1" in r]
        cells = [_spread([r["dice"][c] for r in group]) for c in classes]
        tta = [r["inference"]["tta"]["mean_dice"] for r in group if "tta" in r.get("inference", {})]
        tta_cell = (_spread(tta) + ("" if len(tta) == len(group) else f" ({len(tta)})")) if tta else "–"
        lines.append(f"| {m} | {arm} | {len(group)} | " + " | ".join(cells)
                     + f" | **{_spread([r['mean_dice'] for r in group])}** | {tta_cell} | "
                     + (_spread(hd95, 1) if hd95 else "–") + " | "
                     + (f"{100 * sum(missed) / len(missed):.0f}%" if missed else "–") + " | "
                     + _spread([r["finetune_minutes"] for r in group], 1) + " | "
                     + _spread([r["steps"] for r in group], 0) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=[2, 4], help="labelled patients per arm")
    parser.add_argument("--draw", type=int, default=0, help="which of study.py's seed-0 draws")
    parser.add_argument("--reference", nargs=2, action="append", default=[], metavar=("NAME", "FLAGS"),
                        help="an extra arm: its name and its finetune flags (one quoted string)")
    parser.add_argument("--skip-default", action="store_true", help="run only the --reference arms")
    parser.add_argument("--with-unlabelled", type=int, default=0, metavar="N",
                        help="add an arm: the defaults plus --unlabelled with N other pool patients' images "
                             "(both frames; never evaluation or training patients)")
    parser.add_argument("--unlabelled-arm", nargs=2, metavar=("NAME", "FLAGS"), default=("unlabelled", ""),
                        help="the --with-unlabelled arm's name and extra finetune flags (one quoted string), e.g. "
                             "macl-unlabelled \"--init pretrained.pt\" (default: unlabelled, none)")
    parser.add_argument("--output", default=None,
                        help="results file (default: results/acdc_defaults_<cpu|cuda>.json; another machine's runs "
                             "belong in another file)")
    parser.add_argument("--data", default=DEFAULT_ACDC)
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--table", action="store_true",
                        help="print the results file as a Markdown table over draws (this machine's runs only) "
                             "and exit")
    args = parser.parse_args(argv)
    import torch

    if args.table:
        out = args.output or os.path.join(HERE, "results", "acdc_defaults_cpu.json")
        with open(out) as handle:
            print(table(json.load(handle)["runs"], (cpu_model(), tuple(bf16_flags()))))
        return 0

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    work = args.work or tempfile.mkdtemp(prefix="acdc_defaults_")
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "log.txt")
    pool = [p for p in patients(args.data) if p not in set(EVAL)]
    arms = ([] if args.skip_default else [("default", [])]) + [(n, shlex.split(f)) for n, f in args.reference]
    out = args.output or os.path.join(HERE, "results", f"acdc_defaults_{'cpu' if device == 'cpu' else 'cuda'}.json")
    results = json.load(open(out)) if os.path.exists(out) else {"runs": []}
    for m in args.m:
        chosen = draws(pool, [m], args.draw + 1, 0)[m][args.draw]
        extra = []
        if args.with_unlabelled:
            others = unlabelled_patients(pool, args.draw, args.with_unlabelled, m)
            folder = make_subset(os.path.join(work, f"unlabelled_{args.with_unlabelled}"), others, args.data,
                                 images_only=True)
            name, flags = args.unlabelled_arm
            extra = [(name, ["--unlabelled", os.path.join(folder, "imagesTr"), *shlex.split(flags)])]
        for name, flags in arms + extra:
            entry = run_arm(name, flags, chosen, work, args.data, log)
            entry.update(device=device, cpu=cpu_model(), cpu_flags=bf16_flags(), threads=torch.get_num_threads(),
                         torch=torch.__version__,
                         date=time.strftime("%Y-%m-%d %H:%M"))
            print(json.dumps(entry), flush=True)
            results["runs"] = [r for r in results["runs"] if (r["arm"], r["m"], r.get("patients"), machine(r)) !=
                               (name, m, chosen, machine(entry))] + [entry]
            from maclcore.io.atomic import write_json

            write_json(out, results)
    print(f"log: {log}\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
