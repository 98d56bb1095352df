"""Out of memory, simulated on the CPU: inference retries with smaller slice batches and gives the same result;
training stops with one line naming the setting to lower, keeping the last resume state."""

import pytest
import torch

from maclcore.data.dataset import SliceData
from maclcore.errors import MaclError
from maclcore.runtime.device import map_in_batches
from maclcore.models.unet import UNet
from maclcore.io.checkpoint import load_checkpoint
from maclcore.training.finetune import FinetuneTask
from maclcore.training.pretrain import PretrainTask
from maclcore.runtime.device import is_out_of_memory
from reliability_utils import (TINY_NET, array_of, assert_one_line_error, leftovers, one_thread,  # noqa: F401
                               run_cli, write_cases)

pytestmark = pytest.mark.usefixtures("one_thread")

OUT_OF_MEMORY = [
    lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total)"),
    lambda: RuntimeError("CUDA out of memory. Tried to allocate 512.00 MiB"),
    lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                         "to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)"),
]


@pytest.mark.parametrize("make_error", OUT_OF_MEMORY)
def test_map_in_batches_halves_the_batch_until_it_fits(make_error):
    assert is_out_of_memory(make_error())
    calls, retries = [], []

    def square(start, stop):
        calls.append(stop - start)
        if stop - start > 3:
            raise make_error()
        return [i * i for i in range(start, stop)]

    batches = map_in_batches(square, 21, 16, on_retry=retries.append)
    assert [x for batch in batches for x in batch] == [i * i for i in range(21)]
    assert retries == [8, 4, 2] and max(calls[3:]) == 2


def test_map_in_batches_passes_other_errors_on_and_gives_up_at_one_slice():
    def broken(start, stop):
        raise RuntimeError("Expected 4D input")

    with pytest.raises(RuntimeError, match="Expected 4D input"):
        map_in_batches(broken, 5, 4)

    def never_fits(start, stop):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(MaclError, match="even with one slice per batch"):
        map_in_batches(never_fits, 5, 4)
    with pytest.raises(ValueError, match="batch_size"):
        map_in_batches(lambda a, b: None, 5, 0)


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    from maclcore.cli.main import main

    root = tmp_path_factory.mktemp("oom")
    data = write_cases(root / "data", 2, seed=6, slices=5)
    argv = ["finetune", "--images", data / "imagesTr", "--labels", data / "labelsTr", "--out", root / "model.pt",
            "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2"] + TINY_NET
    assert main([str(a) for a in argv]) == 0
    return root


def forward_with_memory_limit(monkeypatch, limit, error=OUT_OF_MEMORY[0]):
    """UNet.forward raises out-of-memory for batches larger than ``limit``; returns the batch sizes it saw."""
    real_forward, seen = UNet.forward, []

    def forward(self, x):
        seen.append(x.shape[0])
        if x.shape[0] > limit:
            raise error()
        return real_forward(self, x)

    monkeypatch.setattr(UNet, "forward", forward)
    return seen


def test_prediction_under_memory_pressure_equals_the_normal_result(world, tmp_path, capfd, monkeypatch):
    images = world / "data" / "imagesTr"
    argv = ["predict", "--model", world / "model.pt", "--image", images, "--batch-size", "16"] + TINY_NET[4:]
    code, _, err = run_cli(argv + ["--out", tmp_path / "normal"], capfd)
    assert code == 0, err
    seen = forward_with_memory_limit(monkeypatch, limit=2)
    code, _, err = run_cli(argv + ["--out", tmp_path / "squeezed"], capfd)
    assert code == 0, err
    assert max(seen) == 5 and min(seen) < 3, seen  # a whole 5-slice volume first, then halves that fit
    for name in sorted(p.name for p in (tmp_path / "normal").iterdir()):
        assert (array_of(tmp_path / "normal" / name) == array_of(tmp_path / "squeezed" / name)).all()


def test_prediction_that_never_fits_says_what_to_do(world, tmp_path, capfd, monkeypatch):
    forward_with_memory_limit(monkeypatch, limit=0)
    code, out, err = run_cli(["predict", "--model", world / "model.pt", "--image", world / "data" / "imagesTr",
                              "--out", tmp_path / "out"] + TINY_NET[4:], capfd)
    line = assert_one_line_error(code, out, err, [], "out of memory even with one slice per batch")
    assert "GPU" not in line and "--device" not in line, line  # the run is on the CPU already
    assert "close other programs to free memory" in line
    assert leftovers(tmp_path / "out") == []


def test_out_of_memory_advice_fits_the_device():
    from maclcore.runtime.device import out_of_memory_advice

    assert "{device} cpu" in out_of_memory_advice(torch.device("cuda", 0))  # the CLI renders it as --device
    assert "GPU" not in out_of_memory_advice(torch.device("cpu")) and "cpu" not in out_of_memory_advice(None)


def train_argv(stage, world, out):
    inputs = ["--images", world / "data" / "imagesTr"]
    if stage == "finetune":
        inputs += ["--labels", world / "data" / "labelsTr"]
    return ([stage] + inputs + ["--out", out, "--epochs", "3", "--steps-per-epoch", "2", "--batch-size", "2",
                                "--checkpoint-every", "1", "--seed", "1"] + TINY_NET)


@pytest.mark.parametrize("stage, advice", [("finetune", "smaller --batch-size"),
                                           ("pretrain", "smaller --batch-size or --size")])
def test_training_out_of_memory_names_the_setting_and_keeps_the_state(world, tmp_path, capfd, monkeypatch,
                                                                      stage, advice):
    """Out of memory in step 4 (epoch 2): one line naming --batch-size, exit 1, epoch 1's state intact;
    --resume (with the memory back) then finishes exactly like an uninterrupted run."""
    reference = tmp_path / "reference.pt"
    code, _, err = run_cli(train_argv(stage, world, reference), capfd)
    assert code == 0, err
    task = FinetuneTask if stage == "finetune" else PretrainTask
    real_loss, calls = task.loss, []

    def loss(self, *args):
        calls.append(args)
        if len(calls) == 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")
        return real_loss(self, *args)

    monkeypatch.setattr(task, "loss", loss)
    out = tmp_path / "run" / "model.pt"
    code, stdout, err = run_cli(train_argv(stage, world, out), capfd)
    line = assert_one_line_error(code, stdout, err, ["--batch-size 2", "step 4"], advice)
    assert "ran out of memory" in line
    assert leftovers(out.parent) == ["model.resume.pt"], "no model, lock or temp file; the state stays"
    saved = load_checkpoint(out.with_name("model.resume.pt"), kinds=("resume",))
    assert saved["train_state"]["epoch"] == 1 and saved["train_state"]["global_step"] == 2
    monkeypatch.setattr(task, "loss", real_loss)
    code, _, err = run_cli(train_argv(stage, world, out) + ["--resume"], capfd)
    assert code == 0, err
    done, expected = load_checkpoint(out)["state_dict"], load_checkpoint(reference)["state_dict"]
    assert all(torch.equal(done[k], expected[k]) for k in expected)


def test_out_of_memory_outside_a_step_is_one_line_too(world, tmp_path, capfd, monkeypatch):
    """E.g. moving all slices to the GPU: the generic advice, no traceback."""
    def no_room(self, device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")

    monkeypatch.setattr(SliceData, "to", no_room)
    code, out, err = run_cli(train_argv("pretrain", world, tmp_path / "model.pt"), capfd)
    assert_one_line_error(code, out, err, ["--batch-size"], "out of memory")
    assert leftovers(tmp_path) == []
