"""With a fixed seed two CPU runs give the same weights bit for bit; another seed gives other weights; the
seed is recorded in every model file, resume state and report."""

import json

import pytest
import torch

from maclcore.io.checkpoint import load_checkpoint
from maclcore.runtime.control import StopRequest
from reliability_utils import TINY_NET, leftovers, one_thread, run_cli, write_cases  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_cases(tmp_path_factory.mktemp("determinism") / "data", 2, seed=9)


def train(stage, data, out, seed, capfd):
    inputs = ["--images", data / "imagesTr"] + (["--labels", data / "labelsTr"] if stage == "finetune" else [])
    loop = ["--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2", "--seed", str(seed)]
    code, _, err = run_cli([stage] + inputs + ["--out", out] + loop + TINY_NET, capfd)
    assert code == 0, err
    return load_checkpoint(out)


@pytest.mark.parametrize("stage, info", [("finetune", "training"), ("pretrain", "pretraining")])
def test_same_seed_same_weights_other_seed_other_weights(data, tmp_path, capfd, stage, info):
    first = train(stage, data, tmp_path / "a.pt", 5, capfd)
    second = train(stage, data, tmp_path / "b.pt", 5, capfd)
    other = train(stage, data, tmp_path / "c.pt", 6, capfd)
    assert first["state_dict"].keys() == second["state_dict"].keys()
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, second["state_dict"][name]), f"{name}: two runs with seed 5 differ"
    assert [e["loss"] for e in first[info]["history"]] == [e["loss"] for e in second[info]["history"]]
    assert any(not torch.equal(tensor, other["state_dict"][name]) for name, tensor in first["state_dict"].items()
               if tensor.is_floating_point()), "another seed must give other weights"
    assert (first[info]["seed"], other[info]["seed"]) == (5, 6)
    assert first[info]["config"]["loop"]["seed"] == 5


def test_seed_is_in_the_resume_state(data, tmp_path, capfd, monkeypatch):
    """A run stopped mid-run (at its 6th stop check: after loading and a few steps) saves its seed."""
    checks = []
    monkeypatch.setattr(StopRequest, "requested", property(lambda self: checks.append(1) or len(checks) > 5))
    code, _, err = run_cli(["finetune", "--images", data / "imagesTr", "--labels", data / "labelsTr", "--out",
                            tmp_path / "m.pt", "--epochs", "3", "--batch-size", "2", "--seed", "11"] + TINY_NET, capfd)
    assert code == 130, err
    state = load_checkpoint(tmp_path / "m.resume.pt", kinds=("resume",))
    assert state["train_state"]["global_step"] > 0
    assert state["config"]["loop"]["seed"] == 11


@pytest.mark.slow
def test_demo_is_reproducible_and_reports_its_seed(tmp_path, capfd):
    reports = []
    for run in ("first", "second"):
        code, _, err = run_cli(["demo", "--quick", "--out", tmp_path / run, "--seed", "5", "--device", "cpu",
                                "--progress", "none"], capfd)
        assert code == 0, err
        reports.append(json.loads((tmp_path / run / "report.json").read_text()))
        for arm in reports[-1]["arms"].values():
            assert load_checkpoint(arm["model"])["training"]["seed"] == 5
        assert load_checkpoint(tmp_path / run / "pretrained.pt")["pretraining"]["seed"] == 5
    assert reports[0]["config"]["seed"] == reports[1]["config"]["seed"] == 5
    assert reports[0]["mean_dice"] == reports[1]["mean_dice"]
    assert not [p for p in leftovers(tmp_path) if ".partial-" in p or p.endswith(".lock")]
