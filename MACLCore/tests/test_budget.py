"""Time-budgeted training: the steps fit the budget (fake clock), the schedule completes, the plan is readable
and kept in the model file, and the loop honours it."""

import functools

import pytest
import torch

from maclcore.errors import ConfigError
from maclcore.training import budget as budget_module
from maclcore.training.budget import BudgetClock, TrainingPlan, default_budget, resolve_budget, steps_for_budget
from maclcore.training.loop import cosine_lr


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(minutes, step_time, started=0.0, reserve=0.0, refine_at=60, skip=1):
    """Steps until the clock's total; ``step_time(i)`` is step i's duration. Returns (clock, elapsed, lrs)."""
    clock = FakeClock()
    clock.now = -started  # the command began `started` seconds before the first step
    budget = BudgetClock(minutes, started=-started, probe_steps=5, skip=skip, refine_at=refine_at,
                         reserve_seconds=reserve, clock=clock)
    clock.now = 0.0
    steps, lrs = 0, []
    while budget.total_steps is None or steps < budget.total_steps:
        total = budget.total_steps or 10 ** 9
        lrs.append(cosine_lr(steps, total, 1e-3, 1e-5, warmup=int(0.05 * total)))
        clock.now += step_time(steps)
        steps += 1
        budget.step_done()
    return budget, clock.now + started, lrs


def test_ends_on_time_counting_the_time_before_the_first_step():
    budget, elapsed, _ = run(10.0, lambda i: 3.0 if i == 0 else 0.5, started=20.0, reserve=30.0)
    assert budget.step_seconds == pytest.approx(0.5)
    assert 600 - 30 - 0.5 <= elapsed <= 600 - 30


def test_looks_again_when_the_first_steps_were_slow_and_when_later_ones_slow_down():
    # Steps 1-6 take 1 s, then 0.25 s, and from step 60 on 0.5 s (the machine got busier, checkpoints began):
    # the first look plans too few steps, the second too many; the look at a quarter of the run fixes it.
    budget, elapsed, _ = run(5.0, lambda i: 1.0 if i < 6 else 0.25 if i < 60 else 0.5, refine_at=60)
    assert budget.final and budget.step_seconds == pytest.approx(0.5)
    assert 300 - 1 <= elapsed <= 300
    steady, elapsed_steady, _ = run(5.0, lambda i: 1.0 if i < 6 else 0.25, refine_at=60)
    assert 300 - 1 <= elapsed_steady <= 300 and steady.step_seconds == pytest.approx(0.25)


def test_schedule_completes():
    budget, _, lrs = run(2.0, lambda i: 0.25)
    assert len(lrs) == budget.total_steps
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)  # the cosine reached its floor at the last step
    assert max(lrs) == pytest.approx(1e-3, rel=0.01)


def test_total_never_below_the_steps_run():
    budget, _, _ = run(0.01, lambda i: 1.0)  # budget smaller than the probe: the probe's steps are the run
    assert budget.total_steps == 6 and budget.final


def test_plan_line_and_record():
    plan = TrainingPlan("finetune", "cpu", 2.5, 192, 96, (16, 32, 64, 128, 256), 16, 1200, 0.4, 8.0, 10.0)
    line = plan.line()
    for part in ("2.5 mm", "96²", "192²", "16-256", "1200 steps", "~8.0 min", "budget 10 min", "cpu"):
        assert part in line
    record = plan.to_dict()
    assert record["steps"] == 1200 and record["line"] == line and record["widths"][0] == 16
    untimed = TrainingPlan("pretrain", "cuda:0", 2.5, 128, None, (16, 256), 16, 500, None, None, None).line()
    assert "500 steps (full schedule) on cuda:0" in untimed


def test_which_budget_applies():
    assert default_budget("cpu") == pytest.approx(10.0) and default_budget("cuda") is None
    assert resolve_budget(None, None, "cpu") == pytest.approx(10.0)  # nothing given: the CPU default
    assert resolve_budget(None, None, "cuda") is None  # the full schedule on a GPU
    assert resolve_budget(None, 5, "cpu") is None  # epochs given: exactly those
    assert resolve_budget(3.0, 5, "cuda") == 3.0  # a given budget always applies (epochs cap it)
    assert resolve_budget(0.0, None, "cpu") is None  # 0: no budget
    assert steps_for_budget(1.0, 0.5) == 120
    with pytest.raises(ConfigError, match="time_budget"):
        BudgetClock(0.0)
    from maclcore.training.loop import LoopConfig
    with pytest.raises(ConfigError, match="time_budget"):
        LoopConfig(time_budget=-1)


