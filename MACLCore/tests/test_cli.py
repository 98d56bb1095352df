"""The command line: help, JSON progress, output formats, evaluation report, the demo."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from maclcore.io.segmentation import label_geometry, read_label_map
from maclcore.io.volume import read_geometry
from maclcore.labels import CARDIAC

from phantom_data import TINY, images_of, labels_of


def maclcore(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "maclcore", *args], capture_output=True, encoding="utf-8",
                            errors="replace", timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def model(phantoms, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    maclcore("finetune", "--images", images_of(phantoms["train"]), "--labels", labels_of(phantoms["train"]),
             "--out", str(path), "--epochs", "2", *TINY)
    return str(path)


@pytest.mark.parametrize("command,option", [("pretrain", "--variant"), ("finetune", "--init"),
                                            ("predict", "--format"), ("evaluate", "--json"), ("demo", "--quick"),
                                            ("suggest", "--labelled")])
def test_every_subcommand_has_help(command, option):
    result = maclcore(command, "--help")
    assert option in result.stdout and "usage: maclcore " + command in result.stdout


def test_json_progress_is_one_object_per_line(phantoms, tmp_path):
    result = maclcore("finetune", "--images", images_of(phantoms["train"]), "--labels", labels_of(phantoms["train"]),
                      "--out", str(tmp_path / "m.pt"), "--epochs", "2", *TINY[:-2], "--progress", "json")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and events[-1]["output"] == str(tmp_path / "m.pt")
    progress = [e for e in events if e["event"] == "progress" and e["stage"] == "finetune"]
    assert progress[-1]["step"] == progress[-1]["total"] and progress[-1]["epoch"] == 2
    assert all({"loss", "eta", "epoch", "epochs", "metrics"} <= set(e) for e in progress)


@pytest.mark.parametrize("fmt", ["seg.nrrd", "nrrd", "nii.gz"])
def test_predict_writes_each_format_on_the_input_grid(phantoms, model, tmp_path, fmt):
    image = os.path.join(images_of(phantoms["test"]), "test_000_0000.nii.gz")
    out = tmp_path / f"pred.{fmt}"
    maclcore("predict", "--model", model, "--image", image, "--out", str(out), "--device", "cpu", "--progress", "none")
    reference = read_geometry(image)
    labels = read_label_map(out, CARDIAC, reference)
    assert labels.shape == reference.shape
    assert label_geometry(out).matches(reference, tolerance=1e-5)


def test_predict_folder_then_evaluate_writes_a_report(phantoms, model, tmp_path):
    maclcore("predict", "--model", model, "--image", images_of(phantoms["test"]), "--out", str(tmp_path / "pred"),
             "--device", "cpu", "--progress", "none")
    assert sorted(os.listdir(tmp_path / "pred")) == ["test_000.nii.gz", "test_001.nii.gz"]
    result = maclcore("evaluate", "--pred", str(tmp_path / "pred"), "--labels", labels_of(phantoms["test"]),
                      "--json", str(tmp_path / "eval.json"))
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["cases"]) == {"test_000", "test_001"}
    assert set(report["cases"]["test_000"]) == set(CARDIAC.names)
    mean = report["summary"]["mean_foreground"]["dice"]["mean"]
    assert 0 <= mean <= 1 and f"{mean:.4f}" in result.stdout
    # The table's per-class means are those of the per-case values.
    lv = [report["cases"][c]["LV cavity"]["dice"] for c in report["cases"]]
    assert report["summary"]["LV cavity"]["dice"]["mean"] == pytest.approx(np.mean(lv))


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path):
    result = maclcore("demo", "--quick", "--out", str(tmp_path / "demo"), "--device", "cpu", "--progress", "none")
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert set(report["mean_dice"]) == {"random init", "MACL pretrained"}
    assert (tmp_path / "demo" / "overlay.png").stat().st_size > 1000
    assert "mean foreground Dice" in result.stdout


@pytest.mark.parametrize("argv, problem", [
    (["predict", "--progress", "json", "--model", "m.pt", "--image", "i.nii.gz", "--out", "o", "--batch-size", "x"],
     "argument --batch-size: invalid int value: 'x'"),
    (["finetune", "--progress=json"], "the following arguments are required: --out"),
    (["evaluate", "--pred", "p", "--labels", "l", "--progress", "json", "--no-such-option"],
     "unrecognized arguments: --no-such-option"),
])
def test_a_rejected_option_is_an_error_event_for_json_progress(tmp_path, argv, problem):
    """A program reading --progress json learns why the command ended, as for every other error."""
    stdout, stderr = tmp_path / "out", tmp_path / "err"
    with open(stdout, "w") as out, open(stderr, "w") as err:
        result = subprocess.run([sys.executable, "-m", "maclcore", *argv], stdout=out, stderr=err, timeout=120)
    assert result.returncode == 2
    events = [json.loads(line) for line in stdout.read_text().splitlines()]
    assert len(events) == 1 and events[0]["event"] == "error" and problem in events[0]["message"]
    assert problem in stderr.read_text() and "usage: maclcore" in stderr.read_text()  # people see it as before


def test_without_json_progress_a_rejected_option_prints_only_usage(capfd):
    from maclcore.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["predict", "--model", "m.pt"])
    out, err = capfd.readouterr()
    assert exited.value.code == 2 and out == "" and "the following arguments are required: --image, --out" in err


def test_self_training_options_reach_the_config():
    import argparse

    from maclcore.cli import finetune as command
    from maclcore.cli.options import flag_name

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    base = ["finetune", "--images", "i", "--labels", "l", "--out", "m.pt"]
    plain = command.config_from_args(parser.parse_args(base)).unlabelled_loss
    assert plain == command.FinetuneConfig().unlabelled_loss
    terms = command.config_from_args(parser.parse_args(
        base + ["--unlabelled-passes", "0.3", "0.7", "--unlabelled-share", "0.25", "--unlabelled-confidence", "0.9",
                "--unlabelled-no-tta", "--unlabelled-copy-paste", "0.5"])).unlabelled_loss
    assert (terms.passes, terms.share, terms.confidence, terms.tta, terms.copy_paste) == ((0.3, 0.7), 0.25, 0.9,
                                                                                        False, 0.5)
    assert flag_name("unlabelled_loss.passes") == "--unlabelled-passes"  # what an engine message names


def test_a_bad_self_training_option_names_its_flag(tmp_path):
    result = maclcore("finetune", "--images", str(tmp_path), "--labels", str(tmp_path), "--out",
                      str(tmp_path / "m.pt"), "--unlabelled-passes", "0.8", "0.4", check=False)
    assert result.returncode != 0 and "--unlabelled-passes" in result.stderr and "increasing" in result.stderr


def test_predict_averages_the_flips_unless_told_not_to(monkeypatch):
    """`maclcore predict` leaves TTA to the model by default; --tta and --no-tta force it on and off."""
    from maclcore.cli import predict as command
    from maclcore.cli.main import build_parser
    from maclcore.runtime.progress import Reporter

    parser = build_parser()
    seen = []
    monkeypatch.setattr(command, "find_images", lambda paths: [])
    monkeypatch.setattr(command, "refuse_overwriting_inputs", lambda *args: None)
    monkeypatch.setattr(command, "predict_files", lambda *args, **kwargs: seen.append(kwargs["tta"]))
    for extra in ([], ["--tta"], ["--no-tta"]):
        command.run(parser.parse_args(["predict", "--model", "m.pt", "--image", "i", "--out", "o", *extra]),
                    Reporter())
    assert seen == [None, True, False]  # None: predict_files decides by the model (trained with flips)
