"""Small hand-made files for the test_reliability_* tests: a tiny model file without training, raw headers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Optional

import torch

from maclcore.config import to_dict
from maclcore.data.preprocessing import PreprocessingConfig
from maclcore.io.checkpoint import save_checkpoint
from maclcore.labels import CARDIAC
from maclcore.models.unet import UNet, UNetConfig

TINY_CHANNELS = (4, 8, 8, 16, 16)
CHILD_ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def tiny_state(seed: int = 0) -> Dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in UNet(UNetConfig(channels=TINY_CHANNELS)).state_dict().items()}


def save_tiny_model(path: Path, state: Optional[Dict[str, torch.Tensor]] = None,
                    model: Optional[dict] = None, spacing: float = 6.0) -> Path:
    """A segmentation model file as finetune writes it, with random weights (no training), for slices at
    ``spacing`` mm."""
    save_checkpoint(path, "segmentation", {
        "model": model if model is not None else to_dict(UNetConfig(channels=TINY_CHANNELS)),
        "labels": CARDIAC.to_dict(), "preprocessing": to_dict(PreprocessingConfig(spacing=spacing, size=32)),
        "state_dict": state if state is not None else tiny_state()})
    return path


def run_python(code: str, timeout: float = 60, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh process (for limits such as RLIMIT_FSIZE that must not touch pytest)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=CHILD_ENV, cwd=cwd)
