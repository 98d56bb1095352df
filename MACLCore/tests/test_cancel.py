"""Cancel, as the Slicer module does it (a stop file, or SIGTERM): the background process stops within seconds
with exit code 130 and a resumable state that ``--resume`` continues to the uninterrupted result; the output's
lock refuses a second job while one runs, and a stale lock of a dead process is taken over."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from maclcore.io.checkpoint import load_checkpoint
from reliability_utils import (TINY_NET, assert_one_line_error, finish, leftovers, one_thread,  # noqa: F401
                               read_events, run_cli, start_child, wait_for, write_cases)

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS, STEPS = 30, 4  # long enough (120 steps) that the cancel comes mid-run
STOP_WITHIN = 15.0  # seconds; generous for a loaded machine (a step takes milliseconds)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_cases(tmp_path_factory.mktemp("cancel") / "data", 3, seed=4)


def finetune_argv(data, out, *extra):
    return (["finetune", "--images", data / "imagesTr", "--labels", data / "labelsTr", "--out", out,
             "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS), "--batch-size", "2", "--seed", "3",
             "--checkpoint-every", "5"] + TINY_NET[:-2] + list(extra))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory, one_thread):
    from maclcore.cli.main import main

    out = tmp_path_factory.mktemp("cancel-reference") / "model.pt"
    assert main([str(a) for a in finetune_argv(data, out, "--progress", "none")]) == 0
    return load_checkpoint(out)


def started_training(child):
    """Wait until the child reports a training step (it holds the lock and has loaded the data)."""
    return read_events(child, lambda e: e.get("event") == "progress" and e.get("stage") == "finetune")


def assert_stopped_resumably(child, run, started):
    code = finish(child, timeout=120)
    seconds = time.monotonic() - started
    err = (run / "stderr.txt").read_text()
    assert code == 130, err
    assert seconds < STOP_WITHIN, f"took {seconds:.1f} s to stop"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "stopped; progress saved in" in lines[0] and "model.resume.pt" in lines[0], err
    assert sorted(leftovers(run / "out")) == ["model.resume.pt"], "only the resume state may be left"
    saved = load_checkpoint(run / "out" / "model.resume.pt", kinds=("resume",))
    assert 0 < saved["train_state"]["global_step"] < EPOCHS * STEPS
    return saved


def assert_resumes_to_reference(data, run, reference, capfd):
    code, _, err = run_cli(finetune_argv(data, run / "out" / "model.pt", "--progress", "none", "--resume"), capfd)
    assert code == 0, err
    model = load_checkpoint(run / "out" / "model.pt")
    steps = [(e["epoch"], e["step"]) for e in model["training"]["history"]]
    assert steps == [(e["epoch"], e["step"]) for e in reference["training"]["history"]]
    elapsed = [e["elapsed"] for e in model["training"]["history"]]
    assert elapsed == sorted(elapsed), "a resumed run's recorded time counts on from the earlier run's"
    for name, tensor in model["state_dict"].items():
        assert torch.equal(tensor, reference["state_dict"][name]), f"{name} differs from the uninterrupted run"
    assert leftovers(run / "out") == ["model.pt"]


@pytest.mark.slow
def test_stop_file_cancels_within_seconds_and_resume_finishes_the_same(data, reference, tmp_path, capfd):
    stop = tmp_path / "cancel.requested"
    child = start_child(finetune_argv(data, tmp_path / "out" / "model.pt", "--progress", "json", "--stop-file", stop),
                        tmp_path / "stderr.txt")
    started_training(child)
    stop.write_text("")
    saved = assert_stopped_resumably(child, tmp_path, time.monotonic())
    assert saved["train_state"]["step_in_epoch"] >= 0  # mid-epoch is fine: resume continues at that step
    stop.unlink()
    assert_resumes_to_reference(data, tmp_path, reference, capfd)


@pytest.mark.slow
def test_sigterm_cancels_within_seconds_and_keeps_the_state(data, reference, tmp_path, capfd):
    child = start_child(finetune_argv(data, tmp_path / "out" / "model.pt", "--progress", "json"),
                        tmp_path / "stderr.txt")
    started_training(child)
    child.send_signal(signal.SIGTERM)
    assert_stopped_resumably(child, tmp_path, time.monotonic())
    assert_resumes_to_reference(data, tmp_path, reference, capfd)


def test_stop_requested_before_training_leaves_nothing(data, tmp_path, capfd):
    """A cancel that comes while the data are still loading: exit 130, no state, no lock, no model."""
    stop = tmp_path / "cancel.requested"
    stop.write_text("")
    code, _, err = run_cli(finetune_argv(data, tmp_path / "out" / "model.pt", "--progress", "none",
                                         "--stop-file", stop), capfd)
    assert code == 130
    assert err.strip() == "maclcore finetune: stopped before training began; nothing was saved"
    assert leftovers(tmp_path / "out") == []


@pytest.mark.slow
def test_lock_refuses_a_second_job_on_the_same_output_while_the_first_runs(data, tmp_path, capfd):
    out = tmp_path / "out" / "model.pt"
    stop = tmp_path / "cancel.requested"
    child = start_child(finetune_argv(data, out, "--progress", "json", "--stop-file", stop), tmp_path / "stderr.txt")
    try:
        started_training(child)
        lock = out.with_name("model.pt.lock")
        assert lock.read_text() == str(child.pid)
        for second in (finetune_argv(data, out, "--progress", "none"),
                       finetune_argv(data, out, "--progress", "none", "--resume"),
                       ["pretrain", "--images", data / "imagesTr", "--out", out] + TINY_NET):
            code, stdout, err = run_cli(second, capfd)
            assert_one_line_error(code, stdout, err, [out, f"pid {child.pid}"], "another job")
            assert lock.read_text() == str(child.pid), "the refused job must leave the running job's lock alone"
        assert child.poll() is None, "the first job must go on undisturbed"
    finally:
        stop.write_text("")
    assert_stopped_resumably(child, tmp_path, time.monotonic())


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("content", ["dead", "", "not a pid"])
def test_stale_lock_is_taken_over(data, tmp_path, capfd, content):
    out = tmp_path / "out" / "model.pt"
    out.parent.mkdir()
    out.with_name("model.pt.lock").write_text(str(dead_pid()) if content == "dead" else content)
    argv = finetune_argv(data, out, "--progress", "none")
    argv[argv.index("--epochs") + 1] = "1"
    code, _, err = run_cli(argv, capfd)
    assert code == 0, err
    assert leftovers(tmp_path / "out") == ["model.pt"]


def test_lock_of_a_live_process_is_respected_even_in_the_same_process(data, tmp_path, capfd):
    """An in-process caller (the API, a Slicer Logic) gets the same refusal, and its lock is released after."""
    from maclcore.runtime.control import RunLock

    out = tmp_path / "model.pt"
    with RunLock(out):
        code, stdout, err = run_cli(finetune_argv(data, out, "--progress", "none"), capfd)
        assert_one_line_error(code, stdout, err, [out], "another job")
    wait_for(lambda: not out.with_name("model.pt.lock").exists(), 5, "the lock to go")
    assert os.listdir(tmp_path) == []


RACE_FOR_THE_LOCK = """
import sys, time
from maclcore.runtime.control import RunLock
lock = RunLock(sys.argv[1])
while time.time() < float(sys.argv[2]):
    pass
