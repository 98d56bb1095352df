"""The background-job machinery (no Slicer needed): JSON progress, readable errors, cancel, no blocking."""

import json
import os
import sys
import textwrap
import time

import pytest

from MACLSegmentLib.errors import InputError, JobCancelled, JobError
from MACLSegmentLib.jobs import EXIT_INTERRUPTED, BackgroundJob, runToCompletion
from MACLSegmentLib.options import FinetuneOptions, PretrainOptions, SegmentOptions, optionalCount
from MACLSegmentLib.progress import JobProgress, formatDuration


def script_job(tmp_path, body, stoppable=True, **kwargs):
    """A job running ``body`` (Python) with the stop file path as argv[1]."""
    script = tmp_path / "script.py"
    script.write_text("import json, os, sys, time, signal\n" + textwrap.dedent(body))
    stop = str(tmp_path / "stop")
    return BackgroundJob("Test job", [sys.executable, str(script), stop], stopFile=stop if stoppable else None,
                         **kwargs)


def emit(**event):
    return f"print(json.dumps({event!r}), flush=True)\n"


def test_progress_events_are_parsed_and_the_result_returned(tmp_path):
    body = (emit(event="stage", stage="load", total=2)
            + emit(event="progress", stage="finetune", step=3, total=4, epoch=2, epochs=5, loss=0.5,
                   metrics={"val_dice": 0.8}, eta=75.0, elapsed=3.0)
            + "print('a plain line', flush=True)\n"
            + emit(event="done", output="model.pt", metrics={"selected_epoch": 2}))
    job = script_job(tmp_path, body, finisher=lambda j: ("finished", j.progress.output))
    assert runToCompletion(job, timeout=60) == ("finished", "model.pt")
    progress = job.progress
    assert (progress.epoch, progress.epochs, progress.loss, progress.valDice) == (2, 5, 0.5, 0.8)
    assert progress.done and progress.fraction == 1.0 and progress.events == 3
    assert progress.messages == ["a plain line"]
    assert job.state == "succeeded"


def test_error_event_and_stderr_give_one_readable_line(tmp_path):
    body = (emit(event="error", message="/data/x.nii.gz: does not exist")
            + "print('maclcore finetune: error: /data/x.nii.gz: does not exist', file=sys.stderr)\nsys.exit(1)\n")
    job = script_job(tmp_path, body)
    with pytest.raises(JobError, match=r"^Test job failed: /data/x.nii.gz: does not exist$"):
        runToCompletion(job, timeout=60)
    assert job.state == "failed" and job.returncode == 1


def test_a_crash_reports_its_last_line_not_the_traceback(tmp_path):
    job = script_job(tmp_path, "raise RuntimeError('kaput')\n")
    with pytest.raises(JobError) as info:
        runToCompletion(job, timeout=60)
    assert str(info.value) == "Test job failed: RuntimeError: kaput"
    assert any("Traceback" in line for line in job.stderrLines)  # kept for the log, not the message


def test_usage_error_exit_2_is_readable(tmp_path):
    job = script_job(tmp_path, "print('usage: maclcore ...', file=sys.stderr)\n"
                               "print('maclcore: error: the following arguments are required: --out', "
                               "file=sys.stderr)\nsys.exit(2)\n")
    with pytest.raises(JobError, match="the following arguments are required: --out"):
        runToCompletion(job, timeout=60)


def test_cancel_creates_the_stop_file_and_the_job_ends_cancelled(tmp_path):
    body = (emit(event="progress", stage="finetune", step=1, total=100)
            + "while not os.path.exists(sys.argv[1]):\n    time.sleep(0.05)\n"
            + emit(event="message", message="stopped; progress saved in m.resume.pt (run again with --resume)")
            + f"sys.exit({EXIT_INTERRUPTED})\n")
    job = script_job(tmp_path, body).start()
    while job.poll() and job.progress.step == 0:
        time.sleep(0.05)
    job.cancel()
    assert job.wait(timeout=30) == EXIT_INTERRUPTED
    assert job.state == "cancelled"
    with pytest.raises(JobCancelled, match="resume"):
        job.finish()
    assert not os.path.exists(job.stopFile)


