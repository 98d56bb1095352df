"""The device a run computes on: choosing it, its precision, and what to do when its memory runs out."""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any, Callable, List, Optional, TypeVar

import torch

from ..errors import ConfigError, MaclError

T = TypeVar("T")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device", f"is {name!r}, but no CUDA GPU is usable here (torch {torch.__version__}); "
                                        "use cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError("device", f"must be auto, cpu or cuda[:N], got {name!r}")


@functools.lru_cache(maxsize=None)
def cpu_bf16_pays() -> bool:
    """Whether bf16 autocast makes this CPU's convolutions faster, timed once per process (well under a second).

    On CPUs with native bf16 (AMX or AVX-512-BF16) our U-Net's training step ran 2.3-3.4x faster in bf16 with
    channels_last; on one without (AVX2 only) it ran 10-20x slower (benchmarks/results/cpu_precision_*.json).
    No fixed choice is right on both, and the CPU's flags are not portable to read, so a small convolution is
    timed both ways: the two cases differ by far more than timing noise. Forward only, without gradients, so
    that the probe works wherever it is first needed (training, or inference under ``torch.no_grad``).
    """
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1).to(memory_format=torch.channels_last)
    images = torch.randn(4, 32, 64, 64).to(memory_format=torch.channels_last)

    def seconds(bf16: bool) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                conv(images).float().sum().item()
            best = min(best, time.perf_counter() - started)
        return best

    seconds(True), seconds(False)  # first calls pick and build the kernels
    return seconds(True) < 0.8 * seconds(False)


def uses_bf16(device: torch.device, enabled: bool) -> bool:
    """Whether :func:`autocast` computes in bf16 on ``device``: always on CUDA, on a CPU where it pays."""
    if not enabled:
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16_pays())


def precision(device: torch.device, enabled: bool) -> str:
    """``bf16`` or ``fp32``: what a run computes in, for the plan line and the model file."""
    return "bf16" if uses_bf16(device, enabled) else "fp32"


def autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on CUDA, and on CPUs where it is faster (:func:`cpu_bf16_pays`); fp32 master weights, no
    loss scaling needed. A no-op elsewhere."""
    if uses_bf16(device, enabled):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or CPU allocator) out-of-memory, as raised by torch."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def out_of_memory_advice(device: Optional[torch.device]) -> str:
    """What to do when memory runs out, for the device it ran out on (never "use the CPU" to a CPU run)."""
    if device is not None and device.type == "cuda":
        return "close other programs using the GPU, or use {device} cpu"
    return "close other programs to free memory, or give smaller or fewer volumes"


def map_in_batches(fn: Callable[[int, int], T], count: int, batch_size: int,
                   on_retry: Optional[Callable[[int], None]] = None,
                   device: Optional[torch.device] = None) -> List[T]:
    """Call ``fn(start, stop)`` over ``range(count)`` in batches; on out-of-memory halve the batch and retry.

    Only a batch of one that still runs out of memory is an error (its advice fits ``device``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: List[T] = []
    start = 0
    while start < count:
        stop = min(count, start + batch_size)
        try:
            results.append(fn(start, stop))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if batch_size == 1:
                raise MaclError("out of memory even with one slice per batch; "
                                + out_of_memory_advice(device)) from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size = max(1, batch_size // 2)
            if on_retry is not None:
                on_retry(batch_size)
            continue
        start = stop
    return results


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The random generator of one training step: a function of (seed, step) alone, so that a resumed run
    draws exactly what an uninterrupted run would have drawn."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step) % (2 ** 63))
    return generator


