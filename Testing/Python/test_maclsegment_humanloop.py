"""Human in the loop, headless: suggestion, correction, model update and history through the module's Logic
(the Slicer self-test runs the same body), plus the pieces that need no job: model numbering, case names,
the suggestion's options and texts."""

import os

import pytest

from MACLSegmentLib.errors import InputError
from MACLSegmentLib.humanloop import ModelVersion, Suggestion, caseName, nextModelPath
from MACLSegmentLib.options import SuggestOptions


def test_model_updates_get_the_next_free_number(tmp_path):
    current = tmp_path / "model.pt"
    assert nextModelPath(str(current)) == str(tmp_path / "model-002.pt")
    (tmp_path / "model-002.pt").write_bytes(b"")
    (tmp_path / "model-007.pt").write_bytes(b"")
    (tmp_path / "other-009.pt").write_bytes(b"")
    assert nextModelPath(str(current)) == str(tmp_path / "model-008.pt")
    assert nextModelPath(str(tmp_path / "model-002.pt")) == str(tmp_path / "model-008.pt")  # after a revert too


def test_case_names_are_file_safe_unique_and_never_a_channel_suffix():
    assert caseName("patient001 ED", []) == "patient001_ED"
    assert caseName("scan_0001", []) == "scan-0001"
    assert caseName("a/b", ["a_b"]) == "a_b-2"
    assert caseName("***", []) == "case"


def test_suggest_options_and_descriptions():
    assert SuggestOptions(device="cpu", rotations=2).arguments() == ["--device", "cpu", "--rotations", "2"]
    assert SuggestOptions().arguments() == ["--device", "auto"]
    with pytest.raises(InputError):
        SuggestOptions(rotations=3)
    text = Suggestion(rank=1, volumeNodeID="id", name="case A", uncertainty=1.5, diversity=0.25, score=0.375,
                      nearest="case B").describe()
    assert text == "1. case A: score 0.38 (uncertainty 1.50, diversity 0.25, nearest case B)"
    version = ModelVersion(generation=2, path=os.path.join("nowhere", "model-002.pt"), created="2024-05-01T10:00:00",
                           cases=("a", "b"), addedCases=("b",), valDice=None, expectedSha256=None, current=True)
    assert version.describe() == "v2 · 2024-05-01 10:00 · 2 cases (+b) · model-002.pt [current] [file missing]"


def test_suggest_correct_update_and_go_back(selfTestContext):
    from MACLSegmentLib import selftests

    results = selftests.testHumanInTheLoop(selfTestContext)
    assert len(results["history"]) == 2
