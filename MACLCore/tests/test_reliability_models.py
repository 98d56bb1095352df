"""Model-file validation and strict JSON (issue 18): a model file is checked (bounded widths, every shape,
finite weights and BatchNorm statistics) before anything is built or run; reports never hold NaN tokens."""

from __future__ import annotations

import json
import math
import time
import tracemalloc

import numpy as np
import pytest
import torch

from maclcore.cli.main import main
from maclcore.data.phantom import write_phantom_dataset
from maclcore.errors import InputError
from maclcore.evaluation.evaluate import evaluate_folders
from maclcore.inference.predict import load_segmentation_model
from maclcore.io.checkpoint import load_checkpoint, save_checkpoint
from maclcore.io.volume import read_volume, write_volume
from maclcore.labels import CARDIAC
from maclcore.training.transfer import read_init
from reliability_fixtures import TINY_CHANNELS, save_tiny_model, tiny_state


def _strict(text: str):
    return json.loads(text, parse_constant=lambda token: pytest.fail(f"non-strict JSON token {token}"))


def _model_with(tmp_path, name, change=None, model=None):
    state = tiny_state()
    if change is not None:
        change(state)
    return save_tiny_model(tmp_path / f"{name}.pt", state, model)


BROKEN = {
    "nan-weight": (lambda s: s["encoder.blocks.0.0.0.weight"].view(-1).__setitem__(0, math.nan), None,
                   "NaN or infinite"),
    "inf-weight": (lambda s: s["head.weight"].view(-1).__setitem__(3, math.inf), None, "NaN or infinite"),
    "inf-bn-variance": (lambda s: s[next(k for k in s if k.endswith("running_var"))].fill_(math.inf), None,
                        "BatchNorm statistic"),
    "nan-bn-mean": (lambda s: s[next(k for k in s if k.endswith("running_mean"))].fill_(math.nan), None,
                    "BatchNorm statistic"),
    "negative-bn-variance": (lambda s: s[next(k for k in s if k.endswith("running_var"))].fill_(-1.0), None,
                             "negative variances"),
    "missing-weight": (lambda s: s.pop("head.weight"), None, "missing head.weight"),
    "extra-weight": (lambda s: s.__setitem__("spare.weight", torch.zeros(2)), None, "unexpected spare.weight"),
    "wrong-shape": (lambda s: s.__setitem__("head.weight", torch.zeros(4, 5, 1, 1)), None, "has shape (4, 5, 1, 1)"),
    "not-a-tensor": (lambda s: s.__setitem__("head.bias", [0.0] * 4), None, "not a tensor"),
    "widths-huge": (None, {"in_channels": 1, "num_classes": 4, "channels": [4, 8, 8, 16, 1 << 20]}, "width 1048576"),
    "widths-negative": (None, {"in_channels": 1, "num_classes": 4, "channels": [4, -8, 8, 16, 16]}, "invalid widths"),
    "widths-too-many": (None, {"in_channels": 1, "num_classes": 4, "channels": [4] * 12}, "invalid widths"),
    "widths-not-ints": (None, {"in_channels": 1, "num_classes": 4, "channels": "ABCDE"}, "invalid widths"),
    "classes-huge": (None, {"in_channels": 1, "num_classes": 100000, "channels": list(TINY_CHANNELS)}, "classes"),
    "three-input-channels": (None, {"in_channels": 3, "num_classes": 4, "channels": list(TINY_CHANNELS)},
                             "input channels"),
}


SHAPE_CASES = {"missing-weight", "extra-weight", "wrong-shape"}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_model_files_are_refused_naming_the_file(tmp_path, case):
    change, model, problem = BROKEN[case]
    path = _model_with(tmp_path, case, change, model)
    loaders = [lambda: load_segmentation_model(path), lambda: read_init(path)]
    if case not in SHAPE_CASES:  # the file's own checks; shapes are checked by those who build the network
        loaders.append(lambda: load_checkpoint(path, kinds=("segmentation",)))
    for load in loaders:
        with pytest.raises(InputError) as info:
            load()
        assert info.value.path == str(path)
        assert problem in str(info.value), str(info.value)


def test_a_small_file_claiming_huge_widths_builds_nothing(tmp_path):
    """A few-KB model file describing a giant network is refused in well under a second, without allocating."""
    state = tiny_state()
    path = save_tiny_model(tmp_path / "giant.pt", state,
                           {"in_channels": 1, "num_classes": 4, "channels": [4096, 4096, 4096, 4096, 4096]})
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    started = time.monotonic()
    with pytest.raises(InputError, match="inconsistent model file"):
        load_segmentation_model(path)
    seconds = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 2.0 and peak < 50e6, (seconds, peak)


def test_a_valid_model_loads(tmp_path):
    model = load_segmentation_model(save_tiny_model(tmp_path / "ok.pt"))
    assert model.network.config.channels == TINY_CHANNELS


def test_predict_refuses_a_nan_model_in_one_line(tmp_path, capfd):
    write_phantom_dataset(str(tmp_path / "d"), 1, seed=3)
    path = _model_with(tmp_path, "nan", BROKEN["nan-weight"][0])
    code = main(["predict", "--model", str(path), "--image", str(tmp_path / "d" / "imagesTr"), "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--progress", "none"])
    err = capfd.readouterr().err
    assert code == 1 and str(path) in err and "NaN" in err and "--spacing" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_evaluate_json_is_strict_with_undefined_metrics_as_null(tmp_path):
    """HD95 of a class missing from a prediction is undefined: null in the JSON, with a note saying so."""
    write_phantom_dataset(str(tmp_path / "d"), 2, seed=4)
    labels, pred = tmp_path / "d" / "labelsTr", tmp_path / "pred"
    for path in sorted(labels.iterdir()):
        volume = read_volume(path)
        array = volume.array.copy()
        array[array == 2] = 0  # every prediction misses class 2: its HD95 is undefined in every case
        write_volume(array, volume.geometry, pred / path.name)
    report_path = tmp_path / "report.json"
    evaluate_folders(pred, labels, CARDIAC, report_path)
    text = report_path.read_text()
    report = _strict(text)
    name = CARDIAC.names[1]
    assert report["summary"][name]["hd95"]["mean"] is None
    assert all(case[name]["hd95"] is None for case in report["cases"].values())
    assert "null" in report["notes"]


def test_suggest_json_is_strict(tmp_path, capfd):
    write_phantom_dataset(str(tmp_path / "d"), 2, seed=6)
    model = save_tiny_model(tmp_path / "m.pt")
    out = tmp_path / "rank.json"
    code = main(["suggest", "--model", str(model), "--images", str(tmp_path / "d" / "imagesTr"), "--json", str(out),
                 "--rotations", "1", "--device", "cpu", "--progress", "none"])
    assert code == 0, capfd.readouterr().err
    report = _strict(out.read_text())
    assert len(report["ranking"]) == 2


def test_progress_events_are_strict_json(tmp_path, capfd):
    from maclcore.runtime.progress import make_reporter

    reporter = make_reporter("json")
    reporter.done(output=None, metrics={"dice": float("nan"), "n": np.float64("inf")})
    reporter.close()
    for line in capfd.readouterr().out.strip().splitlines():
        _strict(line)
