"""Data-parallel scaling of MACL pretraining: the real training step under torchrun with 1, 2, ... processes.

Each process runs what ``torchrun ... -m maclcore pretrain`` runs: DistributedDataParallel with global
BatchNorm, negatives gathered across processes, the batched on-device augmentation (gloo on a CPU, nccl on
GPUs). Two ways to scale:

* ``--mode weak`` (default): the same batch per process (``--batch-size``); the global batch grows with the
  processes, as when one adds GPUs to ``maclcore pretrain --batch-size B``.
* ``--mode strong``: the same global batch (``--batch-size`` x the largest process count), split over the
  processes.

Reported per process count: median step time (rank 0, after warm-up, device synchronised), throughput in
slices/s over all processes, and the scaling efficiency throughput(P) / (P x throughput(1)).

    python benchmarks/bench_scaling.py --device cuda --procs 1 2 4 8 --size 256 --batch-size 16
    python benchmarks/bench_scaling.py --device cpu --procs 1 2 --size 64 --batch-size 8   # 1 thread per process

Several machines: start the same worker on every node with torchrun's rendezvous (see the README), e.g.
``torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id bench
benchmarks/bench_scaling.py --worker --device cuda --size 256 --batch-size 16 --result out.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_pretrain import synthetic_slices  # noqa: E402
from common import environment, save_report  # noqa: E402

from maclcore.data.dataset import SliceData  # noqa: E402
from maclcore.models.macl import MACLNet  # noqa: E402
from maclcore.models.unet import UNetConfig  # noqa: E402
from maclcore.training.loop import LoopConfig  # noqa: E402
from maclcore.training.pretrain import PretrainTask, pretrain_config  # noqa: E402
from maclcore.runtime.device import autocast, step_generator  # noqa: E402
from maclcore.runtime.processes import setup_processes, teardown_processes  # noqa: E402
from maclcore.training.session import make_optimizer, prepare_model  # noqa: E402


def efficiency(throughputs: Dict[int, float]) -> Dict[int, float]:
    """throughput(P) / (P x throughput(1)) for each process count P (1.0 = perfect scaling)."""
    base = throughputs[1]
    return {procs: value / (procs * base) for procs, value in throughputs.items()}


def worker(args: argparse.Namespace) -> None:
    """One process of a torchrun job: time the pretraining step, rank 0 writes the result."""
    procs, device = setup_processes(args.device)
    channels = tuple(int(c) for c in args.channels.split(","))
    batch = args.batch_size
    global_batch = batch * procs.world_size
    loop = LoopConfig(amp=args.precision == "bf16", channels_last=True, compile=args.compile)
    config = pretrain_config("macl", channels=channels, loop=loop)
    torch.manual_seed(0)
    images = synthetic_slices(max(4 * global_batch, 64), args.size).to(device)
    data = SliceData(images=images, positions=torch.rand(images.shape[0], generator=torch.Generator().manual_seed(0)).to(device),
                     volumes=torch.zeros(images.shape[0], dtype=torch.long, device=device))
    model = prepare_model(MACLNet(UNetConfig(channels=channels), config.network), procs, device, loop)
    task = PretrainTask(model, data, config, procs)
    optimizer = make_optimizer(torch.optim.SGD, model, device, lr=0.01, momentum=0.9, weight_decay=1e-4)
    order = torch.randint(0, images.shape[0], (args.warmup + args.steps, global_batch),
                          generator=torch.Generator().manual_seed(1)).to(device)
    offset = procs.rank * batch
    times: List[float] = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with autocast(device, loop.amp):
            loss = task.loss(order[step, offset:offset + batch], step_generator(0, step, device), offset, global_batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    if procs.is_main:
        median = statistics.median(times)
        result = {"processes": procs.world_size, "batch_per_process": batch, "global_batch": global_batch,
                  "median_step_s": median, "slices_per_s": global_batch / median, "loss": float(loss.detach()),
                  "backend": torch.distributed.get_backend() if procs.distributed else None,
                  "threads_per_process": torch.get_num_threads(), **environment(device)}
        with open(args.result, "w") as handle:
            json.dump(result, handle)
    teardown_processes()


def launch(args: argparse.Namespace, processes: int, batch: int, result: str) -> Dict[str, Any]:
    """One torchrun job of ``processes`` workers on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               os.path.abspath(__file__), "--worker", "--device", args.device, "--size", str(args.size),
               "--batch-size", str(batch), "--channels", args.channels, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--precision", args.precision, "--result", result]
    if args.compile:
        command.append("--compile")
    env = dict(os.environ)
    if args.device == "cpu" or args.threads_per_process:
        env["OMP_NUM_THREADS"] = str(args.threads_per_process or 1)
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    if completed.returncode != 0:
        raise RuntimeError(f"{processes} process(es) failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}")
    with open(result) as handle:
        return json.load(handle)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts (1 is always run)")
    parser.add_argument("--mode", choices=("weak", "strong"), default="weak",
                        help="weak: same batch per process; strong: same global batch")
    parser.add_argument("--size", type=int, help="slice size (default 256 on CUDA, 64 on a CPU)")
    parser.add_argument("--batch-size", type=int, help="slices per process (weak) or per process at the largest "
                                                       "count (strong); default 16 on CUDA, 8 on a CPU")
    parser.add_argument("--channels", default="32,64,128,256,512")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="autocast on CUDA")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads-per-process", type=int,
                        help="OMP/torch threads per process (default 1 on a CPU, so that P processes use P cores)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per torchrun job")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/scaling_<device>.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.size = args.size or (256 if gpu else 64)
    args.batch_size = args.batch_size or (16 if gpu else 8)
    if args.worker:
        worker(args)
        return 0
    counts = sorted(set([1] + args.procs))
    largest = max(counts)
    runs = []
    with tempfile.TemporaryDirectory(prefix="maclcore-scaling-") as work:
        for count in counts:
            if args.mode == "weak":
                batch = args.batch_size
            else:
                if (args.batch_size * largest) % count:
                    raise SystemExit(f"--mode strong: global batch {args.batch_size * largest} does not split over {count}")
                batch = args.batch_size * largest // count
            runs.append(launch(args, count, batch, os.path.join(work, f"p{count}.json")))
            print(f"{count} process(es), {batch} slices each: {runs[-1]['median_step_s'] * 1000:.1f} ms/step, "
                  f"{runs[-1]['slices_per_s']:.1f} slices/s", flush=True)
    eff = efficiency({r["processes"]: r["slices_per_s"] for r in runs})
    for r in runs:
        r["efficiency"] = eff[r["processes"]]
        r["speedup"] = r["slices_per_s"] / runs[0]["slices_per_s"]
    env = {k: runs[0][k] for k in ("device", "torch", "python", "cuda", "cpu_count", "created") if k in runs[0]}
    report = {"benchmark": "scaling", **env, "mode": args.mode,
              "mode_meaning": "same batch per process (global batch grows)" if args.mode == "weak"
              else "same global batch split over the processes",
              "settings": {"size": args.size, "batch_size": args.batch_size, "channels": args.channels,
                           "precision": args.precision if gpu else "fp32", "steps": args.steps,
                           "warmup": args.warmup, "threads_per_process": runs[0]["threads_per_process"],
                           "backend": runs[-1]["backend"]},
              "runs": [{k: r[k] for k in ("processes", "batch_per_process", "global_batch", "median_step_s",
                                          "slices_per_s", "speedup", "efficiency", "loss")} for r in runs]}
    try:
        report["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    out = save_report(report, args.out, "scaling", 'cuda' if gpu else 'cpu')
    for r in report["runs"]:
        print(f"P={r['processes']}: {r['slices_per_s']:.1f} slices/s, speed-up {r['speedup']:.2f}x, "
              f"efficiency {100 * r['efficiency']:.0f}%")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
