"""bf16 autocast on the CPU where this CPU computes bf16 faster (fp32 master weights); fp32 elsewhere or when amp
is disabled. Which CPU does is measured by a probe (native bf16: 2.3-3.4x faster; AVX2 only: 10-20x slower)."""

import pytest
import torch
from torch import nn

import maclcore.runtime.device as device_module
from maclcore.runtime.device import autocast, cpu_bf16_pays, precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("pays", [True, False])
def test_cpu_autocast_follows_the_probe(monkeypatch, pays):
    monkeypatch.setattr(device_module, "cpu_bf16_pays", lambda: pays)
    conv = nn.Conv2d(1, 2, 3)
    x = torch.rand(1, 1, 8, 8)
    with autocast(CPU, True):
        y = conv(x)
    assert y.dtype == (torch.bfloat16 if pays else torch.float32) and conv.weight.dtype == torch.float32
    assert precision(CPU, True) == ("bf16" if pays else "fp32")
    with autocast(CPU, False):
        assert conv(x).dtype == torch.float32
    assert precision(CPU, False) == "fp32"


def test_the_probe_runs_once_per_process_and_leaves_no_trace():
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    first = cpu_bf16_pays()
    assert isinstance(first, bool) and cpu_bf16_pays() is first
    assert cpu_bf16_pays.cache_info().hits >= 1
    assert torch.get_num_threads() == threads and torch.is_grad_enabled() == grad
