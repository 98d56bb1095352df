"""What every training run does around its loop: lock the output, resume, checkpoint, stop, clean up."""

from __future__ import annotations

import contextlib
import inspect
import os
import random
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, InputError, MaclError, TrainingInterrupted
from ..io.atomic import remove_partials
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.naming import cache_path, resume_path
from ..io.pairing import Case
from ..models.global_norm import convert_to_global_batchnorm
from ..runtime.device import precision
from ..runtime.control import RunLock, StopRequest
from ..runtime.processes import Processes
from ..runtime.progress import Reporter
from .budget import TrainingPlan
from .loop import LoopConfig, Trainer, TrainState, unwrap


# What a resume state holds besides the run's own record (config, cases, ...), checked before it is used.
RESUME_KEYS = ("stage", "config", "preprocessing", "cases", "model_state", "optimizer", "train_state")


def seed_everything(seed: int) -> None:
    """Seed weight initialisation (sampling and augmentation use their own per-step generators)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def prepare_model(model: nn.Module, procs: Processes, device: torch.device, loop: LoopConfig) -> nn.Module:
    """Put the network on its device in the fastest layout, wrap it for DDP under torchrun, compile on request.

    Under DDP, BatchNorm becomes global BatchNorm so that statistics are those of the global batch, as in a
    single-process run.
    """
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # slice sizes are fixed within a run
    if loop.channels_last:  # on CPUs too: 1.1-1.7x faster steps (results/cpu_precision_*.json)
        model = model.to(memory_format=torch.channels_last)
    if procs.distributed:
        model = convert_to_global_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if loop.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


def announce_plan(trainer: Trainer, reporter: Reporter, stage: str, spacing: float, size: int,
                  crop: Optional[int], widths: Sequence[int]) -> Callable[[TrainState], Dict[str, Any]]:
    """Say what the run will do in one line now, and again whenever a time budget fixes the steps; returns
    the function that gives the plan's record for the model file once the run has ended."""
    def plan(steps: int, seconds: Optional[float]) -> TrainingPlan:
        minutes = steps * seconds / 60 if seconds is not None else None
        return TrainingPlan(stage, str(trainer.device), spacing, size, crop, tuple(widths),
                            trainer.config.batch_size * trainer.procs.world_size, steps, seconds, minutes,
                            trainer.budget_minutes, precision(trainer.device, trainer.config.amp))

    def decided(steps: int, seconds: Optional[float]) -> None:
        reporter.message(plan(steps, seconds).line())

    line = plan(trainer.total_steps, None).line()
    if trainer.budget_minutes:
        line = line.replace(f" {trainer.total_steps} steps", " steps fixed once the first ones are timed")
    reporter.message(line)
    trainer.on_plan = decided
    return lambda state: plan(trainer.total_steps, state.step_seconds).to_dict()


def make_optimizer(optimizer_class: type, model: nn.Module, device: torch.device, **settings: Any) -> Any:
    """An optimizer over the model's parameters, with the fused (single-kernel) update on CUDA where torch has it."""
    if device.type == "cuda" and "fused" in inspect.signature(optimizer_class).parameters:
        settings["fused"] = True
    return optimizer_class(model.parameters(), **settings)


class TrainingSession:
    """Owns an output path for the length of a run.

    On entry it takes the output's lock (rank 0), removes temp files of writes a crash interrupted, starts
    listening for stop requests and, with ``resume``, loads the saved state; without ``resume`` it refuses to
    discard an interrupted run's state. :meth:`run` trains, saving the resumable state as it goes, and raises
    :class:`TrainingInterrupted` when stopped early.
    """

    def __init__(self, output: str, stage: str, procs: Processes, resume: bool,
                 stop_file: Optional[str] = None) -> None:
        self.output, self.stage, self.procs, self.resume = output, stage, procs, resume
        self.stop_file = stop_file
        self.resume_path = resume_path(output)
        self.state: Optional[Dict[str, Any]] = None
        self.stop = StopRequest(stop_file)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "TrainingSession":
        if os.path.isdir(self.output):
            raise InputError(self.output, "is a folder; give the model file to write, such as model.pt")
        try:
            self._enter()
        except BaseException:
            self._stack.close()  # release the lock: __exit__ is not called when __enter__ fails
            raise
        return self

    def _enter(self) -> None:
        if self.procs.is_main:
            self._stack.enter_context(RunLock(self.output))
            remove_partials(self.output)
            remove_partials(self.resume_path)
        self._stack.enter_context(self.stop.installed())
        exists = os.path.exists(self.resume_path)
        if self.resume:
            if not exists:
                raise ConfigError("resume", f"is set, but there is nothing to resume: {self.resume_path} does not exist")
            self.state = load_checkpoint(self.resume_path, kinds=("resume",))
            missing = [key for key in RESUME_KEYS if key not in self.state]
            if missing:
                raise InputError(self.resume_path, f"is an incomplete training state (no {', '.join(missing)}); "
                                                   "delete it to start over")
            if self.state.get("stage") != self.stage:
                raise InputError(self.resume_path, f"is the state of a {self.state.get('stage')} run, "
                                f"not of {self.stage}")
        elif exists:
            raise InputError(self.resume_path, "an interrupted run's state is there; set {resume} to continue it, "
                            "or delete that file to start over")

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    @property
    def default_cache(self) -> str:
        """Where slices that do not fit in memory go when no cache folder is given (``MODEL.cache``)."""
        return cache_path(self.output)

    def check_stop(self) -> None:
        """Raise :class:`TrainingInterrupted` when a stop was requested (before training: nothing new saved)."""
        if self.stop.requested:
            raise TrainingInterrupted(self.resume_path if os.path.exists(self.resume_path) else None)

    def check_cases(self, cases: Sequence[Case]) -> None:
        """When resuming, the cases must be those the interrupted run trained on."""
        if self.state is None:
            return
        recorded, given = sorted(self.state["cases"]), sorted(c.name for c in cases)
        if recorded != given:
            raise MaclError(f"{{resume}}: the interrupted run used {len(recorded)} cases ({', '.join(recorded[:3])}, ...), "
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
        self.check_stop()
        state, finished = trainer.run(state, self.stop)
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

