"""The Widget's behaviour, from MACLSegmentLib.controller: with real Qt widgets (PySide6, offscreen; skipped
without it) and real MRML parameter nodes (slicer-core), never stand-ins for either."""

import os
import pathlib
import sys
import textwrap
import time
import xml.etree.ElementTree as ET

import pytest

from MACLSegmentLib import controller, parameters
from MACLSegmentLib.controller import JobMonitor, PathSync, TextSync, ValueWatcher, buttonStates
from MACLSegmentLib.jobs import BackgroundJob
from MACLSegmentLib.reloading import reloadPackage

ROOT = pathlib.Path(__file__).resolve().parents[2]
UI = ROOT / "MACLSegment" / "Resources" / "UI" / "MACLSegment.ui"


@pytest.fixture(scope="module")
def qt():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    widgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 (Qt offscreen) is not installed")
    from PySide6 import QtTest

    app = widgets.QApplication.instance() or widgets.QApplication([])
    return widgets, QtTest.QTest, app


@pytest.fixture
def parameterNode(slicerEnvironment):
    return parameters.getParameterNode(slicerEnvironment.scene)


def observe(node, callback):
    import vtk

    return node.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: callback())


def test_typing_into_the_schema_box_keeps_the_cursor(qt, parameterNode):
    widgets, QTest, app = qt
    # What parameterNodeWrapper does with a bound QTextEdit: setPlainText on every Modified event.
    naive = widgets.QTextEdit()
    naive.textChanged.connect(lambda: parameterNode.SetParameter("naive", naive.toPlainText()))
    observe(parameterNode, lambda: naive.setPlainText(parameterNode.GetParameter("naive") or ""))
    QTest.keyClicks(naive, "LV cavity")
    assert naive.toPlainText() == "ytivac VL"  # the defect this module had

    edit = widgets.QTextEdit()
    sync = TextSync(lambda: parameterNode.GetParameter("schemaText"),
                    lambda text: parameterNode.SetParameter("schemaText", text), edit.toPlainText, edit.setPlainText)
    edit.textChanged.connect(sync.widgetEdited)
    observe(parameterNode, sync.parameterModified)
    QTest.keyClicks(edit, "LV cavity #ff0000")
    assert edit.toPlainText() == "LV cavity #ff0000" == parameterNode.GetParameter("schemaText")
    parameterNode.SetParameter("schemaText", "RV cavity #0000ff")  # e.g. Reset or a scene load
    assert edit.toPlainText() == "RV cavity #0000ff"


def test_an_optional_path_can_be_cleared_and_empty_shows_empty(qt, parameterNode):
    widgets, QTest, app = qt
    from PySide6 import QtCore

    # ctkPathLineEdit's text lives in an editable QComboBox (comboBox(), editTextChanged): the real Qt part.
    combo = widgets.QComboBox()
    combo.setEditable(True)
    read = lambda: parameters.readParameter(parameterNode, "finetunePretrained")  # noqa: E731
    write = lambda value: parameters.writeParameter(parameterNode, "finetunePretrained",  # noqa: E731
                                                    pathlib.Path(value or ""))
    sync = PathSync(read, write, combo.currentText, combo.setEditText)
    combo.editTextChanged.connect(sync.widgetEdited)
    observe(parameterNode, sync.parameterModified)
    write("/models/pretrained.pt")  # what a finished pretraining does
    assert combo.currentText() == "/models/pretrained.pt"
    combo.lineEdit().selectAll()
    QTest.keyClick(combo.lineEdit(), QtCore.Qt.Key.Key_Backspace)  # the user empties the field: finetune from scratch
    assert parameters.pathOrNone(read()) is None
    assert combo.currentText() == ""  # not "."
    QTest.keyClicks(combo.lineEdit(), "/m.pt")
    assert parameters.pathOrNone(read()) == "/m.pt"


def test_the_model_history_sees_the_browsed_model_whatever_the_slot_order(qt, parameterNode):
    widgets, QTest, app = qt
    field = widgets.QLineEdit()
    seenBySlot, seenByWatcher = [], []
    read = lambda: parameterNode.GetParameter("segmentModel")  # noqa: E731
    field.textChanged.connect(lambda text: seenBySlot.append(read()))  # connected first, as the module was
    field.textChanged.connect(lambda text: parameterNode.SetParameter("segmentModel", text))  # the binding
    watcher = ValueWatcher(read, seenByWatcher.append)
    observe(parameterNode, watcher.check)
    field.setText("/models/model-002.pt")  # what browsing to a model does
    assert seenBySlot == [""]  # the old value: the history lagged one model behind
    assert seenByWatcher == ["/models/model-002.pt"]
    parameterNode.SetParameter("device", "cpu")  # another parameter: no history refresh
    assert seenByWatcher == ["/models/model-002.pt"]


