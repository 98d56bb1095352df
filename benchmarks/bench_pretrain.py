"""Pretraining throughput: slices per second and peak memory of MACL's training step.

Times the real step (batched augmentation on the device, both branches, MLC loss, backward, SGD) on
synthetic slices resident on the device, at each size / batch size / precision asked for, and saves JSON
with the device name and versions.

    python benchmarks/bench_pretrain.py --device cuda --sizes 256 --batch-sizes 16 --precisions bf16 fp32
    python benchmarks/bench_pretrain.py --device cpu --sizes 64 --batch-sizes 4 --precisions fp32

The median of the timed steps (after warm-up) is reported; compare ratios within one file, and absolute
numbers only on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Dict, List

import torch

from maclcore.data.dataset import SliceData
from maclcore.models.macl import MACLNet
from maclcore.models.unet import UNetConfig
from maclcore.training.pretrain import PretrainTask, pretrain_config
from maclcore.training.runtime import Processes, autocast, step_generator

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU's model name and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(task: PretrainTask, batch: int) -> int:
    """Floating-point operations of one forward + backward step, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss = task.loss(torch.arange(batch, device=task.data.images.device),
                         step_generator(0, 0, task.data.images.device), 0, batch)
        loss.backward()
    task.model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def measure(size: int, batch: int, precision: str, device: torch.device, steps: int, warmup: int,
            channels: tuple) -> Dict[str, Any]:
    """Median step time of pretraining at one setting."""
    torch.manual_seed(0)
    config = pretrain_config("macl", channels=channels)
    images = torch.rand(max(4 * batch, 64), 1, size, size, device=device)
    data = SliceData(images=images, positions=torch.rand(images.shape[0], device=device),
                     volumes=torch.zeros(images.shape[0], dtype=torch.long, device=device))
    model = MACLNet(UNetConfig(channels=channels), config.network).to(device)
    task = PretrainTask(model, data, config, Processes())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    flops = count_flops(task, batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: List[float] = []
    for step in range(warmup + steps):
        indices = torch.randint(0, images.shape[0], (batch,), device=device)
        synchronize(device)
        started = time.perf_counter()
        with autocast(device, precision == "bf16"):
            loss = task.loss(indices, step_generator(0, step, device), 0, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    median = statistics.median(times)
    result = {"size": size, "batch_size": batch, "precision": precision, "median_step_s": median,
              "slices_per_s": batch / median, "flops_per_step": flops, "tflops_per_s": flops / median / 1e12,
              "steps_timed": steps, "loss": float(loss.detach())}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return result


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--channels", default="32,64,128,256,512")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/pretrain_<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    channels = tuple(int(c) for c in args.channels.split(","))
    results = [measure(size, batch, precision, device, args.steps, args.warmup, channels)
               for size in args.sizes for batch in args.batch_sizes for precision in args.precisions]
    report = {"benchmark": "pretrain_throughput", "device": device_name(device), "torch": str(torch.__version__),
              "python": platform.python_version(), "channels": list(channels), "results": results,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = args.out or os.path.join(RESULTS, f"pretrain_{device.type}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as handle:
        json.dump(report, handle, indent=1)
    print(f"{report['device']}, torch {report['torch']}, channels {args.channels}")
    print(f"{'size':>5} {'batch':>5} {'prec':>5} {'step ms':>9} {'slices/s':>9} {'GFLOP/step':>11} {'TFLOP/s':>8}"
          f" {'peak GiB':>9}")
    for r in results:
        print(f"{r['size']:>5} {r['batch_size']:>5} {r['precision']:>5} {1000 * r['median_step_s']:>9.1f} "
              f"{r['slices_per_s']:>9.1f} {r['flops_per_step'] / 1e9:>11.1f} {r['tflops_per_s']:>8.3f} "
              f"{r.get('peak_memory_gib', float('nan')):>9.2f}")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
