"""BatchNorm over the global batch of a distributed run, on any device.

torch's SyncBatchNorm works only on CUDA; this one all-reduces the per-channel sums (with gradients)
on CPU (gloo) and GPU (NCCL) alike, so P processes with B slices each
normalise exactly as one process with P x B slices does. Outside a distributed run it is plain BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtime.processes import is_distributed, sum_with_grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch across all processes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        values = x.float()
        local = torch.stack([values.sum((0, 2, 3)), values.square().sum((0, 2, 3)),
                             torch.full((x.shape[1],), float(values.numel() // x.shape[1]), device=x.device)])
        total = sum_with_grad(local)
        count = total[2, 0]
        mean = total[0] / count
        var = (total[1] / count - mean.square()).clamp(min=0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * count / (count - 1).clamp(min=1), momentum)
                self.num_batches_tracked += 1
        out = (values - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(x.dtype)


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` (in place, keeping parameters and buffers)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GlobalBatchNorm2d):
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats).to(next(child.buffers()).device)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            convert_to_global_batchnorm(child)
    return module
