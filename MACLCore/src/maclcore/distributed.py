"""Collectives that carry gradients, for losses and BatchNorm over the global batch of a distributed run.

We do not use ``torch.distributed.nn.functional``: it is deprecated, and on gloo its all_gather backward
passes non-contiguous gradients (e.g. after a permute) to all_to_all, which silently corrupts them.
These two functions make gradients contiguous and use only all_gather and all_reduce, which every backend
supports. With a single process both are the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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
