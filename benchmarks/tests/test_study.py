"""The label-efficiency study's machinery, tiny: phantoms in ACDC's layout, two arms, one M, one draw."""

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from maclcore.data.phantom import make_phantom  # noqa: E402
from maclcore.io.volume import write_volume  # noqa: E402


def write_acdc_like(folder, patients):
    """Phantoms named like ACDC (patientNNN_{ED,ES}), so the study runs on 'any folder in the same layout'."""
    for patient in patients:
        for offset, frame in enumerate(("ED", "ES")):
            phantom = make_phantom(100 * patient + offset)
            case = f"patient{patient:03d}_{frame}"
            write_volume(phantom.image, phantom.geometry, os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
            write_volume(phantom.labels, phantom.geometry, os.path.join(folder, "labelsTr", f"{case}.nii.gz"))


def test_draws_are_nested_fixed_and_never_touch_evaluation_patients():
    import study

    drawn = study.draws([3, 4, 5, 6, 7, 8], [1, 2, 4], count=3, seed=0)
    assert drawn == study.draws([3, 4, 5, 6, 7, 8], [1, 2, 4], count=3, seed=0)
    for d in range(3):
        assert set(drawn[1][d]) <= set(drawn[2][d]) <= set(drawn[4][d])
    assert len({tuple(drawn[2][d]) for d in range(3)}) > 1


@pytest.mark.slow
def test_tiny_study_runs_and_writes_its_report(tmp_path):
    import study

    data = tmp_path / "data"
    write_acdc_like(str(data), [1, 2, 3, 4])
    config = {"name": "tiny", "data": str(data), "eval_patients": [4], "labelled_counts": [1], "draws": 1, "seed": 0,
              "arms": ["random", "macl"], "spacing": 6.0, "channels": [4, 8, 8, 16, 16],
              "pretrain": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4},
              "finetune": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4}}
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    report = tmp_path / "report"
    assert study.main([str(tmp_path / "tiny.json"), "--work", str(tmp_path / "work"), "--device", "cpu",
                       "--report", str(report)]) == 0
    results = json.loads((report / "results.json").read_text())
    assert sorted((r["arm"], r["M"], r["draw"]) for r in results) == [("macl", 1, 0), ("random", 1, 0)]
    for result in results:
        assert set(result["cases"]) == {"patient004_ED", "patient004_ES"}  # evaluation patients only
        assert 4 not in result["patients"]
    text = (report / "report.md").read_text()
    assert "| Random init |" in text and "| MACL (full MLC loss) |" in text and "M = 1" in text
    assert (report / "dice_vs_m.png").exists() and (report / "per_case.csv").exists()
    # Done cells are reused: a second run redoes nothing and gives the same numbers.
    assert study.main([str(tmp_path / "tiny.json"), "--work", str(tmp_path / "work"), "--device", "cpu",
                       "--report", str(report)]) == 0
    assert json.loads((report / "results.json").read_text()) == results
