"""One guard (issue 18): no command writes onto one of its inputs, by name, through a symbolic link, or as a
hard link; refused before any work (no training starts), the input left as it was."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from maclcore.cli.main import main
from maclcore.data.phantom import write_phantom_dataset
from maclcore.errors import InputError
from maclcore.io.guard import refuse_overwriting_inputs
from reliability_fixtures import save_tiny_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    write_phantom_dataset(str(root), 2, seed=5)
    save_tiny_model(root / "m.pt")
    (root / "schema.json").write_text('{"names": ["A", "B", "C"], "colors": [[1,0,0],[0,1,0],[0,0,1]]}')
    return root


def _run(argv, capfd):
    started = time.monotonic()
    code = main([str(a) for a in argv] + (["--progress", "none"]))
    out, err = capfd.readouterr()
    return code, err, time.monotonic() - started


def _link(kind: str, source: Path, link: Path) -> Path:
    if link.exists() or link.is_symlink():
        link.unlink()
    (os.link if kind == "hard" else os.symlink)(source, link)
    return link


CASES = {
    # name: (argv builder, the input that would be overwritten, flag of the output, flag of the input)
    "predict-onto-image": (lambda d, t: ["predict", "--model", d / "m.pt", "--image",
                                         d / "imagesTr" / "phantom_000_0000.nii.gz", "--out", t], "imagesTr/phantom_000_0000.nii.gz", "--out", "--images"),
    "predict-onto-model": (lambda d, t: ["predict", "--model", t, "--image", d / "imagesTr" / "phantom_000_0000.nii.gz",
                                         "--out", d / "m.nii.gz"], None, "--out", "--model"),
    "evaluate-json-onto-label": (lambda d, t: ["evaluate", "--pred", d / "imagesTr", "--labels", d / "labelsTr",
                                               "--json", t], "labelsTr/phantom_001.nii.gz", "--json", "--labels"),
    "evaluate-json-onto-schema": (lambda d, t: ["evaluate", "--pred", d / "labelsTr", "--labels", d / "labelsTr",
                                                "--labels-schema", d / "schema.json", "--json", t], "schema.json",
                                  "--json", "--labels-schema"),
    "suggest-json-onto-image": (lambda d, t: ["suggest", "--model", d / "m.pt", "--images", d / "imagesTr",
                                              "--json", t], "imagesTr/phantom_001_0000.nii.gz", "--json", "--images"),
    "suggest-json-onto-model": (lambda d, t: ["suggest", "--model", d / "m.pt", "--images", d / "imagesTr",
                                              "--json", t], "m.pt", "--json", "--model"),
    "finetune-out-onto-label": (lambda d, t: ["finetune", "--images", d / "imagesTr", "--labels", d / "labelsTr",
                                              "--out", t, "--epochs", "50"], "labelsTr/phantom_000.nii.gz",
                                "--out", "--labels"),
    "finetune-out-onto-image": (lambda d, t: ["finetune", "--images", d / "imagesTr", "--labels", d / "labelsTr",
                                              "--out", t, "--epochs", "50"], "imagesTr/phantom_001_0000.nii.gz",
                                "--out", "--images"),
    "finetune-out-onto-init": (lambda d, t: ["finetune", "--images", d / "imagesTr", "--labels", d / "labelsTr",
                                             "--init", d / "m.pt", "--out", t, "--epochs", "50"], "m.pt",
                               "--out", "--init"),
    "finetune-out-onto-schema": (lambda d, t: ["finetune", "--images", d / "imagesTr", "--labels", d / "labelsTr",
                                               "--labels-schema", d / "schema.json", "--out", t, "--epochs", "50"],
                                 "schema.json", "--out", "--labels-schema"),
    "pretrain-out-onto-image": (lambda d, t: ["pretrain", "--images", d / "imagesTr", "--out", t, "--epochs", "50"],
                                "imagesTr/phantom_000_0000.nii.gz", "--out", "--images"),
}


@pytest.mark.parametrize("via", ["same-name", "symlink", "hardlink"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_no_command_writes_onto_its_inputs(data, tmp_path, capfd, case, via):
    build, victim_name, out_flag, in_flag = CASES[case]
    if victim_name is None:  # the model given as --model is the output: only by name makes sense here
        if via != "same-name":
            pytest.skip("covered by the other cases")
        victim = data / "m.nii.gz"
        victim.write_bytes(b"not a model")
        argv = build(data, victim)
        argv[argv.index("--model") + 1] = victim
    else:
        victim = data / victim_name
        target = {"same-name": victim, "symlink": tmp_path / ("link" + "".join(victim.suffixes)),
                  "hardlink": tmp_path / ("hard" + "".join(victim.suffixes))}[via]
        if via != "same-name":
            _link("hard" if via == "hardlink" else "sym", victim, target)
        argv = build(data, target)
    before = victim.read_bytes()
    code, err, seconds = _run(argv, capfd)
    assert code == 1, err
    assert "would overwrite it" in err, err
    assert str(victim) in err or str(victim.parent) in err
    assert out_flag in err and in_flag in err, err
    assert victim.read_bytes() == before
    assert seconds < 30  # refused before training or prediction began


def test_a_new_file_in_an_input_folder_is_allowed(data, tmp_path):
    """Writing beside the inputs is not writing onto them."""
    refuse_overwriting_inputs([("output", data / "imagesTr" / "new.nii.gz")], [("images", data / "imagesTr")])
    refuse_overwriting_inputs([("json_path", None)], [("images", data / "imagesTr")])


def test_the_guard_names_both_files(data):
    victim = data / "labelsTr" / "phantom_000.nii.gz"
    with pytest.raises(InputError) as info:
        refuse_overwriting_inputs([("output", victim)], [("images", data / "imagesTr"), ("labels", data / "labelsTr")])
    assert info.value.path == str(victim)
    assert str(data / "labelsTr") in str(info.value) and "{labels}" in info.value.template


def test_resume_state_of_the_output_is_guarded_too(data, tmp_path, capfd):
    """finetune also writes OUT.resume.pt: it must not be an input either."""
    model = tmp_path / "x.pt"
    resume_victim = tmp_path / "x.resume.pt"
    resume_victim.write_bytes(b"an input that happens to have this name")
    before = resume_victim.read_bytes()
    code, err, _ = _run(["finetune", "--images", data / "imagesTr", "--labels", data / "labelsTr", "--init",
                         resume_victim, "--out", model, "--epochs", "50"], capfd)
    assert code == 1 and "would overwrite it" in err and resume_victim.read_bytes() == before
