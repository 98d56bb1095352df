"""The one training loop that pretraining and finetuning share.

A *task* supplies the loss of a batch (and optionally validation metrics); the loop owns everything else:
sampling, learning-rate schedule, mixed precision, distributed data parallelism, progress, checkpoints,
resume and stopping on request. Everything random in a step comes from a generator seeded by
(seed, global step), so a resumed run continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import torch
from torch import nn

from ..errors import ConfigError, MaclError
from ..runtime.progress import Reporter
from ..runtime.control import StopRequest
from ..runtime.device import autocast, is_out_of_memory, step_generator
from ..runtime.processes import Processes, any_process, mean_over_processes


@dataclass(frozen=True)
class LoopConfig:
    """How long and how a task trains.

    Args:
        epochs: passes over the training slices.
        batch_size: slices per step and process.
        steps_per_epoch: steps that make an epoch; None means one pass over the slices.
        seed: seeds sampling and augmentation.
        checkpoint_every: write the resumable state every this many epochs (and always at the end).
        validate_every: run the task's validation every this many epochs (0: never).
        log_every: report the running loss every this many steps (each report waits for the device once).
        amp: bf16 autocast on CUDA.
        channels_last: NHWC memory layout on CUDA (tensor-core convolutions without layout conversions).
        compile: ``torch.compile`` the network (slower start, faster steps; most useful on a GPU).
    """

    epochs: int = 100
    batch_size: int = 8
    steps_per_epoch: Optional[int] = None
    seed: int = 0
    checkpoint_every: int = 1
    validate_every: int = 1
    log_every: int = 10
    amp: bool = True
    channels_last: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError("epochs", f"must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError("steps_per_epoch", f"must be >= 1, got {self.steps_per_epoch}")


class Task(Protocol):
    """What the loop trains."""

    model: nn.Module
    oom_hint: str  # what to lower when a step runs out of memory, naming settings as {field}

    def loss(self, indices: torch.Tensor, generator: torch.Generator, offset: int,
             global_batch: int) -> torch.Tensor:
        """Loss of the slices ``indices``: this process's part, starting at ``offset``, of a global batch."""

    def epoch_metrics(self) -> Dict[str, float]:
        """Metrics gathered during the epoch; called on every process (collectives allowed)."""

    def validate(self) -> Dict[str, float]:
        """Validation metrics, on the main process only; ``val_dice`` drives model selection when present."""

    # Optional: ``prefetch(indices, rows)`` is called with a step's indices (the tensor ``loss`` will get) and
    # their CPU copy one step ahead, so that slices streamed from disk are gathered while the device works.


@dataclass
class TrainState:
    """Where a run stands; saved in the resume checkpoint."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0
    global_step: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    best_score: Optional[float] = None
    best_epoch: Optional[int] = None
    best_weights: Optional[Dict[str, torch.Tensor]] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "history": self.history, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "best_weights": self.best_weights}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainState":
        return cls(**data)


def cosine_lr(step: int, total: int, base: float, final: float, warmup: int = 0) -> float:
    """Per-iteration cosine decay from ``base`` to ``final``, after an optional linear warm-up."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * progress))


