"""Pretraining throughput: MACLCore's training step side by side with a plain reference implementation.

Both paths train the same network (MACLNet) with the same loss (MLC) on the same synthetic slices:

* **fast** (what ``maclcore pretrain`` runs): slices resident on the device, one batched affine warp of all
  views on the device, bf16 autocast on CUDA, channels_last, fused SGD on CUDA, optional ``torch.compile``.
* **reference** (a standard PyTorch pipeline): fp32, each sample's two views augmented on the CPU in the
  dataset's ``__getitem__`` (``affine_grid``/``grid_sample`` per sample) behind a ``torch.utils.data.DataLoader``
  (``--workers`` processes, pinned memory on CUDA), NCHW layout, no compile, torch's default (non-fused) SGD.

Each step is timed from fetching its batch to the end of the optimizer step (the device synchronised); the
median of ``--steps`` steps after ``--warmup`` is reported, with slices/s, the model FLOPs of a step (counted
by ``torch.utils.flop_counter``), the achieved TFLOP/s and its fraction of the GPU's bf16 dense peak (null on
a CPU or an unknown GPU), peak GPU memory, and the speed-up of fast over reference at each size and batch.

    python benchmarks/bench_pretrain.py --device cuda                      # 256/512 x 16/32, bf16 and fp32
    python benchmarks/bench_pretrain.py --device cpu --sizes 64 --batch-sizes 8

Results go to benchmarks/results/pretrain_<device>.json (device name, versions, settings included).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

import torch

from maclcore.data.augment import adjust_intensity, random_affines, random_intensity, warp
from maclcore.data.dataset import SliceData
from maclcore.losses.mlc import mlc_loss
from maclcore.models.macl import MACLNet
from maclcore.models.unet import UNetConfig
from maclcore.training.loop import LoopConfig
from maclcore.training.pretrain import PretrainConfig, PretrainTask, pretrain_config
from maclcore.runtime.device import autocast, is_out_of_memory, step_generator
from maclcore.runtime.processes import Processes
from maclcore.training.session import make_optimizer, prepare_model

from common import environment, save_report

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets; matched against
# torch.cuda.get_device_name in this order (first match wins).
BF16_DENSE_PEAK_TFLOPS = [
    ("H200 NVL", 835.0), ("H200", 989.4),
    ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4),  # "NVIDIA H100 80GB HBM3" is the SXM part
    ("A100", 312.0),
]


def bf16_peak_tflops(name: str) -> Optional[float]:
    """The bf16 dense peak of a GPU by name; None for a CPU or a GPU not in the table."""
    if name.startswith("CPU"):
        return None
    for key, peak in BF16_DENSE_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_slices(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (the network's cost does not depend on the content)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, max(2, size // 8), max(2, size // 8), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def count_flops(config: PretrainConfig, channels: tuple, size: int, batch: int, device: torch.device) -> int:
    """Floating-point operations of one forward + backward step, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    images = synthetic_slices(batch, size).to(device)
    data = SliceData(images=images, positions=torch.rand(batch, device=device),
                     volumes=torch.zeros(batch, dtype=torch.long, device=device))
    task = PretrainTask(MACLNet(UNetConfig(channels=channels), config.network).to(device), data, config, Processes())
    counter = FlopCounterMode(display=False)
    with counter:
        task.loss(torch.arange(batch, device=device), step_generator(0, 0, device), 0, batch).backward()
    return int(counter.get_total_flops())


def _summary(times: List[float], batch: int, flops: Optional[int], device: torch.device,
             peak: Optional[float]) -> Dict[str, Any]:
    median = statistics.median(times)
    tflops = flops / median / 1e12 if flops else None
    result = {"median_step_s": median, "min_step_s": min(times), "max_step_s": max(times), "steps_timed": len(times),
              "slices_per_s": batch / median, "flops_per_step": flops, "tflops_per_s": tflops,
              "fraction_of_bf16_peak": tflops / peak if tflops and peak else None}
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return result


