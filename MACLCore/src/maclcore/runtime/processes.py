"""Everything about the processes of a run: where this one stands, joining and leaving torchrun's group,
and the collectives the trainers and losses need. With a single process every function here is the
identity, so one code path serves one GPU, several GPUs and the CPU.

Gradient-carrying collectives (for losses and BatchNorm over the global batch): we do not use
``torch.distributed.nn.functional``: it is deprecated, and on gloo its all_gather backward passes
non-contiguous gradients (e.g. after a permute) to all_to_all, which silently corrupts them. The two here
make gradients contiguous and use only all_gather and all_reduce, which every backend supports.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Tuple

import torch
import torch.distributed as dist

from .device import resolve_device
from .progress import Reporter

@dataclass(frozen=True)
class Processes:
    """This process's place in a (possibly single-process) run started by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def reporter(self, reporter: Reporter) -> Reporter:
        """``reporter`` on the main process, a silent one elsewhere: a run reports once, not once per process."""
        return reporter if self.is_main else Reporter()


def setup_processes(device_name: str) -> Tuple[Processes, torch.device]:
    """Join the process group when launched by torchrun (it sets WORLD_SIZE/RANK/LOCAL_RANK), pick the device.

    Returns (Processes, torch.device). One process with no torchrun needs nothing: the same code path runs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes(), resolve_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Processes(rank=rank, world_size=world_size, local_rank=local_rank), device


def teardown_processes(together: bool = False) -> None:
    """Leave the process group (a no-op when there is none); with ``together``, once every process is there.

    Why wait: a process that tears its gloo group down while a peer is still writing the model, then sees that
    peer exit, can abort in gloo's transport threads ("terminate called without an active exception", seen once
    in a two-process test). After a failure nobody waits: the peers may never arrive.
    """
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def joined_processes(device_name: str) -> Iterator[Tuple[Processes, torch.device]]:
    """:func:`setup_processes` for the length of a run; leaves the group afterwards if it joined it here
    (a caller that set the group up itself keeps it)."""
    owned = not (dist.is_available() and dist.is_initialized())
    procs, device = setup_processes(device_name)
    completed = False
    try:
        yield procs, device
        completed = True
    finally:
        if owned and procs.distributed:
            teardown_processes(together=completed)


def broadcast_object(value: Any, procs: Processes) -> Any:
    """Rank 0's ``value`` on every process."""
    if not procs.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_processes(value: torch.Tensor, procs: Processes) -> float:
    """The mean of a scalar over all processes (the value itself with one process); waits for the device."""
    if procs.distributed:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= procs.world_size
    return float(value.item())


def any_process(flag: bool, procs: Processes, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any (e.g. a stop request seen by one of them)."""
    if not procs.distributed:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor)
    return bool(tensor.item() > 0)



def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Every process's loss depends on every gathered row: sum their gradients, keep this process's rows.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


class _SumWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = tensor.contiguous().clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` over processes along dim 0 (rank order), differentiably."""
    if not is_distributed():
        return tensor
    if not tensor.is_floating_point():
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)
    return _GatherWithGrad.apply(tensor)


def sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes, differentiably."""
    return _SumWithGrad.apply(tensor) if is_distributed() else tensor
