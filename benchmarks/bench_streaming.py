"""Training from the on-disk slice cache: slices held in memory against slices streamed batch by batch.

Pretrains the same model with the same seed three ways and checks that they compute the same thing:

* ``memory``: the default (every slice in the training device's memory; no cache);
* ``cache``: ``--cache-dir`` within the memory budget (the cache is built, then loaded into memory);
* ``streamed``: ``--cache-dir`` with ``--max-memory`` below the data's size (each batch is gathered from the
  memory-mapped cache, a step ahead, and copied to the device).

Reported per way: seconds to prepare the slices (read + preprocess, or open the cache), seconds per training
step, final loss, peak host memory and peak GPU memory; plus the cache's size on disk.

    python benchmarks/bench_streaming.py --device cuda --volumes 40
    python benchmarks/bench_streaming.py --device cpu --volumes 12 --channels 8,16,32,64,128 --spacing 2.5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_end_to_end import staged  # noqa: E402
from common import environment, save_report  # noqa: E402

from maclcore.data.cache import read_manifest  # noqa: E402
from maclcore.data.phantom import write_phantom_dataset  # noqa: E402
from maclcore.io.pairing import find_images  # noqa: E402
from maclcore.training.loop import LoopConfig  # noqa: E402
from maclcore.training.pretrain import pretrain, pretrain_config  # noqa: E402
from maclcore.runtime.progress import Reporter  # noqa: E402
from maclcore.data.storage import SliceStorage  # noqa: E402


class Messages(Reporter):
    def __init__(self) -> None:
        self.lines: List[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def run(args: argparse.Namespace, work: str) -> Dict[str, Any]:
    device = torch.device(args.device)
    if args.images:
        cases = find_images(args.images)
    else:
        write_phantom_dataset(os.path.join(work, "data"), args.volumes, seed=7)
        cases = find_images([os.path.join(work, "data", "imagesTr")])
    channels = tuple(int(c) for c in args.channels.split(",")) if args.channels else None
    overrides = {"channels": channels} if channels else {}
    config = pretrain_config("macl", loop=LoopConfig(epochs=args.epochs, batch_size=args.batch_size,
                                                     steps_per_epoch=args.steps, seed=args.seed, log_every=10 ** 6),
                             spacing=args.spacing, **overrides)
    cache_dir = os.path.join(work, "cache")
    ways = {"memory": SliceStorage(),
            "cache": SliceStorage(cache_dir=cache_dir),
            "streamed": SliceStorage(cache_dir=cache_dir, max_memory=args.max_memory, cache_dtype=args.cache_dtype)}
    if args.cache_dtype != "float32":
        ways["cache"] = SliceStorage(cache_dir=cache_dir, cache_dtype=args.cache_dtype)
    results: Dict[str, Any] = {}
    for name, storage in ways.items():
        reporter = Messages()
        summary, stats = staged(device, lambda: pretrain(cases, os.path.join(work, f"{name}.pt"), config,
                                                         device=args.device, reporter=reporter, storage=storage))
        history = summary["history"]
        # history[i]["elapsed"] counts from the first step; the first epoch includes warm-up.
        steps_after_first = history[-1]["step"] - history[0]["step"]
        per_step = ((history[-1]["elapsed"] - history[0]["elapsed"]) / steps_after_first if steps_after_first
                    else history[-1]["elapsed"] / history[-1]["step"])
        results[name] = {"total_seconds": stats["seconds"], "prepare_seconds": stats["seconds"] - history[-1]["elapsed"],
                         "seconds_per_step": per_step, "final_loss": history[-1]["loss"],
                         "losses": [h["loss"] for h in history], "peak_host_gib": stats["peak_host_gib"],
                         **({"peak_gpu_gib": stats["peak_gpu_gib"]} if "peak_gpu_gib" in stats else {}),
                         "streamed": any("streaming each batch" in line for line in reporter.lines),
                         "messages": reporter.lines}
    manifest = read_manifest(cache_dir) or {}
    disk = sum(os.path.getsize(os.path.join(cache_dir, f)) for f in os.listdir(cache_dir))
    exact = args.cache_dtype == "float32"
    return {"benchmark": "streaming", **environment(device),
            "data": f"{len(cases)} volumes, {manifest.get('count')} slices of {manifest.get('size')}px",
            "settings": {"epochs": args.epochs, "steps_per_epoch": args.steps, "batch_size": args.batch_size,
                         "channels": list(channels) if channels else "default", "spacing": args.spacing,
                         "max_memory_gb": args.max_memory, "cache_dtype": args.cache_dtype, "seed": args.seed},
            "slices_gb_in_memory": None if not manifest else
            manifest["count"] * manifest["size"] ** 2 * 4 / 1e9,
            "cache_disk_gb": disk / 1e9,
            "same_loss": (results["streamed"]["losses"] == results["memory"]["losses"] if exact else None),
            "max_loss_difference": max(abs(a - b) for a, b in zip(results["streamed"]["losses"],
                                                                   results["memory"]["losses"])),
            "ways": results}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", nargs="+", help="volumes to use (default: synthetic phantoms)")
    parser.add_argument("--volumes", type=int, default=24, help="phantoms to generate")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="steps per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--channels", help="U-Net widths (default: MACLCore's, 32-512)")
    parser.add_argument("--spacing", type=float)
    parser.add_argument("--max-memory", type=float, default=0.005, help="GB budget of the streamed way")
    parser.add_argument("--cache-dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/streaming_<device>.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="maclcore-stream-") as work:
        report = run(args, work)
    out = save_report(report, args.out, "streaming", torch.device(args.device).type)
    print(f"{report['device']}; {report['data']}; {report['slices_gb_in_memory']:.3f} GB in memory, "
          f"cache {report['cache_disk_gb']:.3f} GB on disk, budget {args.max_memory} GB")
    for name, way in report["ways"].items():
        print(f"{name:>9}: prepare {way['prepare_seconds']:.2f} s, {1000 * way['seconds_per_step']:.1f} ms/step, "
              f"final loss {way['final_loss']:.6f}, streamed {way['streamed']}, peak host {way['peak_host_gib']:.2f} GiB")
    print(f"same loss as in memory: {report['same_loss']} (max difference {report['max_loss_difference']:.2e})")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
