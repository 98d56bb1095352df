"""The device a run computes on: choosing it, its precision, and what to do when its memory runs out."""

from __future__ import annotations

import contextlib
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


def autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on CUDA and on the CPU (fp32 master weights, no loss scaling needed); a no-op elsewhere.

    On the CPU, bf16 (with channels_last) made a U-Net training step 2.3-3.4x faster on a 2-core AMX-BF16
    Xeon (benchmarks/bench_cpu_precision.py, results/cpu_precision_cpu.json)."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or CPU allocator) out-of-memory, as raised by torch."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def map_in_batches(fn: Callable[[int, int], T], count: int, batch_size: int,
                   on_retry: Optional[Callable[[int], None]] = None) -> List[T]:
    """Call ``fn(start, stop)`` over ``range(count)`` in batches; on out-of-memory halve the batch and retry.

    Only a batch of one that still runs out of memory is an error.
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
                raise MaclError("out of memory even with one slice per batch; close other programs using the "
                                "GPU, or use {device} cpu") from None
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