taken = lock.acquire()
print(int(taken), flush=True)
time.sleep(2)  # hold it while the rivals try
lock.release()
"""


def test_rivals_starting_together_get_the_lock_exactly_once(tmp_path):
    """Workers sharing a folder (the study's --jobs) race for one unit; a lock seen before its owner's pid
    was written must not pass for a stale one."""
    start = time.time() + 3
    rivals = [subprocess.Popen([sys.executable, "-c", RACE_FOR_THE_LOCK, str(tmp_path / "unit"), str(start)],
                               stdout=subprocess.PIPE, text=True) for _ in range(6)]
    taken = [int(r.communicate(timeout=60)[0].strip()) for r in rivals]
    assert sum(taken) == 1
    assert os.listdir(tmp_path) == []  # released, and no drafts left behind


TERMINATED_WHILE_WRITING = """
import os, signal, sys, SimpleITK
from maclcore.cli.main import main
real_write = SimpleITK.WriteImage

def write_then_get_terminated(image, path, *args, **kwargs):
    real_write(image, path, *args, **kwargs)  # the temp file is complete on disk, not yet renamed
    os.kill(os.getpid(), signal.SIGTERM)

SimpleITK.WriteImage = write_then_get_terminated
sys.exit(main(sys.argv[1:]))
"""


def test_terminated_prediction_leaves_no_partial_file(data, tmp_path):
    """A prediction cancelled (SIGTERM) while writing: exit 130, one line, no temp or half-written file."""
    from maclcore.cli.main import main

    model = tmp_path / "model.pt"
    argv = ["finetune", "--images", data / "imagesTr", "--labels", data / "labelsTr", "--out", model, "--epochs", "1",
            "--steps-per-epoch", "1", "--batch-size", "2"] + TINY_NET
    assert main([str(a) for a in argv]) == 0
    child = start_child(["predict", "--model", model, "--image", data / "imagesTr", "--out", tmp_path / "out"]
                        + TINY_NET[4:], tmp_path / "stderr.txt", python=["-c", TERMINATED_WHILE_WRITING])
    assert finish(child, timeout=120) == 130
    assert (tmp_path / "stderr.txt").read_text().strip() == "maclcore predict: interrupted"
    assert leftovers(tmp_path / "out") == []
