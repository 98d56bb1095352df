"""Simulated-annotator study: does suggesting the next case beat picking it at random?

    python benchmarks/active_study.py benchmarks/configs/active_acdc_cpu.json --work /tmp/active_acdc

Protocol (also written into the report):
1. The evaluation patients are fixed in the config and used for nothing else (never suggested, never trained
   on, not used to choose settings; finetuning keeps its last epoch).
2. Per seed, ``start_patients`` patients are drawn from the pool; a model is finetuned on them (from
   ``init`` when given, else from scratch) with the ``initial`` budget. Both strategies start from this
   same model.
3. Each round adds one patient (both frames): ``suggest`` takes the patient of the volume ``maclcore suggest``
   ranks first (current model; the labelled patients' frames as the labelled set; the remaining pool as
   candidates); ``random`` draws one of the remaining patients (seeded by seed and round). The ground truth
   stands in for the annotator's correction. The model is then finetuned on all labelled patients,
   continuing from the previous round's model, with the shorter ``round`` budget.
4. After every round the model segments the evaluation patients; Dice per case and class is recorded.

Every round writes its result (and keeps its model until the next round is done), so an interrupted study
continues at the first round without a result.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import label_links, load_study_config, report_folder, study_parser  # noqa: E402

from maclcore.active.suggest import rank_cases  # noqa: E402
from maclcore.evaluation.evaluate import evaluate_folders  # noqa: E402
from maclcore.inference.predict import load_segmentation_model, predict_files  # noqa: E402
from maclcore.io.atomic import write_text_atomic  # noqa: E402
from maclcore.io.pairing import Case, pair_cases  # noqa: E402
from maclcore.labels import CARDIAC  # noqa: E402
from maclcore.training.finetune import FinetuneConfig, case_group, finetune  # noqa: E402
from maclcore.training.loop import LoopConfig  # noqa: E402
from maclcore.runtime.progress import make_reporter  # noqa: E402
from maclcore.runtime.device import resolve_device  # noqa: E402

STRATEGIES = ("suggest", "random")


def load_config(path: str) -> Dict[str, Any]:
    config = load_study_config(path, paths=("data", "init"))
    config.setdefault("strategies", list(STRATEGIES))
    unknown = set(config["strategies"]) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; known: {', '.join(STRATEGIES)}")
    return config


def patient_name(patient: Any) -> str:
    """ACDC patient numbers become ``patientNNN``; other names are used as they are."""
    return f"patient{patient:03d}" if isinstance(patient, int) else str(patient)


def patients_of(data: str) -> Dict[str, List[Case]]:
    """Patient -> its labelled cases (frames), from DATA/imagesTr and DATA/labelsTr."""
    grouped: Dict[str, List[Case]] = {}
    for case in pair_cases(os.path.join(data, "imagesTr"), os.path.join(data, "labelsTr")):
        grouped.setdefault(case_group(case.name), []).append(case)
    return grouped


def cases_of(patients: Sequence[str], grouped: Dict[str, List[Case]]) -> List[Case]:
    return [case for patient in patients for case in grouped[patient]]


def finetune_config(config: Dict[str, Any], budget: Dict[str, Any], seed: int, first: bool) -> FinetuneConfig:
    """Short finetuning without a validation split; the first model fixes widths and spacing, later ones inherit."""
    loop = LoopConfig(epochs=budget["epochs"], batch_size=budget.get("batch_size", 8),
                      steps_per_epoch=budget.get("steps_per_epoch"), seed=seed, validate_every=0)
    extra = {k: budget[k] for k in ("lr", "min_lr", "dice_weight") if k in budget}
    if first:
        extra.update(channels=tuple(config["channels"]), spacing=config["spacing"])
    return replace(FinetuneConfig(), loop=loop, val_fraction=0.0, **extra)


def evaluate(model: str, evaluation: List[Case], folder: str, device: str, progress: str) -> Dict[str, Any]:
    """Segment the evaluation cases and compare with their labels; predictions are removed afterwards."""
    predictions = os.path.join(folder, "predictions")
    labels = label_links([c.label for c in evaluation], os.path.join(folder, "eval_labels"))
    reporter = make_reporter(progress)
    predict_files(model, [c.image for c in evaluation], predictions, device=device, reporter=reporter)
    report = evaluate_folders(predictions, labels, CARDIAC, with_hd95=False, reporter=reporter)
    shutil.rmtree(predictions, ignore_errors=True)
    shutil.rmtree(labels, ignore_errors=True)
    return {"mean_dice": report["summary"]["mean_foreground"]["dice"]["mean"],
            "cases": {name: {label: values["dice"] for label, values in case.items()}
                      for name, case in report["cases"].items()}}


def choose(strategy: str, seed: int, round_index: int, model: str, labelled: List[str], remaining: List[str],
           grouped: Dict[str, List[Case]], config: Dict[str, Any], device: str) -> Dict[str, Any]:
    """The next patient, and for ``suggest`` the first entries of the ranking."""
    if strategy == "random":
        rng = np.random.default_rng([seed, round_index])
        return {"patient": str(rng.choice(sorted(remaining))), "ranking": []}
    settings = config.get("suggest", {})
    network = load_segmentation_model(model, resolve_device(device))
    ranking = rank_cases(network, cases_of(remaining, grouped), cases_of(labelled, grouped),
                         turns=settings.get("rotations", 4), batch_size=settings.get("batch_size", 16))
    top = [{k: r[k] for k in ("case", "uncertainty", "diversity", "score")} for r in ranking[:5]]
    return {"patient": case_group(ranking[0]["case"]), "ranking": top}


def train_round(folder: str, patients: List[str], init: Optional[str], finetune_cfg: FinetuneConfig,
                grouped: Dict[str, List[Case]], device: str, progress: str) -> str:
    model = os.path.join(folder, "model.pt")
    resume = os.path.exists(os.path.join(folder, "model.resume.pt"))
    if not os.path.exists(model):
        finetune(cases_of(patients, grouped), model, finetune_cfg, CARDIAC, init=init, device=device,
                 reporter=make_reporter(progress), resume=resume)
    return model


def run_round(folder: str, result_base: Dict[str, Any], patients: List[str], init: Optional[str],
              finetune_cfg: FinetuneConfig, evaluation: List[Case], grouped: Dict[str, List[Case]], device: str,
              progress: str, seconds: Dict[str, float]) -> Dict[str, Any]:
    """Finetune, evaluate, write result.json; returns the result (with ``model``)."""
    started = time.perf_counter()
    model = train_round(folder, patients, init, finetune_cfg, grouped, device, progress)
    seconds["finetune"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    scores = evaluate(model, evaluation, folder, device, progress)
    seconds["evaluate"] = round(time.perf_counter() - started, 1)
    result = {**result_base, "patients": patients, "annotated": len(patients), **scores, "seconds": seconds}
    write_text_atomic(os.path.join(folder, "result.json"), json.dumps(result, indent=1))
    return {**result, "model": model}


def cached(folder: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(folder, "result.json")
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return {**json.load(handle), "model": os.path.join(folder, "model.pt")}


def run_seed(seed: int, config: Dict[str, Any], grouped: Dict[str, List[Case]], work: str, device: str,
             progress: str) -> List[Dict[str, Any]]:
    evaluation_patients = [patient_name(p) for p in config["eval_patients"]]
    pool = sorted(set(grouped) - set(evaluation_patients))
    start = sorted(str(p) for p in np.random.default_rng(seed).choice(pool, config.get("start_patients", 1),
                                                                      replace=False))
    evaluation = cases_of(evaluation_patients, grouped)
    base = os.path.join(work, f"seed{seed}")
    first = os.path.join(base, "round00")
    results = [cached(first) or run_round(
        first, {"seed": seed, "strategy": "start", "round": 0, "added": start}, start, config.get("init"),
        finetune_config(config, config["initial"], seed, first=True), evaluation, grouped, device, progress, {})]
    _log(results[-1])
    for strategy in config["strategies"]:
        previous = results[0]
        for round_index in range(1, config["rounds"] + 1):
            folder = os.path.join(base, strategy, f"round{round_index:02d}")
            result = cached(folder)
            if result is None:
                labelled = list(previous["patients"])
                remaining = [p for p in pool if p not in labelled]
                if not remaining:
                    break
                started = time.perf_counter()
                picked = choose(strategy, seed, round_index, previous["model"], labelled, remaining, grouped,
                                config, device)
                seconds = {"choose": round(time.perf_counter() - started, 1)}
                budget = finetune_config(config, config["round"], seed * 1000 + round_index, first=False)
                result = run_round(folder, {"seed": seed, "strategy": strategy, "round": round_index,
                                            "added": [picked["patient"]], "ranking": picked["ranking"]},
                                   labelled + [picked["patient"]], previous["model"], budget, evaluation, grouped,
                                   device, progress, seconds)
                if config.get("delete_models", True) and previous["round"] > 0 and os.path.exists(previous["model"]):
                    os.remove(previous["model"])  # the next round needs only this round's model
            _log(result)
            results.append(result)
            previous = result
    return [{k: v for k, v in r.items() if k != "model"} for r in results]


def _log(result: Dict[str, Any]) -> None:
    print(f"seed {result['seed']} {result['strategy']:>7} round {result['round']:2d}: {result['annotated']} "
          f"patient(s) (+{', '.join(result['added'])}), mean Dice {result['mean_dice']:.4f}, {result['seconds']}",
          flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = study_parser(__doc__.splitlines()[0], work="folder for models and per-round results (outside the repo)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    grouped = patients_of(config["data"])
    missing = [p for p in map(patient_name, config["eval_patients"]) if p not in grouped]
    if missing:
        parser.error(f"evaluation patients not in {config['data']}: {', '.join(missing)}")
    started = time.time()
    results = []
    for seed in config["seeds"]:
        results += run_seed(seed, config, grouped, args.work, args.device, args.progress)
    from active_report import write_report

    folder = report_folder(args, config)
    write_report(config, results, folder, argv=sys.argv, wall_seconds=time.time() - started)
    print(f"report: {folder}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
