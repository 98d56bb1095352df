"""Does bf16 autocast and/or channels_last speed up a U-Net training step on this CPU?

Times a full finetuning step (forward, cross-entropy + Dice loss, backward, Adam step; fp32 master weights)
of ``maclcore.models.unet.UNet`` for each (widths, slice size) under four settings: fp32 NCHW (the old CPU
default), fp32 channels_last, bf16 autocast NCHW, bf16 autocast channels_last. Reports the median step time
over ``--steps`` steps after ``--warmup`` and each setting's speed-up over fp32 NCHW.

    python benchmarks/bench_cpu_precision.py                       # 16-256 and 32-512, 128^2 and 256^2, batch 8
    python benchmarks/bench_cpu_precision.py --steps 3 --sizes 128

Results go to benchmarks/results/cpu_precision_<device>.json (device name, its bf16 flags, the choice MACLCore's
probe makes on it, versions and settings included).
No timings are asserted anywhere: the machine may be shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from common import bf16_flags, cpu_model, save_report

from maclcore.losses.segmentation import segmentation_loss
from maclcore.models.unet import UNet, UNetConfig

WIDTHS = {"16-256": (16, 32, 64, 128, 256), "32-512": (32, 64, 128, 256, 512)}


def time_steps(widths, size: int, batch: int, bf16: bool, channels_last: bool, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = UNet(UNetConfig(num_classes=4, channels=widths))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 1, size, size)
    labels = torch.randint(0, 4, (batch, size, size))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with context:
            loss = segmentation_loss(model(images), labels, 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", default=list(WIDTHS), choices=list(WIDTHS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    device = cpu_model()
    rows = []
    for name in args.widths:
        for size in args.sizes:
            row = {"widths": name, "size": size, "batch_size": args.batch_size}
            for label, bf16, cl in (("fp32", False, False), ("fp32_channels_last", False, True),
                                    ("bf16", True, False), ("bf16_channels_last", True, True)):
                row[f"{label}_s"] = round(time_steps(WIDTHS[name], size, args.batch_size, bf16, cl,
                                                     args.steps, args.warmup), 4)
            for label in ("fp32_channels_last", "bf16", "bf16_channels_last"):
                row[f"speedup_{label}"] = round(row["fp32_s"] / row[f"{label}_s"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    from maclcore.runtime.device import cpu_bf16_pays

    result = {"device": device, "cpu_flags": bf16_flags(),
              "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "maclcore_uses_bf16": cpu_bf16_pays(),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "steps": args.steps, "warmup": args.warmup, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "rows": rows}
    output = save_report(result, args.output, "cpu_precision", "cpu")
    print(f"device: {device}; wrote {output}")


if __name__ == "__main__":
    main()
