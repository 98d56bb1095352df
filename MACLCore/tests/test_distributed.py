"""A 2-process CPU (gloo) run under torchrun computes what one process computes on the same global batch."""

import os
import subprocess
import sys

import pytest
import torch

from maclcore.data.phantom import write_phantom_dataset

ARGS = ["--epochs", "1", "--steps-per-epoch", "2", "--channels", "4,8,8,16,16", "--spacing", "6",
        "--device", "cpu", "--progress", "none", "--seed", "3",
        "--no-amp"]  # the float32 math is compared: bf16 autocast (on by default on the CPU too) moves it by ~1e-3


def _run(command, env):
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_two_process_pretraining_equals_one_process_on_the_global_batch(tmp_path):
    write_phantom_dataset(str(tmp_path / "data"), 3, seed=5)
    images = str(tmp_path / "data" / "imagesTr")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single, double = tmp_path / "single.pt", tmp_path / "double.pt"
    _run([sys.executable, "-m", "maclcore", "pretrain", "--images", images, "--out", str(single),
          "--batch-size", "4"] + ARGS, env)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          "-m", "maclcore", "pretrain", "--images", images, "--out", str(double), "--batch-size", "2"] + ARGS, env)
    one = torch.load(single, weights_only=True)
    two = torch.load(double, weights_only=True)
    assert two["pretraining"]["processes"] == 2 and one["pretraining"]["processes"] == 1
    # Same math, other kernels: the CPU library picks convolution algorithms by batch size (4 vs 2 per
    # process), so float32 sums differ in their last digits: 2.6e-5 relative in the loss and 2.2e-3 in the
    # weights after two steps on an AMD EPYC (local BatchNorm statistics instead of global ones, the bug this
    # guards against, move the loss by far more).
    assert one["pretraining"]["history"][0]["loss"] == pytest.approx(two["pretraining"]["history"][0]["loss"], rel=1e-4)
    assert one["state_dict"].keys() == two["state_dict"].keys()
    worst = max(float((one["state_dict"][k].float() - two["state_dict"][k].float()).abs().max())
                for k in one["state_dict"])
    assert worst < 1e-2
