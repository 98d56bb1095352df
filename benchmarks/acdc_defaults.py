"""What a clinician gets: ``maclcore finetune`` with no options on M ACDC patients, then predict and evaluate.

Each arm is run as the user runs it, by the command line, and timed as a whole (reading the data, the
plan, training, writing the model); the model is then evaluated on the study's fixed 10 evaluation
patients (20 volumes, ED + ES), which no training draw contains. ``--reference`` adds arms with the
flags given after it (e.g. the previous default recipe under the same budget), in the same run.

    python benchmarks/acdc_defaults.py --m 2 4
    python benchmarks/acdc_defaults.py --m 2 4 --draw 1 --tta        # another draw; scored with and without TTA
    (entries record ``inference_default``, what plain ``maclcore predict`` did: "tta" for the M = 1 entry of
    results/acdc_defaults_cpu_avx2.json, measured while TTA was the default, whose ``inference.no_tta`` is plain.)
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
from study import draws  # noqa: E402

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


def run_arm(name: str, flags: List[str], chosen: List[int], work: str, data: str, log: str,
            tta: bool = False) -> Dict[str, object]:
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
            summary = json.load(handle)["summary"]
        return {"dice": {k: v["dice"]["mean"] for k, v in summary.items() if k != "mean_foreground"},
                "mean_dice": summary["mean_foreground"]["dice"]["mean"], "predict_minutes": round(seconds / 60, 2)}

    default = scored("", [])  # as a user runs predict
    variants = {"tta": scored("_tta", ["--tta"])} if tta else {}
    saved = torch.load(model, weights_only=True)
    return {"arm": name, "flags": flags, "m": len(chosen), "patients": chosen,
            "finetune_minutes": round(finetune_s / 60, 2), "predict_minutes_20_volumes": default["predict_minutes"],
            "plan": saved["training"].get("plan", {}).get("line"),
            "steps": saved["training"]["history"][-1]["step"], "dice": default["dice"],
            "mean_dice": default["mean_dice"], "inference_default": "none",  # what plain `maclcore predict` does
            **({"inference": variants} if variants else {})}


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
    parser.add_argument("--tta", action="store_true",
                        help="also predict with --tta (flipped slices averaged) and score that, from the same model")
    parser.add_argument("--output", default=None,
                        help="results file (default: results/acdc_defaults_<cpu|cuda>.json; another machine's runs "
                             "belong in another file)")
    parser.add_argument("--data", default=DEFAULT_ACDC)
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    work = args.work or tempfile.mkdtemp(prefix="acdc_defaults_")
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "log.txt")
    pool = [p for p in patients(args.data) if p not in set(EVAL)]
    arms = ([] if args.skip_default else [("default", [])]) + [(n, shlex.split(f)) for n, f in args.reference]
    out = args.output or os.path.join(HERE, "results", f"acdc_defaults_{'cpu' if device == 'cpu' else 'cuda'}.json")
    results = json.load(open(out)) if os.path.exists(out) else {"runs": []}
    order = draws(pool, [len(pool)], args.draw + 1, 0)[len(pool)][args.draw]
    for m in args.m:
        chosen = draws(pool, [m], args.draw + 1, 0)[m][args.draw]
        extra = []
        if args.with_unlabelled:
            # The end of the draw's order: patients no M <= len(pool) - N trains on.
            others = order[len(order) - args.with_unlabelled:]
            folder = make_subset(os.path.join(work, "unlabelled"), others, args.data, images_only=True)
            extra = [("unlabelled", ["--unlabelled", os.path.join(folder, "imagesTr")])]
        for name, flags in arms + extra:
            entry = run_arm(name, flags, chosen, work, args.data, log, args.tta)
            entry.update(device=device, cpu=cpu_model(), cpu_flags=bf16_flags(), threads=torch.get_num_threads(),
                         torch=torch.__version__,
                         date=time.strftime("%Y-%m-%d %H:%M"))
            print(json.dumps(entry), flush=True)
            results["runs"] = [r for r in results["runs"] if (r["arm"], r["m"], r.get("patients")) !=
                               (name, m, chosen)] + [entry]
            from maclcore.io.atomic import write_json

            write_json(out, results)
    print(f"log: {log}\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
