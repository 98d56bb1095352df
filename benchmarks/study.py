"""Label-efficiency study: does pretraining beat random initialisation, and by how much?

    python benchmarks/study.py benchmarks/configs/acdc_cpu.json --work /tmp/study_acdc --jobs 2   # CPU
    python benchmarks/study.py benchmarks/configs/acdc_gpu.json --work /scratch/study_acdc            # GPU
    python benchmarks/study.py CONFIG --work DIR --report-only     # report of the cells done so far

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
5. With ``"unlabelled": N`` every arm's finetuning also self-trains on the images of N pool patients
   (:func:`unlabelled_patients`: never an evaluation patient, nor one the draw labels at any M the study
   allows), as ``maclcore finetune --unlabelled`` does.

Every unit of work (a pretraining, a finetune + evaluation) writes its result file when done and is
skipped when that file exists, so an interrupted study continues where it stopped (pretraining itself also
resumes from its own checkpoint). Workers sharing a work folder (`--jobs N`, or several invocations on one
machine) claim units through lock files beside the outputs, so no unit is done twice and a dead worker's unit
is taken over.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from acdc_subset import frames, patients  # noqa: E402
from common import label_links, load_study_config, report_folder, study_parser  # noqa: E402

from maclcore.errors import MaclError  # noqa: E402
from maclcore.evaluation.evaluate import evaluate_folders  # noqa: E402
from maclcore.inference.predict import predict_files  # noqa: E402
from maclcore.io.atomic import write_text_atomic  # noqa: E402
from maclcore.io.pairing import Case  # noqa: E402
from maclcore.labels import CARDIAC  # noqa: E402
from maclcore.training.finetune import FinetuneConfig, finetune  # noqa: E402
from maclcore.training.loop import LoopConfig  # noqa: E402
from maclcore.training.pretrain import pretrain, pretrain_config  # noqa: E402
from maclcore.runtime.progress import make_reporter  # noqa: E402
from maclcore.runtime.control import RunLock  # noqa: E402

RANDOM = "random"


@dataclass(frozen=True)
class Cell:
    """One finetune + evaluation: an arm, a number of labelled patients and a draw of them."""

    arm: str
    m: int
    draw: int
    patients: Tuple[int, ...]


def load_config(path: str) -> Dict[str, Any]:
    """The study's configuration; ``data`` (default: the shared ACDC folder) relative to the file."""
    return load_study_config(path)


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


def unlabelled_patients(pool: Sequence[int], draw: int, count: int, m: int) -> List[int]:
    """The ``count`` patients whose images the unlabelled volumes of ``draw`` are: the end of the draw's
    order of the pool (which holds no evaluation patient), so no arm of M <= len(pool) - count trains on them.
    One rule for this study and ``acdc_defaults.py --with-unlabelled``."""
    if m > len(pool) - count:
        raise SystemExit(f"{count} unlabelled patients leave {len(pool) - count} pool patients, fewer than M = {m}")
    order = draws(pool, [len(pool)], draw + 1, 0)[len(pool)][draw]
    return order[len(order) - count:]


def pool_of(config: Dict[str, Any]) -> List[int]:
    """The patients a study draws from: every patient of its data but the evaluation ones."""
    return [p for p in patients(config["data"]) if p not in set(config["eval_patients"])]


def _loop(default: LoopConfig, settings: Dict[str, Any], **fixed: Any) -> LoopConfig:
    """The trainer's own default loop (its batch size, weight average, ...) with the study's length and
    batch: ``epochs`` (with ``steps_per_epoch``) and/or ``time_budget`` minutes; neither: the device's
    default, as the command line does (a 10-minute budget on a CPU, the full schedule on a GPU)."""
    given = {key: settings[key] for key in ("epochs", "steps_per_epoch", "time_budget", "batch_size")
             if settings.get(key) is not None}
    return replace(default, **given, **fixed)


def _shape(config: Dict[str, Any]) -> Dict[str, Any]:
    """The study's spacing and U-Net widths where it fixes them; left out, the trainers derive them as
    the command line does."""
    shape: Dict[str, Any] = {}
    if config.get("spacing") is not None:
        shape["spacing"] = config["spacing"]
    if config.get("channels"):
        shape["channels"] = tuple(config["channels"])
    return shape