def script(tmp_path, body):
    path = tmp_path / "job.py"
    path.write_text("import sys, json\n" + textwrap.dedent(body))
    return BackgroundJob("Finetuning", [sys.executable, str(path)])


def poll_until_finished(monitor, timeout=60):
    updates, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        updates.append(monitor.poll())
        if updates[-1].finished:
            return updates
        time.sleep(0.05)
    raise AssertionError("the job did not finish")


def test_a_failed_job_leaves_the_buttons_usable(tmp_path):
    monitor = JobMonitor()
    monitor.watch(script(tmp_path, "print('maclcore: error: no labels found', file=sys.stderr)\nsys.exit(2)\n")
                  .start(), lambda result: None)
    assert buttonStates(True, monitor.running, False, 0)["finetuneButton"] is False
    updates = poll_until_finished(monitor)
    assert updates[-1].error == "Finetuning failed: no labels found"
    assert not monitor.running
    states = buttonStates(True, monitor.running, False, 0)
    assert all(states[name] for name in controller.ACTION_BUTTONS) and not states["cancelButton"]
    assert "maclcore: error: no labels found" in [line for u in updates for line in u.newLogLines]


def test_the_job_log_keeps_every_line_past_200(tmp_path):
    """Issue 17, defect 9: the log stopped after 200 lines; every stderr line must reach the module's log."""
    monitor = JobMonitor()
    monitor.watch(script(tmp_path, "for i in range(1500):\n    print(f'line {i}', file=sys.stderr)\n").start(),
                  lambda result: None)
    shown = [line for u in poll_until_finished(monitor) for line in u.newLogLines]
    assert [line for line in shown if line.startswith("line ")] == [f"line {i}" for i in range(1500)]


def test_a_result_that_cannot_be_shown_is_reported_not_raised(tmp_path):
    monitor = JobMonitor()

    def show(result):
        raise RuntimeError("the view is gone")

    monitor.watch(script(tmp_path, "pass\n").start(), show)
    update = poll_until_finished(monitor)[-1]
    assert "the view is gone" in update.error and not monitor.running


def test_reload_picks_up_edits_of_the_library(tmp_path, monkeypatch):
    package = tmp_path / "demolib"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "values.py").write_text("VALUE = 1\n")
    (package / "user.py").write_text("from .values import VALUE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import demolib.user

    assert demolib.user.VALUE == 1
    (package / "values.py").write_text("VALUE = 2  # edited\n")
    assert set(reloadPackage("demolib")) == {"demolib", "demolib.user", "demolib.values"}
    assert sys.modules["demolib.user"].VALUE == 2


def test_the_ui_marks_exactly_the_widgets_the_controller_syncs():
    root = ET.parse(UI).getroot()
    marked = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "MACLSegmentSyncedParameter":
                marked[prop.findtext("string")] = widget.get("name")
    assert marked == {**controller.SYNCED_TEXT, **controller.SYNCED_PATHS}


def test_the_ui_loads_in_qt(qt):
    widgets, QTest, app = qt
    from PySide6 import QtCore, QtUiTools

    loader = QtUiTools.QUiLoader()
    ui = QtCore.QFile(str(UI))
    assert ui.open(QtCore.QFile.ReadOnly)
    panel = loader.load(ui)
    ui.close()
    assert panel is not None, loader.errorString()
    names = {w.objectName() for w in panel.findChildren(QtCore.QObject)}
    assert {"schemaTextEdit", "segmentButton", "cancelButton"} <= names


def test_the_panel_renders_for_the_docs(qt, tmp_path):
    import render_panel

    output = render_panel.render(str(tmp_path / "panel.png"))
    data = pathlib.Path(output).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[20:24], "big") > 800  # the whole panel


def test_every_widget_the_controller_names_is_in_the_ui():
    names = {w.get("name"): w.get("class") for w in ET.parse(UI).getroot().iter("widget")}
    used = set(buttonStates(True, False, False, 0)) | set(controller.SYNCED_PATHS.values())
    used |= set(controller.SYNCED_TEXT.values()) | set(parameters.CHECKED_NODE_ROLES.values())
    assert used <= set(names), used - set(names)
    assert {names[n] for n in parameters.CHECKED_NODE_ROLES.values()} == {"qMRMLCheckableNodeComboBox"}