def measure_fast(size: int, batch: int, precision: str, device: torch.device, steps: int, warmup: int,
                 channels: tuple, flops: int, peak: Optional[float], compile: bool = False) -> Dict[str, Any]:
    """MACLCore's step as ``maclcore pretrain`` runs it."""
    torch.manual_seed(0)
    loop = LoopConfig(amp=precision == "bf16", channels_last=True, compile=compile)
    config = pretrain_config("macl", channels=channels, loop=loop)
    images = synthetic_slices(max(4 * batch, 64), size).to(device)
    data = SliceData(images=images, positions=torch.rand(images.shape[0], device=device),
                     volumes=torch.zeros(images.shape[0], dtype=torch.long, device=device))
    model = prepare_model(MACLNet(UNetConfig(channels=channels), config.network), Processes(), device, loop)
    task = PretrainTask(model, data, config, Processes())
    optimizer = make_optimizer(torch.optim.SGD, model, device, lr=0.01, momentum=0.9, weight_decay=1e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: List[float] = []
    order = torch.randint(0, images.shape[0], (warmup + steps, batch), generator=torch.Generator().manual_seed(1))
    order = order.to(device)
    for step in range(warmup + steps):
        synchronize(device)
        started = time.perf_counter()
        with autocast(device, loop.amp):
            loss = task.loss(order[step], step_generator(0, step, device), 0, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    effective = precision if device.type == "cuda" else "fp32"  # autocast is CUDA-only here
    return {"path": "fast", "size": size, "batch_size": batch, "precision": effective, "compile": compile,
            "channels_last": device.type == "cuda", "fused_optimizer": device.type == "cuda",
            "loss": float(loss.detach()), **_summary(times, batch, flops, device, peak)}


class ReferenceDataset(torch.utils.data.Dataset):
    """The textbook pipeline: each ``__getitem__`` draws and applies one sample's two augmented views on the CPU."""

    def __init__(self, images: torch.Tensor, positions: torch.Tensor, config: PretrainConfig, seed: int = 0) -> None:
        self.images, self.positions, self.config, self.seed = images, positions, config, seed

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index * 7919 + int(torch.randint(1 << 30, ())))
        theta = random_affines(2, self.config.augmentation, generator, torch.device("cpu"))
        intensity = random_intensity(2, self.config.augmentation, generator, torch.device("cpu"))
        image = self.images[index][None].expand(2, -1, -1, -1)
        views = adjust_intensity(warp(image, theta, "bilinear"), intensity)
        return views, self.positions[index]


def measure_reference(size: int, batch: int, device: torch.device, steps: int, warmup: int, channels: tuple,
                      workers: int, flops: int, peak: Optional[float]) -> Dict[str, Any]:
    """The same model and loss through a plain fp32 DataLoader pipeline."""
    torch.manual_seed(0)
    config = pretrain_config("macl", channels=channels)
    images = synthetic_slices(max(4 * batch, 64), size)
    dataset = ReferenceDataset(images, torch.rand(images.shape[0]), config)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=(warmup + steps) * batch,
                                             generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=False)
    model = MACLNet(UNetConfig(channels=channels), config.network).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    benchmark_mode = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # a plain script does not autotune (the fast path turned it on)
    scale = 2 ** config.network.decoder_depth
    ids = torch.arange(batch, device=device).repeat(2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: List[float] = []
    batches = iter(loader)
    for step in range(warmup + steps):
        synchronize(device)
        started = time.perf_counter()
        views, positions = next(batches)
        views = views.to(device, non_blocking=True).transpose(0, 1).reshape(2 * batch, 1, size, size)
        positions = positions.to(device, non_blocking=True).repeat(2)
        loss = mlc_loss(model(views), positions, ids, config.loss, scale)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    torch.backends.cudnn.benchmark = benchmark_mode
    return {"path": "reference", "size": size, "batch_size": batch, "precision": "fp32", "workers": workers,
            "loss": float(loss.detach()), **_summary(times, batch, flops, device, peak)}


def guarded(fn, *args, **kwargs) -> Optional[Dict[str, Any]]:
    """A measurement, or None when the setting does not fit in memory."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def run(device: torch.device, sizes: List[int], batches: List[int], precisions: List[str], channels: tuple,
        steps: int, warmup: int, workers: int, compile: bool = False, reference: bool = True) -> Dict[str, Any]:
    """Every setting, both paths; returns the report (not yet saved)."""
    env = environment(device)
    peak = bf16_peak_tflops(env["device"])
    if device.type != "cuda":
        precisions = ["fp32"]  # bf16 autocast is used on CUDA only: on a CPU both would be the same run
    results, comparisons, skipped = [], [], []
    for size in sizes:
        for batch in batches:
            # Counted in fp32 on the device; None when that alone does not fit in memory.
            flops = guarded(count_flops, pretrain_config("macl", channels=channels), channels, size, batch, device)
            fast = {}
            for precision in precisions:
                row = guarded(measure_fast, size, batch, precision, device, steps, warmup, channels, flops, peak, compile)
                if row is None:
                    skipped.append({"path": "fast", "size": size, "batch_size": batch, "precision": precision,
                                    "reason": "out of memory"})
                    continue
                results.append(row)
                fast[precision] = row
            if not reference:
                continue
            ref = guarded(measure_reference, size, batch, device, steps, warmup, channels, workers, flops, peak)
            if ref is None:
                skipped.append({"path": "reference", "size": size, "batch_size": batch, "reason": "out of memory"})
                continue
            results.append(ref)
            for precision, row in fast.items():
                comparisons.append({"size": size, "batch_size": batch, "fast_precision": precision,
                                    "speedup": ref["median_step_s"] / row["median_step_s"]})
    return {"benchmark": "pretrain_throughput", **env, "bf16_dense_peak_tflops": peak, "channels": list(channels),
            "settings": {"sizes": sizes, "batch_sizes": batches, "precisions": precisions, "steps": steps,
                         "warmup": warmup, "workers": workers, "compile": compile},
            "results": results, "speedups": comparisons, "skipped": skipped}


def print_report(report: Dict[str, Any]) -> None:
    print(f"{report['device']}, torch {report['torch']}, channels {report['channels']}, "
          f"bf16 peak {report['bf16_dense_peak_tflops']} TFLOP/s")
    print(f"{'path':>9} {'size':>5} {'batch':>5} {'prec':>5} {'step ms':>9} {'slices/s':>9} {'GFLOP/step':>11}"
          f" {'TFLOP/s':>8} {'of peak':>8} {'GPU GiB':>8}")
    for r in report["results"]:
        share = r["fraction_of_bf16_peak"]
        print(f"{r['path']:>9} {r['size']:>5} {r['batch_size']:>5} {r['precision']:>5} {1000 * r['median_step_s']:>9.1f} "
              f"{r['slices_per_s']:>9.1f} {(r['flops_per_step'] or math.nan) / 1e9:>11.1f} "
              f"{r['tflops_per_s'] or math.nan:>8.3f} "
              f"{'-' if share is None else f'{100 * share:.1f}%':>8} {r.get('peak_gpu_memory_gib', math.nan):>8.2f}")
    for c in report["speedups"]:
        print(f"speed-up fast ({c['fast_precision']}) / reference at {c['size']}px, batch {c['batch_size']}: "
              f"{c['speedup']:.2f}x")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", help="slice sizes (default: 256 512 on CUDA, 64 on a CPU)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="slices per step (default: 16 32 on CUDA, 8 on a CPU)")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"],
                        help="precisions of the fast path (CUDA; a CPU runs fp32)")
    parser.add_argument("--channels", default="32,64,128,256,512")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, help="DataLoader workers of the reference path "
                                                    "(default: min(8, cores) on CUDA, 0 on a CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path's network")
    parser.add_argument("--no-reference", action="store_true", help="time the fast path only")
    parser.add_argument("--threads", type=int, help="torch threads (CPU)")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/pretrain_<device>.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    channels = tuple(int(c) for c in args.channels.split(","))
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if gpu else 0)
    report = run(device, args.sizes or ([256, 512] if gpu else [64]), args.batch_sizes or ([16, 32] if gpu else [8]),
                 args.precisions, channels, args.steps, args.warmup, workers, args.compile, not args.no_reference)
    out = save_report(report, args.out, "pretrain", device.type)
    print_report(report)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
