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
from ..runtime.processes import Processes, any_process, broadcast_object, mean_over_processes
from .budget import DEFAULT_EPOCHS, RESERVE_SECONDS, BudgetClock, resolve_budget
from .ema import ModelEMA

# Under a time budget, validation and checkpoints happen at most this many times a run (an epoch of a few
# labelled cases is a few steps: validating after each would cost more than the training).
BUDGET_CHECKPOINTS = 20


@dataclass(frozen=True)
class LoopConfig:
    """How long and how a task trains.

    Args:
        epochs: passes over the training slices. None: as many as ``time_budget`` allows, or
            :data:`DEFAULT_EPOCHS` without a budget; with a budget, a given number is an upper bound.
        time_budget: minutes the run may take (loading the data included). The first steps are timed, then
            the number of steps is fixed so that the run ends on time and the learning-rate schedule
            completes. None: :func:`~maclcore.training.budget.default_budget` when ``epochs`` is None too
            (about 10 minutes on a CPU, no budget on a GPU); 0: no budget.
        ema_decay: keep an exponential moving average of the weights with this decay as the trained model
            (validated, selected and saved); None: keep the weights themselves.
        batch_size: slices per step and process.
        steps_per_epoch: steps that make an epoch; None means one pass over the slices.
        seed: seeds sampling and augmentation.
        checkpoint_every: write the resumable state every this many epochs (and always at the end).
        validate_every: run the task's validation every this many epochs (0: never).
        log_every: report the running loss every this many steps (each report waits for the device once).
        amp: bf16 autocast on CUDA, and on CPUs where it is faster (native bf16: 2.3-3.4x; without it, as on
            AVX2-only CPUs, fp32 is kept: bf16 is 10-20x slower there; see runtime.device.cpu_bf16_pays).
        channels_last: NHWC memory layout (tensor-core / oneDNN convolutions without layout conversions).
        compile: ``torch.compile`` the network (slower start, faster steps; most useful on a GPU).
    """

    epochs: Optional[int] = None
    time_budget: Optional[float] = None
    ema_decay: Optional[float] = None
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
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError("epochs", f"must be >= 1, got {self.epochs}")
        if self.time_budget is not None and not (self.time_budget >= 0 and math.isfinite(self.time_budget)):
            raise ConfigError("time_budget", f"must be a number of minutes >= 0 (0: none), got {self.time_budget}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ConfigError("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
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

    def validate(self, network: nn.Module) -> Dict[str, float]:
        """Validation metrics of ``network`` (the weights that would be kept), on the main process only;
        ``val_dice`` drives model selection when present."""

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
    planned_epochs: Optional[int] = None  # fixed by the time budget (a resumed run keeps them)
    step_seconds: Optional[float] = None  # as the budget measured it
    ema: Optional[Dict[str, Any]] = None  # the weight average's state (weights, updates) when there is one

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)

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
    """Runs a task for its epochs (or its time budget), reporting and checkpointing as it goes.

    ``started`` is when the command began (``time.perf_counter``), so a budget counts data loading too;
    ``on_plan(total_steps, step_seconds)`` is called when a budget fixes the steps.
    """

    def __init__(self, task: Task, optimizer: torch.optim.Optimizer, schedule: Callable[[int, int], float],
                 config: LoopConfig, num_samples: int, device: torch.device, procs: Processes,
                 reporter: Reporter, stage: str,
                 save_state: Optional[Callable[[TrainState], None]] = None, started: Optional[float] = None,
                 on_plan: Optional[Callable[[int, Optional[float]], None]] = None) -> None:
        if num_samples < 1:
            raise MaclError("no training slices")
        self.task, self.optimizer, self.schedule, self.config = task, optimizer, schedule, config
        self.num_samples, self.device, self.procs = num_samples, device, procs
        self.reporter, self.stage = reporter, stage
        self.save_state = save_state or (lambda state: None)
        self.on_plan = on_plan or (lambda steps, seconds: None)
        self.started = time.perf_counter() if started is None else started
        self.global_batch = config.batch_size * procs.world_size
        self.steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(num_samples / self.global_batch))
        self.budget_minutes = resolve_budget(config.time_budget, config.epochs, device.type)
        # Under a budget the epochs are provisional (an upper bound) until the first steps are timed.
        self._cap = config.epochs or (DEFAULT_EPOCHS if self.budget_minutes is None
                                      else 10 ** 9 // self.steps_per_epoch)
        self._set_epochs(self._cap)
        self.ema = ModelEMA(unwrap(task.model), config.ema_decay) if config.ema_decay else None
        if self.ema is not None:
            self.ema.fit_to_run(self.total_steps)

    def _set_epochs(self, epochs: int) -> None:
        self.epochs = epochs
        self.total_steps = epochs * self.steps_per_epoch
        if getattr(self, "ema", None) is not None:
            self.ema.fit_to_run(self.total_steps)  # type: ignore[union-attr]
        spread = math.ceil(epochs / BUDGET_CHECKPOINTS) if self.budget_minutes else 1
        self.validate_every = self.config.validate_every and max(self.config.validate_every, spread)
        self.checkpoint_every = max(self.config.checkpoint_every, spread)

    @property
    def kept(self) -> nn.Module:
        """The network whose weights are the result: the weight average when there is one."""
        return self.ema.module if self.ema is not None else unwrap(self.task.model)

    def _budget_clock(self, state: TrainState) -> Optional[BudgetClock]:
        """The clock that fixes the steps; none without a budget or when a resumed run's are fixed."""
        if state.planned_epochs is not None:
            self._set_epochs(state.planned_epochs)
            return None
        if self.budget_minutes is None:
            return None
        # A task may keep time aside for work outside the timed steps (one-off passes over other data).
        reserve = getattr(self.task, "reserve_seconds", lambda: 0.0)()
        return BudgetClock(self.budget_minutes, started=self.started - self._elapsed_before,
                           steps_before=state.global_step, reserve_seconds=RESERVE_SECONDS + reserve,
                           max_steps=self.config.epochs * self.steps_per_epoch if self.config.epochs else None)

    def _plan(self, state: TrainState, clock: BudgetClock) -> None:
        """A budget decided the total steps: round them to whole epochs and tell the caller."""
        epochs = max(state.epoch + 1, math.ceil(clock.total_steps / self.steps_per_epoch))  # type: ignore[operator]
        self._set_epochs(min(self._cap, epochs))
        # Kept in the state at every decision: a resumed run trains to the same end, without timing again.
        state.step_seconds, state.planned_epochs = clock.step_seconds, self.epochs
        self.on_plan(self.total_steps, clock.step_seconds)

    def run(self, state: TrainState, stop: StopRequest) -> Tuple[TrainState, bool]:
        """Train until done or a stop is requested; returns (state, finished)."""
        config, procs = self.config, self.procs
        # A resumed run's history counts on from the time the earlier runs recorded (not the lost partial epoch).
        self._elapsed_before = float(state.history[-1]["elapsed"]) if state.history else 0.0
        self._run_started, steps_run = time.perf_counter(), 0
        clock = self._budget_clock(state)
        if self.ema is not None and state.ema is not None:
            self.ema.load_state(state.ema)
        # A task whose slices stream from disk gathers the next step's batch while this one runs.
        prefetch = getattr(self.task, "prefetch", None)
        while state.epoch < self.epochs:
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
                if clock is not None and self._timed(clock, state):
                    clock = None if clock.final else clock
                at_log = state.global_step % config.log_every == 0
                if at_log and state.step_in_epoch < self.steps_per_epoch:  # the epoch's end reports itself
                    self._report(state, mean_over_processes(window_loss / window_steps, procs), steps_run)
                    window_loss, window_steps = torch.zeros((), device=self.device), 0
                # One process checks every step; several agree at log points (a collective each time).
                if state.step_in_epoch < self.steps_per_epoch and (at_log or not procs.distributed):
                    if any_process(stop.requested, procs, self.device):
                        self._save(state)
                        return state, False
            state.epoch += 1
            state.step_in_epoch = 0
            self._end_epoch(state, mean_over_processes(epoch_loss / max(1, epoch_steps), procs), steps_run)
            stopping = any_process(stop.requested, procs, self.device)
            if stopping or state.epoch % self.checkpoint_every == 0 or state.epoch == self.epochs:
                self._save(state)
            if stopping and state.epoch < self.epochs:
                return state, False
        return state, True

    def _timed(self, clock: BudgetClock, state: TrainState) -> bool:
        """Tell the clock a step ended; True when it (re)decided the total. In a distributed run every
        process takes rank 0's decision, so that all stop at the same step."""
        total = clock.step_done()
        if self.procs.distributed:
            total, clock.step_seconds, clock.final = broadcast_object(
                (total, clock.step_seconds, clock.final) if self.procs.is_main else None, self.procs)
            clock.total_steps = total if total is not None else clock.total_steps
        if total is None:
            return False
        self._plan(state, clock)
        return True

    def _save(self, state: TrainState) -> None:
        if self.ema is not None:
            state.ema = self.ema.state()
        self.save_state(state)

    def kept_weights(self) -> Dict[str, torch.Tensor]:
        """The weights a finished run keeps: the validation-selected ones, else the last (averaged) ones."""
        return {k: v.detach().cpu() for k, v in self.kept.state_dict().items()}

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
        at_step = getattr(self.task, "at_step", None)  # optional: a task whose loss follows the schedule
        if at_step is not None:
            at_step(global_step, self.total_steps)
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
        if self.ema is not None:
            self.ema.update(unwrap(self.task.model))
        return loss.detach().float()

    def _out_of_memory(self, global_step: int) -> MaclError:
        """The error of a step that ran out of memory, with the task's advice on what to lower. The saved
        state is untouched."""
        return MaclError(f"{self.stage} ran out of memory on {self.device} in step {global_step + 1}, with "
                         f"{{batch_size}} {self.config.batch_size} slices per step; {self.task.oom_hint}")

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._run_started

    def _report(self, state: TrainState, loss: float, steps_run: int,
                metrics: Optional[Dict[str, float]] = None) -> None:
        if not self.procs.is_main:
            return
        elapsed = time.perf_counter() - self._run_started
        remaining = self.total_steps - state.global_step
        eta = elapsed / steps_run * remaining if steps_run and state.step_seconds is not None else None
        # Until a budget has timed the first steps, the length is not known: say so rather than a bound.
        known = not self.budget_minutes or state.step_seconds is not None
        self.reporter.progress(self.stage, state.global_step, self.total_steps if known else None,
                               epoch=state.epoch + (1 if state.step_in_epoch else 0),
                               epochs=self.epochs if known else None,
                               loss=loss, lr=self.schedule(max(0, state.global_step - 1), self.total_steps),
                               metrics=metrics or {}, eta=eta, elapsed=elapsed)

    def _end_epoch(self, state: TrainState, loss: float, steps_run: int) -> None:
        metrics: Dict[str, float] = dict(self.task.epoch_metrics())
        due = self.validate_every and (state.epoch % self.validate_every == 0 or state.epoch == self.epochs)
        if due and self.procs.is_main:
            metrics.update(self.task.validate(self.kept))
        entry = {"epoch": state.epoch, "step": state.global_step, "loss": loss,
                 "lr": self.schedule(state.global_step - 1, self.total_steps), "elapsed": self._elapsed(), **metrics}
        state.history.append(entry)
        score = metrics.get("val_dice")
        if score is not None and (state.best_score is None or score > state.best_score):
            state.best_score, state.best_epoch = float(score), state.epoch
            state.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.kept.state_dict().items()}
        self._report(state, loss, steps_run, metrics)
