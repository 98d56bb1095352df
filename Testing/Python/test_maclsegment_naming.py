"""The module names cases and model files by MACLCore's rules (``maclcore.io.naming``), not by copies of them:
its answers equal the engine's for many inputs, long names included, and the Lib holds no pattern of its own."""

import ast
import os
import pathlib

import pytest

pytest.importorskip("maclcore", reason="MACLCore is not installed")

from maclcore.inference.predict import output_paths  # noqa: E402
from maclcore.io.naming import (SEG_EXTENSION, case_name, next_model_path, resume_path,  # noqa: E402
                                safe_case_name)
from maclcore.io.pairing import pair_cases  # noqa: E402

from MACLSegmentLib.humanloop import caseName, nextModelPath  # noqa: E402

LIB = pathlib.Path(__file__).resolve().parents[2] / "MACLSegment" / "MACLSegmentLib"
NODE_NAMES = ["patient001 ED", "patient001_ED", "scan_0001", "scan_0001_0000", "a/b", "a.b", "***", "", "é ü",
              "case.seg", "x" * 200, "frame-0002", "MR_12345", "p1_0000"]
MODEL_FILES = ["model.pt", "model-002.pt", "model-0099.pt", "a.b.pt", "noext", "m-01.pt", "x" * 250 + ".pt"]


@pytest.mark.parametrize("taken", [[], ["patient001_ED", "scan-0001", "a_b", "case"]])
def test_case_names_are_the_engines(taken):
    for name in NODE_NAMES:
        assert caseName(name, taken) == safe_case_name(name, taken), name


def test_the_files_the_module_writes_pair_under_their_case_names(tmp_path):
    """Finetuning writes NAME_0000.nrrd and NAME.nrrd per annotated volume; the engine must pair them as NAME."""
    names = []
    for node in NODE_NAMES:
        names.append(caseName(node, names))
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "images" / f"{names[-1]}_0000.nrrd").write_bytes(b"")
        (tmp_path / "labels" / f"{names[-1]}.nrrd").write_bytes(b"")
    assert [c.name for c in pair_cases(str(tmp_path / "images"), str(tmp_path / "labels"))] == sorted(names)


def test_sequence_results_are_where_the_engine_writes_them(tmp_path):
    """segmentSequence expects CASE.seg.nrrd per frame; it is what ``maclcore predict --format seg.nrrd`` writes."""
    images = [str(tmp_path / "images" / f"frame{number:04d}.nrrd") for number in range(3)]
    expected = [os.path.join(str(tmp_path / "results"), case_name(image) + SEG_EXTENSION) for image in images]
    assert output_paths(images, str(tmp_path / "results"), SEG_EXTENSION.lstrip(".")) == expected


def test_model_numbering_is_the_engines(tmp_path):
    for sibling in ("model-002.pt", "model-007.pt", "other-009.pt", "a.b-004.pt"):
        (tmp_path / sibling).write_bytes(b"")
    for name in MODEL_FILES:
        assert nextModelPath(str(tmp_path / name)) == next_model_path(str(tmp_path / name)), name


def test_resume_state_is_found_where_the_engine_leaves_it(tmp_path, monkeypatch):
    pytest.importorskip("slicer", reason="slicer-core (real Slicer MRML) is not installed")
    from MACLSegmentLib.logic import CoreLogic

    monkeypatch.chdir(tmp_path)  # a relative output is taken from the working folder, as the engine does
    for name in MODEL_FILES:
        state = resume_path(os.path.abspath(name))
        assert CoreLogic.resumeState(name) is None
        pathlib.Path(state).write_bytes(b"")
        assert CoreLogic.resumeState(name) == state and CoreLogic.resumeState(str(tmp_path / name)) == state
        CoreLogic.discardResumeState(name)
        assert not os.path.exists(state)


def _code_strings(path):
    """The string constants of a file that are not docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_lib_keeps_no_copy_of_the_naming_rules():
    for path in sorted(LIB.glob("*.py")):
        for text in _code_strings(path):
            assert ".resume" not in text, f"{path.name} spells the resume file's name: use maclcore.io.naming"
            assert "\\d{" not in text, f"{path.name} has a name pattern of its own ({text!r}): use maclcore.io.naming"
