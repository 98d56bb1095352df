"""Time-budgeted training: the steps fit the budget (fake clock), the schedule completes, the plan is readable."""

import pytest

from maclcore.errors import ConfigError
from maclcore.training.budget import BudgetClock, TrainingPlan, default_budget, steps_for_budget
from maclcore.training.loop import cosine_lr


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(minutes: float, step_seconds: float, first_step: float = 3.0, overhead: float = 0.0):
    clock = FakeClock()
    budget = BudgetClock(minutes, probe_steps=5, skip=1, overhead_seconds=overhead, min_steps=1, clock=clock)
    budget.start()
    steps, lrs = 0, []
    while budget.total_steps is None or steps < budget.total_steps:
        total = budget.total_steps or 10 ** 9
        lrs.append(cosine_lr(steps, total, 1e-3, 1e-5, warmup=int(0.05 * total)) if budget.decided else 1e-4)
        clock.now += first_step if steps == 0 else step_seconds
        steps += 1
        budget.step_done()
    return budget, clock.now, lrs


def test_ends_on_time_with_a_fake_clock():
    budget, elapsed, _ = run(10.0, 0.5, overhead=30.0)
    assert budget.step_seconds == pytest.approx(0.5)
    assert 600 - 30 - 0.5 <= elapsed <= 600 - 30


def test_schedule_completes():
    budget, _, lrs = run(2.0, 0.25)
    assert len(lrs) == budget.total_steps
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)  # the cosine reached its floor at the last step
    assert max(lrs) == pytest.approx(1e-3, rel=0.01)


def test_total_is_fixed_once_decided_and_never_below_steps_run():
    budget, _, _ = run(0.01, 1.0)  # budget smaller than the probe: the probe's steps are the run
    assert budget.total_steps == 6


def test_plan_line_and_record():
    plan = TrainingPlan("finetune", "cpu", 2.5, 192, 96, (16, 32, 64, 128, 256), 16, 1200, 0.4, 8.0, 10.0)
    line = plan.line()
    for part in ("2.5 mm", "96²", "192²", "16-256", "1200 steps", "~8.0 min", "cpu"):
        assert part in line
    record = plan.to_dict()
    assert record["steps"] == 1200 and record["line"] == line and record["widths"][0] == 16


def test_defaults_and_checks():
    assert default_budget("cpu") == pytest.approx(10.0)
    assert default_budget("cuda") is None
    assert steps_for_budget(1.0, 0.5) == 120
    with pytest.raises(ConfigError, match="time_budget"):
        BudgetClock(0.0)
