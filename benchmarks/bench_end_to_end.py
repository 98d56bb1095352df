"""End-to-end times a user waits for: finetuning on 2 labelled cases to its final Dice, and segmenting one
cardiac volume from file to ``.seg.nrrd``; fast path against a plain reference path, with peak memory.

Stages (each timed on its own, with peak host memory (RSS) and peak GPU memory):

* ``finetune``: :func:`maclcore.training.finetune.finetune` on 2 labelled cases, then the mean foreground
  Dice of the model on a held-out case. Fast = MACLCore's defaults (bf16 autocast, channels_last, fused Adam,
  batched augmentation on the device); reference = the same run in fp32 without channels_last. On a CPU the
  two are the same computation, so the reference is skipped there.
* ``predict``: read the image file -> preprocess -> network -> restore to the input grid -> largest component
  -> write ``.seg.nrrd``. Fast = :func:`maclcore.inference.predict.predict_files` (batches of slices, bf16 and
  channels_last on CUDA; without test-time augmentation, like the reference); reference = the same
  steps with one slice per forward pass in fp32. Timed
  ``--repeats`` times in this process (model loaded once per call, as ``maclcore predict`` does), plus once as
  the actual command ``python -m maclcore predict`` (interpreter start and imports included).

Data: synthetic phantoms by default (no download, known truth); ``--acdc PATH`` uses a folder in nnU-Net
layout (imagesTr/labelsTr, e.g. ACDC), training on ``--train`` cases and testing on ``--test``.

    python benchmarks/bench_end_to_end.py --device cuda --acdc ../shared/data/acdc
    python benchmarks/bench_end_to_end.py --device cpu --channels 16,32,64,128,256 --spacing 3.6 --epochs 60
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, save_report  # noqa: E402

from maclcore.data.phantom import write_phantom_dataset  # noqa: E402
from maclcore.data.preprocessing import pad_slices, padded_size, prepare_volume, restore_probabilities  # noqa: E402
from maclcore.evaluation.metrics import overlap_per_class  # noqa: E402
from maclcore.inference.postprocess import keep_largest_component  # noqa: E402
from maclcore.inference.predict import load_segmentation_model, predict_files  # noqa: E402
from maclcore.io.pairing import Case, pair_cases  # noqa: E402
from maclcore.io.segmentation import read_label_map, write_label_map  # noqa: E402
from maclcore.io.volume import read_volume  # noqa: E402
from maclcore.labels import CARDIAC  # noqa: E402
from maclcore.training.finetune import FinetuneConfig, finetune  # noqa: E402
from maclcore.training.loop import LoopConfig  # noqa: E402
from maclcore.runtime.progress import Reporter  # noqa: E402


# -- peak memory of a stage ---------------------------------------------------------------------------------

def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_host_peak() -> bool:
    """Reset this process's peak RSS (Linux: write 5 to /proc/self/clear_refs); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def host_peak_gib() -> float:
    """Peak resident memory since the last reset (VmHWM), or since start (ru_maxrss) where it cannot be reset."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            kib //= 1024
    return kib / 2 ** 20


def staged(device: torch.device, fn: Callable[[], Any]) -> Tuple[Any, Dict[str, Any]]:
    """Run ``fn`` as one stage: its result, and its wall time and peak host and GPU memory."""
    resettable = reset_host_peak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats = {"seconds": time.perf_counter() - started, "peak_host_gib": host_peak_gib(),
             "host_peak_is_per_stage": resettable}
    if device.type == "cuda":
        stats["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return result, stats


# -- data ---------------------------------------------------------------------------------------------------

def phantom_cases(folder: str) -> Tuple[List[Case], Case]:
    write_phantom_dataset(os.path.join(folder, "labelled"), 2, seed=1, prefix="labelled")
    write_phantom_dataset(os.path.join(folder, "test"), 1, seed=2, prefix="test")
    train = pair_cases(os.path.join(folder, "labelled", "imagesTr"), os.path.join(folder, "labelled", "labelsTr"))
    test = pair_cases(os.path.join(folder, "test", "imagesTr"), os.path.join(folder, "test", "labelsTr"))
    return train, test[0]


def folder_cases(root: str, train: Optional[List[str]], test: Optional[str]) -> Tuple[List[Case], Case]:
    cases = {c.name: c for c in pair_cases(os.path.join(root, "imagesTr"), os.path.join(root, "labelsTr"))}
    names = sorted(cases)
    train = train or names[:2]
    test = test or names[-1]
    return [cases[n] for n in train], cases[test]


# -- prediction paths ---------------------------------------------------------------------------------------

def predict_reference(model_path: str, image: str, output: str, device: torch.device) -> None:
    """Read -> preprocess -> one slice per fp32 forward pass -> restore -> largest component -> write."""
    model = load_segmentation_model(model_path, device)
    network = model.network.to(memory_format=torch.contiguous_format).eval()
    volume = read_volume(image)
    prepared = prepare_volume(image, volume.array, volume.geometry, model.preprocessing)
    shape = prepared.image.shape[-2:]
    slices = torch.from_numpy(pad_slices(prepared.image, padded_size(shape, model.preprocessing)))[:, None]
    with torch.no_grad():
        probs = torch.cat([network(s[None].to(device)).float().softmax(1) for s in slices])
    labels = restore_probabilities(probs, shape, prepared.geometry).argmax(1).to(torch.uint8).cpu().numpy()
    if model.schema.single_component:
        labels = keep_largest_component(labels, model.schema.num_classes)
    write_label_map(labels, volume.geometry, output, model.schema)


def dice_of(prediction_path: str, case: Case) -> float:
    image = read_volume(case.image)
    truth = read_label_map(case.label, CARDIAC, image.geometry)
    prediction = read_label_map(prediction_path, CARDIAC, image.geometry)
    return float(np.mean(overlap_per_class(prediction, truth, CARDIAC.num_classes)["dice"]))


def command_time(model: str, image: str, output: str, device: str) -> Dict[str, Any]:
    """``python -m maclcore predict`` as a user runs it: wall time and the child's peak RSS."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "maclcore", "predict", "--model", model, "--image", image,
                                    "--out", output, "--device", device, "--progress", "none"],
                                   stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own resource usage, peak RSS included
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"maclcore predict failed: {errors.read().decode(errors='replace')[-2000:]}")
    peak_kib = usage.ru_maxrss // (1024 if sys.platform == "darwin" else 1)
    return {"seconds": seconds, "peak_host_gib": peak_kib / 2 ** 20}


