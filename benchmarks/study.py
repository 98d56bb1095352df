"""Label-efficiency study: does pretraining beat random initialisation, and by how much?

    python benchmarks/study.py benchmarks/configs/acdc_cpu.json --work /tmp/study_acdc

Protocol (also written into the report):
1. The evaluation patients are fixed in the config and used for nothing else: not for pretraining, not for
   choosing checkpoints or settings (finetuning keeps its last epoch).
2. Each pretraining arm is pretrained once, on the images of the other patients (labels unused), and
   reused across draws.
3. For each number M of labelled patients and each draw, M patients are drawn from the pool (both frames of
   a patient go together); the draws are nested (the M = 1 patient is among the M = 2 ones, ...) and fixed
   by the seed. Every arm finetunes on the same patients with the same recipe and the same number of steps.
4. Every model segments the evaluation patients; Dice, IoU and HD95 per class are computed per case; the
   report gives mean and std over draws of the per-draw mean over evaluation cases.

Every unit of work (a pretraining, a finetune + evaluation) writes its result file when done and is
skipped when that file exists, so an interrupted study continues where it stopped (pretraining itself also
resumes from its own checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from acdc_subset import frames, patients  # noqa: E402

from maclcore.evaluation.evaluate import evaluate_folders  # noqa: E402
from maclcore.inference.predict import predict_files  # noqa: E402
from maclcore.io.atomic import write_text_atomic  # noqa: E402
from maclcore.io.pairing import Case  # noqa: E402
from maclcore.labels import CARDIAC  # noqa: E402
from maclcore.training.finetune import FinetuneConfig, finetune  # noqa: E402
from maclcore.training.loop import LoopConfig  # noqa: E402
from maclcore.training.pretrain import pretrain, pretrain_config  # noqa: E402
from maclcore.training.progress import make_reporter  # noqa: E402

RANDOM = "random"


def load_config(path: str) -> Dict[str, Any]:
    with open(path) as handle:
        config = json.load(handle)
    config.setdefault("data", os.path.join(HERE, "..", "..", "shared", "data", "acdc"))
    if not os.path.isabs(config["data"]):
        config["data"] = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), config["data"]))
    return config


def cases_of(chosen: Sequence[int], root: str, with_labels: bool = True) -> List[Case]:
    out = []
    for patient in chosen:
        for name, paths in frames(patient, root).items():
            out.append(Case(name=name, image=paths["image"], label=paths["label"] if with_labels else None))
    return out


def draws(pool: Sequence[int], counts: Sequence[int], count: int, seed: int) -> Dict[int, List[List[int]]]:
    """{M: [patients of draw 0, draw 1, ...]}, nested within each draw."""
    orders = [list(np.random.default_rng(seed * 1000 + d).permutation(sorted(pool))) for d in range(count)]
    return {m: [[int(p) for p in order[:m]] for order in orders] for m in counts}


def pretrain_arm(arm: str, config: Dict[str, Any], pool: Sequence[int], work: str, device: str,
                 progress: str) -> str:
    """Pretrain one variant on the pool's images (once); returns the model file."""
    out = os.path.join(work, "pretrained", f"{arm}.pt")
    if os.path.exists(out):
        return out
    settings = config["pretrain"]
    loop = LoopConfig(epochs=settings["epochs"], batch_size=settings.get("batch_size", 16), seed=config["seed"],
                      steps_per_epoch=settings.get("steps_per_epoch"))
    pretrain_cfg = pretrain_config(arm, loop=loop, channels=tuple(config["channels"]), spacing=config["spacing"],
                                   **settings.get("overrides", {}))
    resume = os.path.exists(out[:-3] + ".resume.pt")
    pretrain(cases_of(pool, config["data"], with_labels=False), out, pretrain_cfg, device=device,
             reporter=make_reporter(progress), resume=resume)
    return out