def pretrain_arm(arm: str, config: Dict[str, Any], pool: Sequence[int], work: str, device: str,
                 progress: str) -> str:
    """Pretrain one variant on the pool's images (once); returns the model file."""
    out = os.path.join(work, "pretrained", f"{arm}.pt")
    if os.path.exists(out):
        return out
    settings = config["pretrain"]
    base = pretrain_config(arm)
    pretrain_cfg = pretrain_config(arm, loop=_loop(base.loop, settings, seed=config["seed"]), **_shape(config),
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
    loop = _loop(FinetuneConfig().loop, settings, seed=config["seed"] + draw, validate_every=0)
    finetune_cfg = replace(FinetuneConfig(), loop=loop, val_fraction=0.0, **_shape(config),
                           **settings.get("overrides", {}))
    model = os.path.join(folder, "model.pt")
    reporter = make_reporter(progress)
    resume = os.path.exists(os.path.join(folder, "model.resume.pt"))
    others = unlabelled_patients(pool_of(config), draw, config["unlabelled"], m) if config.get("unlabelled") else []
    finetune(cases_of(chosen, config["data"]), model, finetune_cfg, CARDIAC, init=init, device=device,
             reporter=reporter, resume=resume, unlabelled=cases_of(others, config["data"], with_labels=False))
    evaluation = cases_of(config["eval_patients"], config["data"])
    predictions = os.path.join(folder, "predictions")
    predict_files(model, [c.image for c in evaluation], predictions, device=device, reporter=reporter)
    labels = label_links([c.label for c in evaluation], os.path.join(folder, "labels"))
    report = evaluate_folders(predictions, labels, CARDIAC, reporter=reporter)
    result = {"arm": arm, "M": m, "draw": draw, "patients": chosen, "unlabelled_patients": others,
              "seconds": round(time.perf_counter() - started, 1),
              "cases": report["cases"], "summary": report["summary"]}
    write_text_atomic(result_path, json.dumps(result, indent=1))
    if settings.get("delete_models", True):
        os.remove(model)  # predictions and results stay; models of every cell would fill the disk
    return result


def plan(config: Dict[str, Any]) -> Tuple[List[int], List[str], List[Cell]]:
    """The pretraining pool, and the study's units of work in the order they are taken: the arms to
    pretrain, then the cells by M, draw, arm."""
    pool = pool_of(config)
    chosen = draws(pool, config["labelled_counts"], config["draws"], config["seed"])
    cells = [Cell(arm, m, draw, tuple(drawn)) for m in config["labelled_counts"]
             for draw, drawn in enumerate(chosen[m]) for arm in config["arms"]]
    return pool, [arm for arm in config["arms"] if arm != RANDOM], cells


def _pretrained(arm: str, work: str) -> str:
    return os.path.join(work, "pretrained", f"{arm}.pt")


def _result_path(cell: Cell, work: str) -> str:
    return os.path.join(work, "runs", cell.arm, f"M{cell.m}_draw{cell.draw}", "result.json")


def _claim(output: str) -> Optional[RunLock]:
    """Take a unit of work unless another live worker has it; release the returned lock when done.
    (A claim file of its own, so the trainers' locks on the same outputs never clash with it.)"""
    lock = RunLock(output + ".claim")
    return lock if lock.acquire() else None


def work_through(config: Dict[str, Any], work: str, device: str, progress: str) -> None:
    """Do every unit of work that is neither done nor claimed by another worker, pretrainings first.

    Workers on one work folder share the study through claim files, so `--jobs N` (or N copies of this
    command started by hand on one machine: a claim names its owner by process id) split it without a
    scheduler."""
    pool, arms, cells = plan(config)
    pending: List[Any] = list(arms) + list(cells)
    while pending:
        for unit in pending:
            if isinstance(unit, str):
                output = _pretrained(unit, work)
                if os.path.exists(output):
                    pending.remove(unit)
                    break
                claim = _claim(output)
                if claim is None:
                    continue
                try:
                    pretrain_arm(unit, config, pool, work, device, progress)
                finally:
                    claim.release()
                pending.remove(unit)
                break
            if os.path.exists(_result_path(unit, work)):
                pending.remove(unit)
                break
            init = None if unit.arm == RANDOM else _pretrained(unit.arm, work)
            if init is not None and not os.path.exists(init):
                continue  # its pretraining is still running elsewhere
            claim = _claim(_result_path(unit, work))
            if claim is None:
                continue
            try:
                result = finetune_and_evaluate(unit.arm, unit.m, unit.draw, list(unit.patients), init, config, work,
                                               device, progress)
            finally:
                claim.release()
            print(f"{unit.arm:>11} M={unit.m} draw {unit.draw}: mean Dice "
                  f"{result['summary']['mean_foreground']['dice']['mean']:.4f} ({result['seconds']} s)", flush=True)
            pending.remove(unit)
            break
        else:
            time.sleep(5)  # all that is left is being done by other workers or waits for their pretraining


def _worker(config: Dict[str, Any], work: str, device: str, progress: str, threads: int) -> None:
    import threading

    import torch

    parent = os.getppid()

    def exit_with_parent() -> None:
        # A killed study must not leave workers running on: they would go on claiming units. Exiting
        # mid-step is safe, every file is written atomically and the unit's claim becomes stale.
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    torch.set_num_threads(threads)
    work_through(config, work, device, progress)


def collect(config: Dict[str, Any], work: str) -> List[Dict[str, Any]]:
    """The results of the cells done so far, in plan order."""
    results = []
    for cell in plan(config)[2]:
        path = _result_path(cell, work)
        if os.path.exists(path):
            with open(path) as handle:
                results.append(json.load(handle))
    return results


def run_study(config: Dict[str, Any], work: str, device: str, progress: str, jobs: int = 1) -> List[Dict[str, Any]]:
    """Run (or continue) the whole study with `jobs` worker processes; returns every cell's result."""
    if jobs <= 1:
        work_through(config, work, device, progress)
    else:
        # On a small CPU, N single-threaded workers get more done than one N-threaded one (small convolutions
        # scale poorly across threads); each worker gets an equal share of the cores.
        context = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // jobs)
        workers = [context.Process(target=_worker, args=(config, work, device, progress, threads))
                   for _ in range(jobs)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        failed = [w.exitcode for w in workers if w.exitcode != 0]
        if failed:
            raise MaclError(f"{len(failed)} study worker(s) failed (exit codes {failed}); see the messages above; "
                            f"run the command again to continue")
    return collect(config, work)


def main(argv: Optional[List[str]] = None) -> int:
    parser = study_parser(__doc__.splitlines()[0], work="folder for models and predictions (large; outside the repo)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes sharing the study (CPU: one per 1-2 cores)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the cells done so far (missing cells are listed) and run nothing")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    started = time.time()
    if args.report_only:
        results = collect(config, args.work)
    else:
        results = run_study(config, args.work, args.device, args.progress, jobs=args.jobs)
    from study_report import write_report

    folder = report_folder(args, config)
    write_report(config, results, folder, argv=sys.argv, wall_seconds=time.time() - started, work=args.work)
    print(f"report: {folder}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