# -- the benchmark ------------------------------------------------------------------------------------------

def run(args: argparse.Namespace, work: str) -> Dict[str, Any]:
    device = torch.device(args.device)
    if args.acdc:
        train, test = folder_cases(args.acdc, args.train, args.test)
        data = f"{args.acdc}: train {[c.name for c in train]}, test {test.name}"
    else:
        train, test = phantom_cases(os.path.join(work, "data"))
        data = "synthetic phantoms (maclcore.data.phantom): 2 labelled, 1 test"
    channels = tuple(int(c) for c in args.channels.split(",")) if args.channels else None
    paths = ["fast"] + (["reference"] if device.type == "cuda" or args.reference_on_cpu else [])
    stages: Dict[str, Any] = {}
    models: Dict[str, str] = {}
    for path in paths:
        fast = path == "fast"
        loop = LoopConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, amp=fast,
                          channels_last=fast, compile=fast and args.compile, checkpoint_every=args.epochs)
        config = FinetuneConfig(loop=loop, channels=channels, spacing=args.spacing)
        models[path] = os.path.join(work, f"model_{path}.pt")
        summary, stats = staged(device, lambda: finetune(train, models[path], config, device=args.device,
                                                         reporter=Reporter()))
        prediction = os.path.join(work, f"dice_{path}.seg.nrrd")
        predict_files(models[path], [test.image], prediction, fmt="seg.nrrd", device=args.device, reporter=Reporter(),
                      tta=False)
        stats.update({"dice": dice_of(prediction, test), "final_loss": summary["history"][-1]["loss"],
                      "epochs": args.epochs, "steps": summary["history"][-1]["step"]})
        stages[f"finetune_{path}"] = stats
    model = models["fast"]
    for path in ("fast", "reference"):
        runs = []
        for repeat in range(args.repeats):
            output = os.path.join(work, f"pred_{path}_{repeat}.seg.nrrd")
            if path == "fast":
                call = lambda: predict_files(model, [test.image], output, fmt="seg.nrrd", device=args.device,  # noqa: E731
                                             reporter=Reporter(), tta=False)
            else:
                call = lambda: predict_reference(model, test.image, output, device)  # noqa: E731
            runs.append(staged(device, call)[1])
        seconds = [r["seconds"] for r in runs]
        stages[f"predict_{path}"] = {"seconds": statistics.median(seconds), "first_seconds": seconds[0],
                                     "repeats": len(runs), "peak_host_gib": max(r["peak_host_gib"] for r in runs),
                                     **({"peak_gpu_gib": max(r["peak_gpu_gib"] for r in runs)} if device.type == "cuda"
                                        else {}),
                                     "dice": dice_of(output, test)}
    stages["predict_command"] = command_time(model, test.image, os.path.join(work, "cli.seg.nrrd"), args.device)
    image = read_volume(test.image)
    speedups = {"finetune": (stages["finetune_reference"]["seconds"] / stages["finetune_fast"]["seconds"]
                             if "finetune_reference" in stages else None),
                "predict": stages["predict_reference"]["seconds"] / stages["predict_fast"]["seconds"]}
    return {"benchmark": "end_to_end", **environment(device), "data": data,
            "test_volume": {"name": test.name, "size": list(image.geometry.size),
                            "spacing": list(image.geometry.spacing)},
            "settings": {"epochs": args.epochs, "batch_size": args.batch_size, "channels": list(channels) if channels
                         else "default", "spacing": args.spacing, "seed": args.seed, "compile": args.compile,
                         "repeats": args.repeats},
            "stages": stages, "speedups": speedups}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--acdc", help="folder in nnU-Net layout (imagesTr, labelsTr) instead of phantoms")
    parser.add_argument("--train", nargs=2, help="the 2 labelled cases (default: the first two)")
    parser.add_argument("--test", help="the case to segment (default: the last)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--channels", help="U-Net widths (default: MACLCore's, 32-512)")
    parser.add_argument("--spacing", type=float, help="in-plane spacing in mm (default: derived from the data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="torch.compile in the fast finetuning")
    parser.add_argument("--repeats", type=int, default=5, help="timed predictions per path (the median is reported)")
    parser.add_argument("--reference-on-cpu", action="store_true",
                        help="also run the reference finetuning on a CPU (the same computation there)")
    parser.add_argument("--threads", type=int, help="torch threads (CPU)")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/end_to_end_<device>.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        report = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="maclcore-e2e-") as work:
            report = run(args, work)
    out = save_report(report, args.out, "end_to_end", torch.device(args.device).type)
    print(f"{report['device']}, torch {report['torch']}; {report['data']}")
    for name, stage in report["stages"].items():
        extra = "".join(f", {k} {v:.3f}" for k, v in stage.items() if k in ("dice", "peak_gpu_gib"))
        print(f"{name:>20}: {stage['seconds']:8.2f} s, peak host {stage['peak_host_gib']:.2f} GiB{extra}")
    print(f"speed-ups (reference / fast): {report['speedups']}")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