@pytest.mark.skipif(os.name == "nt", reason="ignoring SIGTERM is POSIX-only")
def test_cancel_escalates_to_terminate_and_kill(tmp_path):
    body = ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + emit(event="message", message="up")
            + "while True:\n    time.sleep(0.1)\n")
    job = script_job(tmp_path, body, cancelGrace=0.5).start()
    while job.poll() and not job.progress.messages:
        time.sleep(0.05)
    job.cancel()
    assert job.wait(timeout=20) is not None, "the job survived terminate and kill"
    assert job.state == "cancelled"
    with pytest.raises(JobCancelled):
        job.finish()


def test_poll_never_blocks_on_a_silent_process(tmp_path):
    job = script_job(tmp_path, "time.sleep(30)\n", stoppable=False).start()
    started = time.monotonic()
    for _ in range(5):
        assert job.poll()
    assert time.monotonic() - started < 0.5
    job.cancel()  # no stop file: terminates at once
    assert job.wait(timeout=10) is not None and job.state == "cancelled"


def test_a_missing_executable_is_a_job_error(tmp_path):
    job = BackgroundJob("Test job", [str(tmp_path / "no-such-python"), "-c", "pass"], cleanupFolder=str(tmp_path / "x"))
    with pytest.raises(JobError, match="could not start"):
        job.start()


def test_the_job_folder_is_removed_when_finished(tmp_path):
    folder = tmp_path / "jobfolder"
    folder.mkdir()
    (folder / "input.nrrd").write_text("x")
    job = script_job(tmp_path, "pass\n", cleanupFolder=str(folder))
    runToCompletion(job, timeout=60)
    assert not folder.exists()


def test_progress_description_and_durations():
    progress = JobProgress()
    assert progress.describe() == "starting..."
    progress.update(json.dumps({"event": "progress", "stage": "finetune", "step": 5, "total": 10, "epoch": 3,
                                "epochs": 100, "loss": 0.34211, "metrics": {"val_dice": 0.812}, "eta": 3725}))
    assert progress.fraction == 0.5
    assert progress.describe() == "epoch 3/100 · loss 0.3421 · validation Dice 0.812 · 1 h 02 min left"
    assert formatDuration(65) == "1 min 05 s" and formatDuration(None) == ""
    progress.update("{not json")
    assert progress.messages[-1] == "{not json"


def test_options_become_maclcore_arguments():
    # Only what the user set is passed: MACLCore's own defaults apply to the rest.
    assert FinetuneOptions().arguments() == ["--device", "auto"]
    assert PretrainOptions().arguments() == ["--device", "auto"]
    assert SegmentOptions().arguments() == ["--device", "auto"]
    assert FinetuneOptions(epochs=3, batchSize=8, channels=(8, 16), resume=True).arguments() == [
        "--epochs", "3", "--batch-size", "8", "--device", "auto", "--channels", "8,16", "--resume"]
    assert PretrainOptions(epochs=5, batchSize=32).arguments() == ["--epochs", "5", "--batch-size", "32",
                                                                   "--device", "auto"]
    assert PretrainOptions(gpus=2).arguments()[-2:] == ["--device", "cuda"]
    assert SegmentOptions(device="cpu", batchSize=4).arguments() == ["--device", "cpu", "--batch-size", "4"]
    assert optionalCount(0) is None and optionalCount(None) is None and optionalCount(7) == 7
    for bad in (lambda: FinetuneOptions(epochs=0), lambda: SegmentOptions(device="gpu"),
                lambda: PretrainOptions(gpus=2, device="cpu")):
        with pytest.raises(InputError):
            bad()


def test_the_defaults_the_module_leaves_out_are_the_engines_own():
    # What the module does not pass must be defaulted by the engine's parser (else the job would fail or differ).
    pytest.importorskip("maclcore")
    import subprocess

    for command in (["predict"], ["suggest"], ["finetune"], ["pretrain"]):
        text = subprocess.run([sys.executable, "-m", "maclcore", *command, "--help"], capture_output=True,
                              text=True, timeout=120).stdout
        assert "--batch-size" in text and "default" in text, command
