"""Training that fits a time budget: time the first steps, then fix the steps so the schedule ends on time.

A run with a budget of ``B`` minutes times ``probe_steps`` steps (after ``skip`` steps that carry one-off
costs: kernel selection, first allocations), and sets the total number of steps to what fits in the time
left, so the learning-rate schedule (warm-up + cosine) is planned over the steps that will actually run and
completes. The first steps of a run can be slower or faster than the rest (caches warming, a neighbour's
job ending), so the total is decided again at ``refine_at`` steps and at a quarter of the run, each time
from the steps since the look before (which hold the epoch-end work: checkpoints, validation). After that it
never changes again. The clock starts when the command starts, so reading the data counts against the budget.

Without a budget the default is device-aware (:func:`default_budget`): about 10 minutes on a CPU (a few
cases finetune to a usable model in that time, benchmarks/results/recipe_cpu), the full schedule on a GPU.

The plan is one human-readable line (spacing, crop, widths, steps, estimated minutes, device), printed when
the steps are fixed and stored in the model file (:meth:`TrainingPlan.to_dict`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

from ..errors import ConfigError

DEFAULT_CPU_MINUTES = 10.0
RESERVE_SECONDS = 10.0  # kept for the end of a run: the last validation, writing the model
DEFAULT_EPOCHS = 100  # without a budget (on a GPU, or time_budget 0) and without a given number of epochs


def default_budget(device_type: str) -> Optional[float]:
    """Minutes a run gets when neither a budget nor epochs are given: ~10 on a CPU, None (the full
    schedule of :data:`DEFAULT_EPOCHS`) on a GPU."""
    return DEFAULT_CPU_MINUTES if device_type == "cpu" else None


def resolve_budget(time_budget: Optional[float], epochs: Optional[int], device_type: str) -> Optional[float]:
    """The budget in minutes a run trains under, None for none: a given budget (0 means none), else the
    device's default when no epochs are given either."""
    if time_budget is not None:
        return time_budget or None
    return default_budget(device_type) if epochs is None else None


def steps_for_budget(minutes: float, step_seconds: float, elapsed_seconds: float = 0.0,
                     reserve_seconds: float = 0.0) -> int:
    """Steps that fit in what is left of ``minutes`` after what has elapsed and the time kept in reserve
    for the end of the run (the last validation, writing the model)."""
    if not minutes > 0:
        raise ConfigError("time_budget", f"must be > 0 minutes, got {minutes}")
    if step_seconds <= 0:
        raise ValueError(f"step_seconds must be > 0, got {step_seconds}")
    return max(0, int((minutes * 60.0 - elapsed_seconds - reserve_seconds) // step_seconds))


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
    step_seconds: Optional[float]
    minutes: Optional[float]
    budget_minutes: Optional[float]
    precision: str = "fp32"  # bf16 or fp32 (runtime.device.precision)

    def line(self) -> str:
        crop = f"{self.crop}² crops of {self.size}² slices" if self.crop else f"{self.size}² slices"
        budget = f" (budget {self.budget_minutes:g} min)" if self.budget_minutes else " (full schedule)"
        widths = f"{self.widths[0]}-{self.widths[-1]}"
        timing = (f" x {self.step_seconds:.2f} s = ~{self.minutes:.1f} min" if self.step_seconds is not None
                  and self.minutes is not None else "")
        return (f"plan: {self.stage} at {self.spacing:g} mm, {crop}, widths {widths}, batch {self.batch_size}, "
                f"{self.steps} steps{timing}{budget} on {self.device} ({self.precision})")

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        data["line"] = self.line()
        return data


class BudgetClock:
    """Decides a run's total steps from timed steps; ``clock`` is injectable (tests use a fake one).

    Call :meth:`step_done` after every step; it returns the new total when the total is (re)decided, else
    None. It decides at ``skip + probe_steps`` steps of this process, again at ``refine_at`` steps, and a
    last time at ``late`` of the planned steps (each time from the steps since the look before, so later
    looks see the epoch-end work: checkpoints, validation); then :attr:`final` is set. ``started`` is when
    the run began (default: now); a resumed run passes the time and the ``steps_before`` its earlier runs
    took. The total is at least the steps already run and at most ``max_steps``.
    """

    def __init__(self, minutes: float, started: Optional[float] = None, steps_before: int = 0,
                 probe_steps: int = 5, skip: int = 2, refine_at: int = 60, late: float = 0.25,
                 reserve_seconds: float = RESERVE_SECONDS, max_steps: Optional[int] = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if not minutes > 0:
            raise ConfigError("time_budget", f"must be > 0 minutes, got {minutes}")
        self.minutes, self.probe_steps, self.skip = minutes, max(1, probe_steps), max(0, skip)
        self.refine_at, self.late = max(refine_at, self.skip + self.probe_steps), late
        self.reserve_seconds, self.max_steps, self.clock = reserve_seconds, max_steps, clock
        self.started = clock() if started is None else started
        self.total_steps: Optional[int] = None
        self.step_seconds: Optional[float] = None
        self.final = False
        self._done, self.steps_before = 0, steps_before
        # (time, steps) of the last look; the first look times from the end of the skipped steps.
        self._window: Optional[Tuple[float, int]] = (clock(), 0) if self.skip == 0 else None
        self._next_look = self.skip + self.probe_steps

    def step_done(self) -> Optional[int]:
        """Record one finished step; the total steps when decided at this step, else None."""
        self._done += 1
        now = self.clock()
        if self._done == self.skip:
            self._window = (now, self._done)
        if self.final or self._done < self._next_look:
            return None
        since, done_then = self._window  # type: ignore[misc]
        self.step_seconds = (now - since) / max(1, self._done - done_then)
        self._window = (now, self._done)
        left = steps_for_budget(self.minutes, self.step_seconds, now - self.started, self.reserve_seconds)
        total = self.steps_before + self._done + left
        if self.max_steps is not None:
            total = min(total, self.max_steps)
        self.total_steps = max(total, self.steps_before + self._done)
        late = max(self.refine_at + 1, int(self.late * self.total_steps) - self.steps_before)
        self._next_look = self.refine_at if self._done < self.refine_at else late
        self.final = (self._done > self.refine_at or self._done >= late
                      or self.total_steps <= self.steps_before + self._done)
        return self.total_steps
