"""What every training run does around its loop: lock the output, resume, checkpoint, stop, clean up."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..data.dataset import SliceData, load_cases
from ..data.preprocessing import PreprocessingConfig
from ..errors import MaclError, TrainingInterrupted
from ..io.pairing import Case
from ..labels import LabelSchema
from ..models.global_norm import convert_to_global_batchnorm
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import Trainer, TrainState, unwrap
from .progress import Reporter
from .runtime import Processes, RunLock, StopRequest


def resume_path_for(output: str) -> str:
    """``MODEL.pt`` -> ``MODEL.resume.pt``: the resumable state kept while a run is unfinished."""
    stem = output[:-3] if output.endswith(".pt") else output
    return stem + ".resume.pt"


def seed_everything(seed: int) -> None:
    """Seed weight initialisation (sampling and augmentation use their own per-step generators)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def load_training_slices(cases: Sequence[Case], plan: PreprocessingConfig, schema: Optional[LabelSchema],
                         reporter: Reporter) -> SliceData:
    """Read and preprocess every case once (with labels when ``schema`` is given) into one slice set."""
    reporter.message(f"preprocessing: {plan.spacing} mm in-plane, {plan.size}x{plan.size} slices")
    reporter.stage("load", len(cases))
    prepared = load_cases(cases, plan, schema, progress=lambda i, n, name: reporter.progress("load", i, n, case=name))
    return SliceData.from_volumes(prepared, plan.size, with_labels=schema is not None)


def distribute(model: nn.Module, procs: Processes, device: torch.device) -> nn.Module:
    """Wrap for DDP when running under torchrun; BatchNorm becomes global BatchNorm so that statistics are
    those of the global batch, as in a single-process run."""
    if not procs.distributed:
        return model
    model = convert_to_global_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class TrainingSession:
    """Owns an output path for the length of a run.

    On entry it takes the output's lock (rank 0) and, with ``resume``, loads the saved state; without
    ``resume`` it refuses to discard an interrupted run's state. :meth:`run` trains, saving the resumable
    state as it goes, and raises :class:`TrainingInterrupted` when stopped early.
    """

    def __init__(self, output: str, stage: str, procs: Processes, resume: bool,
                 stop_file: Optional[str] = None) -> None:
        self.output, self.stage, self.procs, self.resume = output, stage, procs, resume
        self.stop_file = stop_file
        self.resume_path = resume_path_for(output)
        self.state: Optional[Dict[str, Any]] = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "TrainingSession":
        if self.procs.is_main:
            self._stack.enter_context(RunLock(self.output))
        exists = os.path.exists(self.resume_path)
        if self.resume:
            if not exists:
                raise MaclError(f"--resume: nothing to resume, {self.resume_path} does not exist")
            self.state = load_checkpoint(self.resume_path, kinds=("resume",))
            if self.state.get("stage") != self.stage:
                raise MaclError(f"--resume: {self.resume_path} is the state of a {self.state.get('stage')} run, "
                                f"not of {self.stage}")
        elif exists:
            raise MaclError(f"{self.resume_path}: an interrupted run's state is there; pass --resume to continue it, "
                            "or delete that file to start over")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def check_cases(self, cases: Sequence[Case]) -> None:
        """When resuming, the cases must be those the interrupted run trained on."""
        if self.state is None:
            return
        recorded, given = sorted(self.state["cases"]), sorted(c.name for c in cases)
        if recorded != given:
            raise MaclError(f"--resume: the interrupted run used {len(recorded)} cases ({', '.join(recorded[:3])}, ...), "
                            f"but {len(given)} different cases were given; pass the same inputs as before")

    def run(self, trainer: Trainer, model: nn.Module, optimizer: torch.optim.Optimizer,
            payload: Dict[str, Any]) -> TrainState:
        """Train to the end (restoring the saved state first when resuming)."""
        state = TrainState()
        if self.state is not None:
            unwrap(model).load_state_dict(self.state["model_state"])
            optimizer.load_state_dict(self.state["optimizer"])
            state = TrainState.from_dict(self.state["train_state"])
            trainer.reporter.message(f"resuming at epoch {state.epoch}, step {state.global_step}")

        def save_state(current: TrainState) -> None:
            if self.procs.is_main:
                save_checkpoint(self.resume_path, "resume", {
                    **payload, "stage": self.stage, "model_state": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(), "train_state": current.to_dict()})

        trainer.save_state = save_state
        with StopRequest(self.stop_file).installed() as stop:
            state, finished = trainer.run(state, stop)
        if not finished:
            raise TrainingInterrupted(self.resume_path)
        return state

    def finish(self, kind: str, payload: Dict[str, Any]) -> None:
        """Write the final model and drop the resumable state (rank 0)."""
        if not self.procs.is_main:
            return
        save_checkpoint(self.output, kind, payload)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.resume_path)

