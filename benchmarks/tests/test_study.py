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
    # Two worker processes share the cells through claim files; every cell is done exactly once.
    assert study.main([str(tmp_path / "tiny.json"), "--work", str(tmp_path / "work"), "--device", "cpu",
                       "--report", str(report), "--jobs", "2"]) == 0
    results = json.loads((report / "results.json").read_text())
    assert sorted((r["arm"], r["M"], r["draw"]) for r in results) == [("macl", 1, 0), ("random", 1, 0)]
    for result in results:
        assert set(result["cases"]) == {"patient004_ED", "patient004_ES"}  # evaluation patients only
        assert 4 not in result["patients"]
    text = (report / "report.md").read_text()
    assert "| Random init |" in text and "| MACL (full MLC loss) |" in text and "M = 1" in text
    assert (report / "dice_vs_m.png").exists() and (report / "per_case.csv").exists()
    assert "Incomplete" not in text
    assert not list((tmp_path / "work").rglob("*.lock"))  # claims and trainer locks are all released
    # Done cells are reused: a second run redoes nothing and gives the same numbers.
    assert study.main([str(tmp_path / "tiny.json"), "--work", str(tmp_path / "work"), "--device", "cpu",
                       "--report", str(report)]) == 0
    assert json.loads((report / "results.json").read_text()) == results


def test_a_study_with_unlabelled_volumes_self_trains_on_other_pool_patients(tmp_path):
    import torch

    import study

    data = tmp_path / "data"
    write_acdc_like(str(data), [1, 2, 3, 4])
    config = {"name": "tiny", "data": str(data), "eval_patients": [4], "labelled_counts": [1], "draws": 1, "seed": 0,
              "arms": ["random"], "spacing": 6.0, "channels": [4, 8, 8, 16, 16], "unlabelled": 1, "pretrain": {},
              "finetune": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 4, "delete_models": False}}
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    assert study.main([str(tmp_path / "tiny.json"), "--work", str(tmp_path / "work"), "--device", "cpu",
                       "--report", str(tmp_path / "report")]) == 0
    result = json.loads((tmp_path / "report" / "results.json").read_text())[0]
    others = result["unlabelled_patients"]
    assert len(others) == 1 and not set(others) & ({4} | set(result["patients"]))
    model = torch.load(tmp_path / "work" / "runs" / "random" / "M1_draw0" / "model.pt", weights_only=True)
    assert sorted(model["training"]["unlabelled_cases"]) == [f"patient{others[0]:03d}_{f}" for f in ("ED", "ES")]
    assert "self-trains on the images of 1 other pool patients" in (tmp_path / "report" / "report.md").read_text()
    with pytest.raises(SystemExit, match="fewer than M = 2"):  # the labelled draws need patients left
        study.unlabelled_patients([1, 2, 3], 0, 2, 2)


def test_a_claimed_unit_is_left_to_its_worker_and_a_dead_workers_claim_is_taken_over(tmp_path):
    import subprocess

    import study

    output = str(tmp_path / "runs" / "macl" / "M1_draw0" / "result.json")
    os.makedirs(os.path.dirname(output))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with open(output + ".claim.lock", "w") as handle:
            handle.write(str(live.pid))
        assert study._claim(output) is None
    finally:
        live.kill()
        live.wait()
    claim = study._claim(output)  # its owner is gone: the claim is stale
    assert claim is not None
    with open(output + ".claim.lock") as handle:
        assert handle.read() == str(os.getpid())
    claim.release()
    assert not os.path.exists(output + ".claim.lock")


def test_report_of_a_partial_study_lists_the_missing_cells(tmp_path):
    from study_report import missing_cells

    config = {"arms": ["random", "macl"], "labelled_counts": [1, 2], "draws": 2}
    results = [{"arm": "random", "M": 1, "draw": 0}, {"arm": "macl", "M": 1, "draw": 0},
               {"arm": "macl", "M": 2, "draw": 1}]
    assert missing_cells(config, results) == ["random M=1 draw 1", "macl M=1 draw 1", "random M=2 draw 0",
                                              "macl M=2 draw 0", "random M=2 draw 1"]
    assert missing_cells(config, results + [{"arm": a, "M": m, "draw": d} for a, m, d in
                                            [("random", 1, 1), ("macl", 1, 1), ("random", 2, 0), ("macl", 2, 0),
                                             ("random", 2, 1)]]) == []


@pytest.mark.slow
def test_killing_the_study_stops_its_workers(tmp_path):
    """Workers must not outlive a killed study (they would go on claiming units beside its next run)."""
    import signal
    import subprocess
    import time

    data = tmp_path / "data"
    write_acdc_like(str(data), [1, 2, 3])
    config = {"name": "tiny", "data": str(data), "eval_patients": [3], "labelled_counts": [1, 2], "draws": 2,
              "seed": 0, "arms": ["random"], "spacing": 6.0, "channels": [4, 8, 8, 16, 16],
              "pretrain": {"epochs": 1, "batch_size": 4},
              "finetune": {"epochs": 500, "steps_per_epoch": 2, "batch_size": 4}}
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    study = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(HERE), "study.py"),
                              str(tmp_path / "tiny.json"), "--work", str(tmp_path / "work"), "--device", "cpu",
                              "--jobs", "2"])
    try:
        deadline = time.time() + 120
        claims = []
        while len(claims) < 2 and time.time() < deadline:
            time.sleep(0.5)
            claims = list((tmp_path / "work").rglob("*.claim.lock"))
        workers = {int(c.read_text()) for c in claims}
        assert len(workers) == 2, "both workers should have claimed a unit"
    finally:
        study.send_signal(signal.SIGKILL)
        study.wait()

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.time() + 30
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(alive(pid) for pid in workers)
