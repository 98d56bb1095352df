"""Training that fits a time budget: measure the step time, then fix the steps so the schedule ends on time.

A run with a budget of ``B`` minutes times its first ``probe_steps`` steps (after ``skip`` warm-up steps
that include one-off costs), and sets the total number of steps to what fits in the time left, so that the
learning-rate schedule (warm-up + cosine) is planned over the steps that will actually run and completes.
Without a budget the default is device-aware (:func:`default_budget`): on a CPU about 10 minutes; on CUDA
None, the full configured schedule.

The plan is one human-readable line (spacing, crop, widths, steps, estimated minutes, device), printed before
training and stored in the model file (:meth:`TrainingPlan.to_dict`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Sequence

from ..errors import ConfigError

DEFAULT_CPU_MINUTES = {"finetune": 10.0, "pretrain": 10.0}


def default_budget(device_type: str, stage: str = "finetune") -> Optional[float]:
    """Minutes a run gets when no budget is given: ~10 on a CPU, None (the full schedule) on a GPU."""
    return DEFAULT_CPU_MINUTES.get(stage, 10.0) if device_type == "cpu" else None


def check_budget(minutes: Optional[float]) -> None:
    if minutes is not None and not minutes > 0:
        raise ConfigError("time_budget", f"must be > 0 minutes, got {minutes}")


def steps_for_budget(minutes: float, step_seconds: float, elapsed_seconds: float = 0.0,
                     overhead_seconds: float = 0.0, min_steps: int = 1, max_steps: Optional[int] = None) -> int:
    """Steps that fit in what is left of ``minutes`` after what has elapsed and the fixed overhead
    (validation, saving): that time divided by the step time."""
    check_budget(minutes)
    if step_seconds <= 0:
        raise ValueError(f"step_seconds must be > 0, got {step_seconds}")
    left = minutes * 60.0 - elapsed_seconds - overhead_seconds
    steps = int(left // step_seconds)
    steps = max(min_steps, steps)
    return min(steps, max_steps) if max_steps is not None else steps


@dataclass(frozen=True)
class TrainingPlan:
    """What a run will do, in the words a person reads before it starts."""

    stage: str
    device: str
    spacing: float
    size: int
    crop: Optional[int]
    widths: Sequence[int]
    batch_size: int
    steps: int
    step_seconds: float
    minutes: float
    budget_minutes: Optional[float]

    def line(self) -> str:
        crop = f"{self.crop}² crops of {self.size}² slices" if self.crop else f"{self.size}² slices"
        budget = f" (budget {self.budget_minutes:g} min)" if self.budget_minutes else " (full schedule)"
        widths = "-".join(str(w) for w in (self.widths[0], self.widths[-1]))
        return (f"plan: {self.stage} at {self.spacing:g} mm, {crop}, widths {widths}, batch {self.batch_size}, "
                f"{self.steps} steps x {self.step_seconds:.2f} s = ~{self.minutes:.1f} min{budget} on {self.device}")

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        data["line"] = self.line()
        return data


class BudgetClock:
    """Times probe steps and decides the total steps; ``clock`` is injectable (tests use a fake one).

    Usage: call :meth:`start` before the first step and :meth:`step_done` after each; once :attr:`decided`
    is set, :attr:`total_steps` is final (it never changes again, so the schedule completes).
    """

    def __init__(self, minutes: float, probe_steps: int = 5, skip: int = 1, overhead_seconds: float = 0.0,
                 max_steps: Optional[int] = None, min_steps: int = 10,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        check_budget(minutes)
        self.minutes, self.probe_steps, self.skip = minutes, max(1, probe_steps), max(0, skip)
        self.overhead_seconds, self.max_steps, self.min_steps, self.clock = overhead_seconds, max_steps, min_steps, clock
        self.total_steps: Optional[int] = None
        self.step_seconds: Optional[float] = None
        self._started = self._probe_started = None  # type: Optional[float]
        self._done = 0

    @property
    def decided(self) -> bool:
        return self.total_steps is not None

    def start(self) -> None:
        self._started = self._probe_started = self.clock()

    def step_done(self) -> Optional[int]:
        """Record one finished step; returns the total steps when it is decided at this step, else None."""
        if self._started is None:
            self.start()
        self._done += 1
        now = self.clock()
        if self._done == self.skip:
            self._probe_started = now
        if not self.decided and self._done >= self.skip + self.probe_steps:
            measured = self._done - self.skip
            self.step_seconds = (now - self._probe_started) / measured  # type: ignore[operator]
            left = steps_for_budget(self.minutes, self.step_seconds, now - self._started,  # type: ignore[operator]
                                    self.overhead_seconds, 0)
            total = max(self.min_steps, self._done + left)
            self.total_steps = min(total, self.max_steps) if self.max_steps is not None else total
            self.total_steps = max(self.total_steps, self._done)
            return self.total_steps
        return None