def epoch_order(seed: int, epoch: int, num_samples: int, length: int) -> torch.Tensor:
    """Sample indices for one epoch: concatenated random permutations, cut to ``length``."""
    generator = torch.Generator().manual_seed(seed * 7919 + epoch)
    chunks = [torch.randperm(num_samples, generator=generator) for _ in range(math.ceil(length / num_samples))]
    return torch.cat(chunks)[:length]


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside torch.compile and DDP wrappers (whose state_dict keys are the plain ones)."""
    model = getattr(model, "_orig_mod", model)
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


class Trainer:
    """Runs a task for ``config.epochs`` epochs, reporting and checkpointing as it goes."""

    def __init__(self, task: Task, optimizer: torch.optim.Optimizer, schedule: Callable[[int, int], float],
                 config: LoopConfig, num_samples: int, device: torch.device, procs: Processes,
                 reporter: Reporter, stage: str,
                 save_state: Optional[Callable[[TrainState], None]] = None) -> None:
        if num_samples < 1:
            raise MaclError("no training slices")
        self.task, self.optimizer, self.schedule, self.config = task, optimizer, schedule, config
        self.num_samples, self.device, self.procs = num_samples, device, procs
        self.reporter, self.stage = reporter, stage
        self.save_state = save_state or (lambda state: None)
        self.global_batch = config.batch_size * procs.world_size
        self.steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(num_samples / self.global_batch))
        self.total_steps = config.epochs * self.steps_per_epoch

    def run(self, state: TrainState, stop: StopRequest) -> Tuple[TrainState, bool]:
        """Train until done or a stop is requested; returns (state, finished)."""
        config, procs = self.config, self.procs
        started, steps_run = time.perf_counter(), 0
        # A resumed run's history counts on from the time the earlier runs recorded (not the lost partial epoch).
        self._elapsed_before = float(state.history[-1]["elapsed"]) if state.history else 0.0
        # A task whose slices stream from disk gathers the next step's batch while this one runs.
        prefetch = getattr(self.task, "prefetch", None)
        while state.epoch < config.epochs:
            rows = epoch_order(config.seed, state.epoch, self.num_samples, self.steps_per_epoch * self.global_batch)
            order = rows.to(self.device)
            epoch_loss = torch.zeros((), device=self.device)
            window_loss, window_steps, epoch_steps = torch.zeros((), device=self.device), 0, 0
            upcoming: Optional[torch.Tensor] = None
            while state.step_in_epoch < self.steps_per_epoch:
                indices = upcoming if upcoming is not None else self._indices(order, rows, state.step_in_epoch, prefetch)
                upcoming = None
                if prefetch is not None and state.step_in_epoch + 1 < self.steps_per_epoch:
                    upcoming = self._indices(order, rows, state.step_in_epoch + 1, prefetch)
                loss = self._step(indices, state.global_step, procs.rank * config.batch_size)
                epoch_loss += loss
                window_loss += loss
                window_steps, epoch_steps, steps_run = window_steps + 1, epoch_steps + 1, steps_run + 1
                state.step_in_epoch += 1
                state.global_step += 1
                at_log = state.global_step % config.log_every == 0
                if at_log or state.step_in_epoch == self.steps_per_epoch:
                    self._report(state, mean_over_processes(window_loss / window_steps, procs), started, steps_run)
                    window_loss, window_steps = torch.zeros((), device=self.device), 0
                # One process checks every step; several agree at log points (a collective each time).
                if state.step_in_epoch < self.steps_per_epoch and (at_log or not procs.distributed):
                    if any_process(stop.requested, procs, self.device):
                        self.save_state(state)
                        return state, False
            state.epoch += 1
            state.step_in_epoch = 0
            self._end_epoch(state, mean_over_processes(epoch_loss / max(1, epoch_steps), procs), started, steps_run)
            stopping = any_process(stop.requested, procs, self.device)
            if stopping or state.epoch % config.checkpoint_every == 0 or state.epoch == config.epochs:
                self.save_state(state)
            if stopping and state.epoch < config.epochs:
                return state, False
        return state, True

    def _indices(self, order: torch.Tensor, rows: torch.Tensor, step_in_epoch: int,
                 prefetch: Optional[Callable[[torch.Tensor, torch.Tensor], None]]) -> torch.Tensor:
        """This process's slice indices of a step (on the device); announced to ``prefetch`` with their CPU copy."""
        start = step_in_epoch * self.global_batch + self.procs.rank * self.config.batch_size
        indices = order[start:start + self.config.batch_size]
        if prefetch is not None:
            prefetch(indices, rows[start:start + self.config.batch_size])
        return indices

    def _step(self, indices: torch.Tensor, global_step: int, offset: int) -> torch.Tensor:
        lr = self.schedule(global_step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        generator = step_generator(self.config.seed, global_step, self.device)
        self.task.model.train()
        try:
            with autocast(self.device, self.config.amp):
                loss = self.task.loss(indices, generator, offset, self.global_batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            raise self._out_of_memory(global_step) from None
        return loss.detach().float()

    def _out_of_memory(self, global_step: int) -> MaclError:
        """The error of a step that ran out of memory, with the task's advice on what to lower. The saved
        state is untouched."""
        return MaclError(f"{self.stage} ran out of memory on {self.device} in step {global_step + 1}, with "
                         f"{{batch_size}} {self.config.batch_size} slices per step; {self.task.oom_hint}")

    def _report(self, state: TrainState, loss: float, started: float, steps_run: int,
                metrics: Optional[Dict[str, float]] = None) -> None:
        if not self.procs.is_main:
            return
        elapsed = time.perf_counter() - started
        remaining = self.total_steps - state.global_step
        eta = elapsed / steps_run * remaining if steps_run else None
        self.reporter.progress(self.stage, state.global_step, self.total_steps,
                               epoch=state.epoch + (1 if state.step_in_epoch else 0), epochs=self.config.epochs,
                               loss=loss, lr=self.schedule(max(0, state.global_step - 1), self.total_steps),
                               metrics=metrics or {}, eta=eta, elapsed=elapsed)

    def _end_epoch(self, state: TrainState, loss: float, started: float, steps_run: int) -> None:
        metrics: Dict[str, float] = dict(self.task.epoch_metrics())
        due = self.config.validate_every and (state.epoch % self.config.validate_every == 0
                                              or state.epoch == self.config.epochs)
        if due and self.procs.is_main:
            metrics.update(self.task.validate())
        entry = {"epoch": state.epoch, "step": state.global_step, "loss": loss,
                 "lr": self.schedule(state.global_step - 1, self.total_steps),
                 "elapsed": self._elapsed_before + time.perf_counter() - started, **metrics}
        state.history.append(entry)
        score = metrics.get("val_dice")
        if score is not None and (state.best_score is None or score > state.best_score):
            state.best_score, state.best_epoch = float(score), state.epoch
            state.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(self.task.model).state_dict().items()}
        self._report(state, loss, started, steps_run, metrics)
