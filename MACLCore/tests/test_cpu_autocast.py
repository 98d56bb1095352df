"""bf16 autocast on the CPU too (fp32 master weights); off when amp is disabled."""

import torch
from torch import nn

from maclcore.runtime.device import autocast


def test_cpu_autocast_is_bf16_with_fp32_weights():
    conv = nn.Conv2d(1, 2, 3)
    x = torch.rand(1, 1, 8, 8)
    with autocast(torch.device("cpu"), True):
        y = conv(x)
    assert y.dtype == torch.bfloat16 and conv.weight.dtype == torch.float32
    with autocast(torch.device("cpu"), False):
        assert conv(x).dtype == torch.float32