def test_finetune_under_a_budget_fixes_its_steps_and_records_the_plan(tmp_path, monkeypatch):
    """The loop under a (fake-clock) budget: steps fixed by the clock, the cosine completes, the plan line is
    printed and kept in the model file."""
    from maclcore.data.phantom import write_phantom_dataset
    from maclcore.io.pairing import pair_cases
    from maclcore.runtime.progress import Reporter
    from maclcore.training.finetune import FinetuneConfig, finetune

    import time

    ticks = {"now": 0.0}

    def step_clock():
        ticks["now"] += 0.5  # the budget looks once a step: every step takes half a second
        return ticks["now"]

    monkeypatch.setattr(time, "perf_counter", lambda: ticks["now"])  # the command's start, reports
    monkeypatch.setattr("maclcore.training.loop.BudgetClock", functools.partial(BudgetClock, clock=step_clock))
    write_phantom_dataset(str(tmp_path / "data"), 2, seed=1)
    cases = pair_cases(str(tmp_path / "data" / "imagesTr"), str(tmp_path / "data" / "labelsTr"))
    messages = []

    class Listening(Reporter):
        def message(self, text):
            messages.append(text)

    from maclcore.training.loop import LoopConfig
    config = FinetuneConfig(loop=LoopConfig(time_budget=0.5, batch_size=4, ema_decay=0.9), channels=(4, 4, 8, 8, 8),
                            spacing=6.0)
    summary = finetune(cases, tmp_path / "m.pt", config, device="cpu", reporter=Listening())
    history = summary["history"]
    steps = history[-1]["step"]
    assert 20 <= steps <= 80  # 30 s of budget at 0.5 s a look, less the reserve and the start
    assert history[-1]["lr"] == pytest.approx(config.min_lr, rel=0.2)  # the schedule ran to its end
    assert any(m.startswith("plan: finetune at 6 mm") and f"{steps} steps" in m for m in messages), messages
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert saved["training"]["plan"]["steps"] == steps and saved["training"]["plan"]["budget_minutes"] == 0.5
    from maclcore.runtime.device import precision

    # The plan says what the run computes in: bf16 only where this CPU is faster in it.
    assert saved["training"]["plan"]["precision"] == precision(torch.device("cpu"), True)
    assert saved["training"]["plan"]["line"].endswith(f"on cpu ({precision(torch.device('cpu'), True)})")


def test_a_stopped_budget_run_resumes_to_the_same_end(tmp_path, monkeypatch):
    """Stopped after its steps were fixed, a budget run resumes to the same total without timing again, and
    ends with the weights (and weight average) of the uninterrupted run."""
    import time

    from maclcore.data.phantom import write_phantom_dataset
    from maclcore.errors import TrainingInterrupted
    from maclcore.io.pairing import pair_cases
    from maclcore.runtime.progress import Reporter
    from maclcore.training.finetune import FinetuneConfig, finetune
    from maclcore.training.loop import LoopConfig

    write_phantom_dataset(str(tmp_path / "data"), 2, seed=2)
    cases = pair_cases(str(tmp_path / "data" / "imagesTr"), str(tmp_path / "data" / "labelsTr"))
    config = FinetuneConfig(loop=LoopConfig(time_budget=2.0, batch_size=2, ema_decay=0.9, seed=4),
                            channels=(4, 4, 4, 8, 8), spacing=6.0)
    monkeypatch.setattr(time, "perf_counter", lambda: 0.0)

    def fake_budget():
        ticks = {"now": 0.0}

        def step_clock():
            ticks["now"] += 0.5
            return ticks["now"]
        return functools.partial(BudgetClock, clock=step_clock)

    stop = tmp_path / "stop"

    class StopAt(Reporter):
        def progress(self, stage, step, total, **fields):
            if stage == "finetune" and step >= 100:
                stop.touch()

    monkeypatch.setattr("maclcore.training.loop.BudgetClock", fake_budget())
    whole = finetune(cases, tmp_path / "whole.pt", config, device="cpu")
    monkeypatch.setattr("maclcore.training.loop.BudgetClock", fake_budget())
    with pytest.raises(TrainingInterrupted):
        finetune(cases, tmp_path / "parts.pt", config, device="cpu", reporter=StopAt(), stop_file=str(stop))
    stop.unlink()
    monkeypatch.setattr("maclcore.training.loop.BudgetClock", None)  # a resumed run must not time again
    parts = finetune(cases, tmp_path / "parts.pt", config, device="cpu", resume=True)
    assert parts["history"][-1]["step"] == whole["history"][-1]["step"] > 100
    one = torch.load(tmp_path / "whole.pt", weights_only=True)["state_dict"]
    two = torch.load(tmp_path / "parts.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(one[k], two[k]) for k in one)
