"""kill -9 at random points of a pretraining and a finetuning run: the last complete resume state is intact,
``--resume`` finishes with the same steps, and the result equals an uninterrupted run's, bit for bit (all
randomness is keyed to (seed, step)). A kill in the middle of writing a checkpoint leaves the previous one."""

import os
import random
import signal
import textwrap
import time

import pytest
import torch

from maclcore.io.checkpoint import load_checkpoint
from reliability_utils import (CHILD_ENV, TINY_NET, finish, leftovers, one_thread, read_events,  # noqa: F401
                               start_child, write_cases)

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

EPOCHS, STEPS = 5, 4
LOOP = ["--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS), "--batch-size", "2", "--checkpoint-every", "1",
        "--seed", "7"] + TINY_NET[:-2]

# Seeded, so that a failure can be reproduced: the kill comes a random delay (0-40 ms: a few steps, or the
# checkpoint write) after the progress event of the end of a random epoch; two epochs are left then.
_rng = random.Random(9)
KILLS = {"finetune": [(_rng.randint(1, EPOCHS - 2), round(_rng.uniform(0, 0.04), 3)) for _ in range(3)],
         "pretrain": [(_rng.randint(1, EPOCHS - 2), round(_rng.uniform(0, 0.04), 3)) for _ in range(2)]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_cases(tmp_path_factory.mktemp("crash") / "data", 3, seed=8)


def command(stage, data, out):
    inputs = (["--images", data / "imagesTr", "--labels", data / "labelsTr"] if stage == "finetune"
              else ["--images", data / "imagesTr"])
    return [stage] + inputs + ["--out", out] + LOOP


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory, one_thread):
    """Uninterrupted runs (in this process, one thread like the children)."""
    folder = tmp_path_factory.mktemp("reference")
    runs = {}
    for stage in ("finetune", "pretrain"):
        out = folder / f"{stage}.pt"
        assert run_cli_plain(command(stage, data, out) + ["--progress", "none"]) == 0
        runs[stage] = load_checkpoint(out)
    return runs


def run_cli_plain(argv):
    from maclcore.cli.main import main

    return main([str(a) for a in argv])


def history(model):
    info = model.get("training") or model.get("pretraining")
    return [(e["epoch"], e["step"]) for e in info["history"]]


def assert_same_as_reference(out, reference):
    model = load_checkpoint(out)
    assert history(model) == history(reference), "a resumed run must make the same steps"
    assert history(model)[-1] == (EPOCHS, EPOCHS * STEPS)
    assert model["state_dict"].keys() == reference["state_dict"].keys()
    for name, tensor in model["state_dict"].items():
        assert torch.equal(tensor, reference["state_dict"][name]), f"{name} differs from the uninterrupted run"
    assert leftovers(out.parent) == [out.name], "resume state, lock or temp files left behind"


def resume_after_crash(stage, data, out):
    """What the user does after a crash: --resume when there is a state (else start again); a stale lock
    (its process is dead) and temp files of interrupted writes are cleaned up."""
    state = out.with_name(out.stem + ".resume.pt")
    if state.exists():
        saved = load_checkpoint(state, kinds=("resume",))  # intact: loads and says where it stands
        assert saved["train_state"]["step_in_epoch"] == 0
        assert saved["train_state"]["global_step"] == saved["train_state"]["epoch"] * STEPS
    argv = command(stage, data, out) + ["--progress", "none"] + (["--resume"] if state.exists() else [])
    assert run_cli_plain(argv) == 0


@pytest.mark.parametrize("stage, epoch, delay", [(s, e, d) for s, kills in KILLS.items() for e, d in kills])
def test_kill_9_then_resume_gives_the_uninterrupted_result(data, reference, tmp_path, stage, epoch, delay):
    out = tmp_path / "run" / "model.pt"
    out.parent.mkdir()
    child = start_child(command(stage, data, out) + ["--progress", "json"], tmp_path / "stderr.txt")
    read_events(child, lambda e: e.get("stage") == stage and e.get("event") == "progress"
                and e.get("epoch") == epoch and e["step"] == epoch * STEPS)
    time.sleep(delay)  # the child goes on meanwhile (its few progress lines fit in the pipe)
    child.send_signal(signal.SIGKILL)
    assert finish(child) == -signal.SIGKILL
    assert not out.exists()
    resume_after_crash(stage, data, out)
    assert_same_as_reference(out, reference[stage])


DIE_WHILE_SAVING = textwrap.dedent("""
    import os, signal, sys, torch
    from maclcore.cli.main import main
    real_save, calls = torch.save, []

    def save_half_then_die(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == int(os.environ["DIE_AT_SAVE"]):
            real_save(obj, path, *args, **kwargs)
            with open(path, "r+b") as handle:
                handle.truncate(os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, path, *args, **kwargs)

    torch.save = save_half_then_die
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("stage, die_at", [("finetune", 3), ("pretrain", 3), ("finetune", EPOCHS + 1)],
                         ids=["finetune-resume-state", "pretrain-resume-state", "finetune-final-model"])
def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(data, reference, tmp_path, stage, die_at,
                                                                  monkeypatch):
    """The process dies with a checkpoint half-written (the 3rd resume state, or the final model): the last
    complete resume state is intact, and --resume cleans up and finishes with the uninterrupted result."""
    out = tmp_path / "run" / "model.pt"
    out.parent.mkdir()
    monkeypatch.setitem(CHILD_ENV, "DIE_AT_SAVE", str(die_at))
    child = start_child(command(stage, data, out) + ["--progress", "none"], tmp_path / "stderr.txt",
                        python=["-c", DIE_WHILE_SAVING])
    assert finish(child) == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()
    half_written = "model.resume.pt" if die_at <= EPOCHS else "model.pt"
    partial = [name for name in os.listdir(out.parent) if name.startswith(".partial-")]
    assert len(partial) == 1 and partial[0].endswith("-" + half_written), os.listdir(out.parent)
    assert not out.exists()
    saved = load_checkpoint(out.with_name("model.resume.pt"), kinds=("resume",))
    assert saved["train_state"]["epoch"] == die_at - 1 and saved["train_state"]["global_step"] == (die_at - 1) * STEPS
    assert saved["optimizer"]["state"], "the optimizer state must be saved (and restored) too"
    resume_after_crash(stage, data, out)
    assert_same_as_reference(out, reference[stage])
