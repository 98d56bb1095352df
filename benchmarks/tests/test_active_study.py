"""The simulated-annotator study, tiny: phantoms as patients, two rounds per strategy, one seed; then resumed."""

import json
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from maclcore.data.phantom import write_phantom_dataset  # noqa: E402

TINY = {"name": "tiny_active", "eval_patients": ["phantom_005"], "start_patients": 1, "rounds": 2, "seeds": [0],
        "strategies": ["suggest", "random"], "spacing": 6.0, "channels": [4, 8, 8, 16, 16],
        "initial": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4},
        "round": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4, "lr": 2e-4},
        "suggest": {"rotations": 1}}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(tmp_path, config):
    import active_study

    path = tmp_path / f"{config['name']}.json"
    path.write_text(json.dumps(config))
    report = tmp_path / "report"
    assert active_study.main([str(path), "--work", str(tmp_path / "work"), "--device", "cpu",
                              "--report", str(report)]) == 0
    return json.loads((report / "results.json").read_text()), report


def test_rounds_add_one_new_patient_each_and_resume(tmp_path, one_thread):
    data = tmp_path / "data"
    write_phantom_dataset(str(data), 6, seed=3)
    config = dict(TINY, data=str(data))
    results, report = run(tmp_path, config)

    assert [(r["strategy"], r["round"]) for r in results] == [("start", 0), ("suggest", 1), ("suggest", 2),
                                                              ("random", 1), ("random", 2)]
    start = results[0]["patients"]
    assert len(start) == 1 and results[0]["annotated"] == 1
    for strategy in ("suggest", "random"):
        previous = start
        for result in (r for r in results if r["strategy"] == strategy):
            (added,) = result["added"]
            assert added not in previous and added != "phantom_005"  # never an evaluation patient
            assert result["patients"] == previous + [added] and result["annotated"] == len(previous) + 1
            assert set(result["cases"]) == {"phantom_005"} and 0 <= result["mean_dice"] <= 1
            assert {"choose", "finetune", "evaluate"} <= set(result["seconds"])
            if strategy == "suggest":
                assert result["ranking"][0]["case"] == added  # the first-ranked volume's patient
            previous = result["patients"]
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "patients to reach Dice 0.80" in text and "patients to reach Dice 0.85" in text
    assert "| Random |" in text and "Time per round" in text
    assert (report / "dice_vs_annotated.png").stat().st_size > 1000

    # Resuming: finished rounds are read back, not redone; a longer study only adds rounds.
    first_round = tmp_path / "work" / "seed0" / "suggest" / "round01" / "result.json"
    written = first_round.stat().st_mtime_ns
    longer, _ = run(tmp_path, dict(config, rounds=3))
    assert first_round.stat().st_mtime_ns == written
    assert [r for r in longer if r["round"] <= 2] == results
    assert sorted(r["strategy"] for r in longer if r["round"] == 3) == ["random", "suggest"]
