"""``--stop-file`` of ``maclcore predict`` and ``maclcore suggest``: the stop request is checked between volumes,
the run exits with the training commands' "stopped" exit code (130) and one line, and no partial output is left
(only the complete files of volumes finished before the stop)."""

import pytest

from maclcore.errors import InferenceStopped
from maclcore.inference.predict import predict_files
from maclcore.runtime.progress import Reporter
from reliability_fixtures import save_tiny_model
from reliability_utils import array_of, leftovers, one_thread, run_cli, temp_or_lock_files, write_cases  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = ["--device", "cpu", "--progress", "none"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_cases(tmp_path_factory.mktemp("stop-inference") / "data", 3, seed=7)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("stop-model") / "model.pt")


def assert_stopped(code, err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 130, err
    assert len(lines) == 1 and "stopped after" in lines[0] and "Traceback" not in err, err
    return lines[0]


def test_predict_with_a_stop_file_present_stops_before_any_volume(data, model, tmp_path, capfd):
    stop = tmp_path / "stop"
    stop.write_text("stop\n")
    out = tmp_path / "pred"
    code, _, err = run_cli(["predict", "--model", model, "--image", data / "imagesTr", "--out", out,
                            "--stop-file", stop] + CPU, capfd)
    line = assert_stopped(code, err)
    assert "0 of 3" in line and "nothing was written" in line
    assert leftovers(out) == []


def test_a_stop_between_volumes_keeps_only_the_finished_files(data, model, tmp_path):
    stop = tmp_path / "stop"

    class StopAfterFirst(Reporter):
        """Asks to stop as soon as the first volume is reported done (as a Cancel click would)."""

        def progress(self, stage, step, total, **fields):
            super().progress(stage, step, total, **fields)
            stop.write_text("stop\n")

    out = tmp_path / "pred"
    with pytest.raises(InferenceStopped) as info:
        predict_files(model, sorted(str(p) for p in (data / "imagesTr").iterdir()), str(out), device="cpu",
                      reporter=StopAfterFirst(), stop_file=str(stop))
    assert (info.value.done, info.value.total) == (1, 3)
    assert leftovers(out) == ["case_000.nii.gz"] and not temp_or_lock_files(out)
    assert info.value.written == [str(out / "case_000.nii.gz")]
    assert array_of(out / "case_000.nii.gz").shape == array_of(data / "labelsTr" / "case_000.nii.gz").shape


def test_predict_without_the_stop_file_runs_to_the_end(data, model, tmp_path, capfd):
    out = tmp_path / "pred"
    code, _, err = run_cli(["predict", "--model", model, "--image", data / "imagesTr", "--out", out,
                            "--stop-file", tmp_path / "never"] + CPU, capfd)
    assert code == 0, err
    assert leftovers(out) == [f"case_{i:03d}.nii.gz" for i in range(3)]


def test_suggest_with_a_stop_file_present_stops_and_writes_no_report(data, model, tmp_path, capfd):
    stop = tmp_path / "stop"
    stop.write_text("stop\n")
    report = tmp_path / "report" / "ranking.json"
    code, out, err = run_cli(["suggest", "--model", model, "--images", data / "imagesTr", "--json", report,
                              "--rotations", "1", "--stop-file", stop] + CPU, capfd)
    assert "0 of 3" in assert_stopped(code, err)
    assert not report.exists() and leftovers(tmp_path / "report") == []
    assert "rank" not in out  # no table either
