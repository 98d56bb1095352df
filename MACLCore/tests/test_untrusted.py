"""Model files shared between sites are untrusted: loading one never runs code from it (weights-only
unpickling; the configuration is plain data), and crafted, foreign, truncated or mismatched files are refused
with one line, as ``--model`` of predict and ``--init`` of finetune."""

import io
import os
import pickle
import zipfile

import pytest
import torch

from maclcore.errors import InputError
from maclcore.io.checkpoint import load_checkpoint, save_checkpoint
from reliability_utils import (TINY_NET, TINY_TRAIN, assert_one_line_error, leftovers, one_thread,  # noqa: F401
                               run_child, run_cli, write_cases)

pytestmark = pytest.mark.usefixtures("one_thread")


class LeavesAMark:
    """Unpickling this calls ``open(marker, "w")``: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    from maclcore.cli.main import main

    root = tmp_path_factory.mktemp("untrusted")
    data = write_cases(root / "data", 2, seed=2)
    for stage, out in (("finetune", "model.pt"), ("pretrain", "pretrained.pt")):
        inputs = ["--images", data / "imagesTr"] + (["--labels", data / "labelsTr"] if stage == "finetune" else [])
        assert main([str(a) for a in [stage] + inputs + ["--out", root / out] + TINY_TRAIN]) == 0
    return root


def crafted_files(world, folder):
    """(name, path) of files that would run code if unpickled: raw pickle, torch.save zip and legacy formats,
    and a real model file with one object slipped into its plain data."""
    marker = folder / "code-ran"
    evil = LeavesAMark(marker)
    files = {"raw-pickle.pt": pickle.dumps(evil, protocol=2), "pickle-protocol-4.pt": pickle.dumps(evil, protocol=4)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    torch.save(evil, folder / "torch-zip.pt")
    torch.save({"format": "maclcore", "payload": evil}, folder / "torch-legacy.pt",
               _use_new_zipfile_serialization=False)
    model = torch.load(world / "model.pt", weights_only=True)
    model["training"]["notes"] = evil
    torch.save(model, folder / "real-model-plus-object.pt")
    return marker, sorted(folder.glob("*.pt"))


def test_crafted_pickles_are_refused_and_run_nothing(world, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # cannot weaken an explicit weights_only=True
    marker, files = crafted_files(world, tmp_path)
    assert len(files) == 5
    image = world / "data" / "imagesTr" / "case_000_0000.nii.gz"
    for path in files:
        with pytest.raises(InputError, match="would run code when loaded"):
            load_checkpoint(path)
        code, out, err = run_cli(["predict", "--model", path, "--image", image, "--out", tmp_path / "out"]
                                 + TINY_NET[4:], capfd)
        assert_one_line_error(code, out, err, [path], "would run code when loaded")
        code, out, err = run_cli(["finetune", "--images", world / "data" / "imagesTr", "--labels",
                                  world / "data" / "labelsTr", "--init", path, "--out", tmp_path / "out" / "m.pt"]
                                 + TINY_TRAIN, capfd)
        assert_one_line_error(code, out, err, [path], "would run code when loaded")
    assert not marker.exists(), "code from a model file ran"
    assert leftovers(tmp_path / "out") == []


def test_crafted_pickle_in_a_real_process_gives_one_line(world, tmp_path):
    """Outside pytest too (warnings printed, not captured): one line on stderr, exit 1, nothing ran."""
    marker, files = crafted_files(world, tmp_path)
    result = run_child(["predict", "--model", tmp_path / "pickle-protocol-4.pt", "--image",
                        world / "data" / "imagesTr", "--out", tmp_path / "out"] + TINY_NET[4:])
    assert_one_line_error(result.returncode, result.stdout, result.stderr, [tmp_path / "pickle-protocol-4.pt"],
                          "would run code when loaded")
    assert not marker.exists()


def test_model_files_hold_only_plain_data(world):
    """What makes the safe loader enough: tensors, numbers, strings, lists and dicts, nothing else."""
    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (torch.Tensor, bool, int, float, str))

    for name in ("model.pt", "pretrained.pt"):
        data = torch.load(world / name, weights_only=True)
        assert plain(data)
        assert data["format"] == "maclcore" and isinstance(data["model"], dict)
        with zipfile.ZipFile(world / name) as archive:  # the pickle names no class outside torch's own
            pickled = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            globals_used = {g for g in _pickle_globals(archive.read(pickled))}
        assert all(g.startswith(("torch.", "collections.OrderedDict")) for g in globals_used), globals_used


def _pickle_globals(data):
    import pickletools

    names, strings = [], []
    for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
        if isinstance(arg, str):
            strings.append(arg)
        if opcode.name == "GLOBAL":
            names.append(arg.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":
            names.append(".".join(strings[-2:]))
    return names


def _broken_files(world, folder):
    model = world / "model.pt"
    cases = {
        "truncated": (model.read_bytes()[: os.path.getsize(model) // 2], "truncated"),
        "truncated-tiny": (model.read_bytes()[:100], "truncated"),
        "plain-tensor": (torch.zeros(3), "not a MACLCore model file"),
        "foreign-state-dict": ({"conv.weight": torch.zeros(2, 1, 3, 3)}, "not a MACLCore model file"),
        "marker-but-empty": ({"format": "maclcore", "format_version": 1, "kind": "segmentation"}, "incomplete"),
        "pretrained-as-model": (None, "is a pretrained encoder (from maclcore pretrain), but a segmentation model"),
        "resume-state-as-model": ({"format": "maclcore", "format_version": 1, "kind": "resume"},
                                  "training state for --resume, but a segmentation model"),
        "head-for-other-classes": ("head", "inconsistent"),
    }
    paths = {}
    for name, (content, problem) in cases.items():
        path = folder / f"{name}.pt"
        if content is None:
            path = world / "pretrained.pt"
        elif content == "head":
            data = torch.load(model, weights_only=True)
            data["state_dict"] = {k: (v[:2] if k.startswith("head.") else v) for k, v in data["state_dict"].items()}
            torch.save(data, path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        paths[name] = (path, problem)
    return paths


@pytest.mark.parametrize("kind", ["truncated", "truncated-tiny", "plain-tensor", "foreign-state-dict",
                                  "marker-but-empty", "pretrained-as-model", "resume-state-as-model",
                                  "head-for-other-classes"])
def test_broken_and_mismatched_model_files_are_refused(world, tmp_path, capfd, kind):
    path, problem = _broken_files(world, tmp_path)[kind]
    code, out, err = run_cli(["predict", "--model", path, "--image", world / "data" / "imagesTr",
                              "--out", tmp_path / "out"] + TINY_NET[4:], capfd)
    assert_one_line_error(code, out, err, [path], problem)
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("kind", ["truncated", "plain-tensor", "foreign-state-dict", "marker-but-empty"])
def test_broken_init_files_are_refused(world, tmp_path, capfd, kind):
    path, problem = _broken_files(world, tmp_path)[kind]
    code, out, err = run_cli(["finetune", "--images", world / "data" / "imagesTr", "--labels",
                              world / "data" / "labelsTr", "--init", path, "--out", tmp_path / "out" / "m.pt"]
                             + TINY_TRAIN, capfd)
    assert_one_line_error(code, out, err, [path], problem)
    assert leftovers(tmp_path / "out") == []


def test_a_model_file_is_not_a_resume_state(world, tmp_path, capfd):
    """A model copied over OUT.resume.pt is refused by --resume, and left as it was."""
    out = tmp_path / "m.pt"
    state = tmp_path / "m.resume.pt"
    state.write_bytes((world / "model.pt").read_bytes())
    code, stdout, err = run_cli(["finetune", "--images", world / "data" / "imagesTr", "--labels",
                                 world / "data" / "labelsTr", "--out", out, "--resume"] + TINY_TRAIN, capfd)
    assert_one_line_error(code, stdout, err, [state], "a training state for --resume is needed")
    assert state.read_bytes() == (world / "model.pt").read_bytes()
    assert leftovers(tmp_path) == ["m.resume.pt"]


def test_checkpoints_refuse_to_store_objects(tmp_path):
    """The writer keeps the promise: an object that would need code to load cannot get into a file."""
    with pytest.raises(TypeError, match="cannot be stored in a weights-only checkpoint"):
        save_checkpoint(tmp_path / "x.pt", "segmentation", {"notes": LeavesAMark(tmp_path / "m")})
    assert leftovers(tmp_path) == []