def finetune_and_evaluate(arm: str, m: int, draw: int, chosen: List[int], init: Optional[str],
                          config: Dict[str, Any], work: str, device: str, progress: str) -> Dict[str, Any]:
    """One cell of the study: finetune, segment the evaluation patients, evaluate. Cached on disk."""
    folder = os.path.join(work, "runs", arm, f"M{m}_draw{draw}")
    result_path = os.path.join(folder, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as handle:
            return json.load(handle)
    started = time.perf_counter()
    settings = config["finetune"]
    loop = LoopConfig(epochs=settings["epochs"], batch_size=settings.get("batch_size", 8),
                      steps_per_epoch=settings.get("steps_per_epoch"), seed=config["seed"] + draw,
                      validate_every=0)
    finetune_cfg = replace(FinetuneConfig(), loop=loop, channels=tuple(config["channels"]), spacing=config["spacing"],
                           val_fraction=0.0, **settings.get("overrides", {}))
    model = os.path.join(folder, "model.pt")
    reporter = make_reporter(progress)
    resume = os.path.exists(os.path.join(folder, "model.resume.pt"))
    finetune(cases_of(chosen, config["data"]), model, finetune_cfg, CARDIAC, init=init, device=device,
             reporter=reporter, resume=resume)
    evaluation = cases_of(config["eval_patients"], config["data"])
    predictions = os.path.join(folder, "predictions")
    predict_files(model, [c.image for c in evaluation], predictions, device=device, reporter=reporter)
    report = evaluate_folders(predictions, _label_links(evaluation, folder), CARDIAC, reporter=reporter)
    result = {"arm": arm, "M": m, "draw": draw, "patients": chosen, "seconds": round(time.perf_counter() - started, 1),
              "cases": report["cases"], "summary": report["summary"]}
    write_text_atomic(result_path, json.dumps(result, indent=1))
    if settings.get("delete_models", True):
        os.remove(model)  # predictions and results stay; models of every cell would fill the disk
    return result


def _label_links(evaluation: Sequence[Case], folder: str) -> str:
    """A folder holding (links to) exactly the evaluation cases' labels, for the evaluation pairing."""
    links = os.path.join(folder, "labels")
    os.makedirs(links, exist_ok=True)
    for case in evaluation:
        target = os.path.join(links, os.path.basename(case.label))
        if not os.path.lexists(target):
            os.symlink(os.path.abspath(case.label), target)
    return links


def run_study(config: Dict[str, Any], work: str, device: str, progress: str) -> List[Dict[str, Any]]:
    available = patients(config["data"])
    pool = [p for p in available if p not in set(config["eval_patients"])]
    chosen = draws(pool, config["labelled_counts"], config["draws"], config["seed"])
    inits: Dict[str, Optional[str]] = {}
    for arm in config["arms"]:
        inits[arm] = None if arm == RANDOM else pretrain_arm(arm, config, pool, work, device, progress)
    results = []
    for m in config["labelled_counts"]:
        for draw, patients_drawn in enumerate(chosen[m]):
            for arm in config["arms"]:
                result = finetune_and_evaluate(arm, m, draw, patients_drawn, inits[arm], config, work, device,
                                               progress)
                print(f"{arm:>11} M={m} draw {draw}: mean Dice "
                      f"{result['summary']['mean_foreground']['dice']['mean']:.4f} ({result['seconds']} s)",
                      flush=True)
                results.append(result)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="study configuration (JSON)")
    parser.add_argument("--work", required=True, help="folder for models and predictions (large; outside the repo)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--progress", default="none", choices=["bar", "json", "none"])
    parser.add_argument("--report", help="report folder (default benchmarks/results/<config name>)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    started = time.time()
    results = run_study(config, args.work, args.device, args.progress)
    from study_report import write_report

    report_folder = args.report or os.path.join(HERE, "results", config["name"])
    write_report(config, results, report_folder, argv=sys.argv, wall_seconds=time.time() - started,
                 work=args.work)
    print(f"report: {report_folder}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
