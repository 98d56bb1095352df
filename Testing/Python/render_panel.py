"""Render the module's panel (Resources/UI/MACLSegment.ui) with Qt offscreen, for docs/slicer.md:

    QT_QPA_PLATFORM=offscreen .venv/bin/python Testing/Python/render_panel.py docs/images/slicer_panel.png

CTK and MRML widgets are not in PySide6, so the .ui is loaded with each replaced by its closest Qt widget (a
collapsible section by a group box, a node selector by a combo box, a path field by a line edit): the picture
shows the real layout, labels and defaults. Example entries are filled in where Slicer would show scene content.
"""

import os
import pathlib
import sys
import xml.etree.ElementTree as ET

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtUiTools, QtWidgets  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
UI = ROOT / "MACLSegment" / "Resources" / "UI" / "MACLSegment.ui"
STAND_INS = {"ctkCollapsibleButton": "QGroupBox", "qMRMLNodeComboBox": "QComboBox",
             "qMRMLCheckableNodeComboBox": "QComboBox", "ctkPathLineEdit": "QLineEdit", "qMRMLWidget": "QWidget"}


def plainQtUi() -> bytes:
    """The .ui with the CTK/MRML classes replaced by Qt ones (their own properties dropped)."""
    root = ET.parse(UI).getroot()
    for widget in root.iter("widget"):
        custom = widget.get("class")
        if custom not in STAND_INS:
            continue
        widget.set("class", STAND_INS[custom])
        for prop in list(widget.findall("property")):
            name = prop.get("name")
            if custom == "ctkCollapsibleButton" and name == "text":
                prop.set("name", "title")
            elif name not in ("toolTip", "text", "title"):
                widget.remove(prop)
    for block in root.findall("customwidgets"):
        root.remove(block)
    for block in root.findall("connections"):
        root.remove(block)
    return ET.tostring(root, encoding="utf-8")


def render(output: str) -> str:
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    loader = QtUiTools.QUiLoader()
    handle = QtCore.QBuffer()
    handle.setData(QtCore.QByteArray(plainQtUi()))
    handle.open(QtCore.QIODevice.ReadOnly)
    panel = loader.load(handle)
    handle.close()
    if panel is None:
        raise SystemExit(loader.errorString())
    find = lambda name: panel.findChild(QtCore.QObject, name)  # noqa: E731
    samples = {"pretrainVolumesComboBox": "cine patient001 (30 frames), patient002", "annotateVolumesComboBox":
               "patient003 ED", "finetuneSegmentationsComboBox": "patient003 ED annotation",
               "segmentVolumeSelector": "patient004 ED", "segmentOutputSelector": "New segmentation"}
    for name, text in samples.items():
        widget = find(name)
        if isinstance(widget, QtWidgets.QComboBox):
            widget.addItem(text)
    find("deviceComboBox").addItems(["auto", "cpu", "cuda"])
    find("segmentFramesComboBox").addItems(["shown frame", "ED and ES", "every frame"])
    find("gpuCountSpinBox").setValue(1)
    for name, text in (("pretrainOutputPathLineEdit", "~/Documents/MACLSegment/pretrained.pt"),
                       ("finetuneOutputPathLineEdit", "~/Documents/MACLSegment/model.pt"),
                       ("segmentModelPathLineEdit", "~/Documents/MACLSegment/model-002.pt")):
        find(name).setText(text)
    schema = find("schemaTextEdit")
    if schema is not None:
        schema.setPlainText("RV cavity #4d95ed\nLV myocardium #62c75c\nLV cavity #e35647")
    for name, text in (("dependencyStatusLabel", "torch 2.4.1; MACLCore 0.1.0"),
                       ("gpuStatusLabel", "GPUs: 0: NVIDIA RTX A4000 (16 GiB)"),
                       ("pretrainSummaryLabel", "31 volumes, 118.0 MB"),
                       ("jobStatusLabel", "Finetuning: epoch 12/100 · loss 0.2140 · 4 min 10 s left")):
        label = find(name)
        if label is not None:
            label.setText(text)
    find("jobLogTextEdit").setPlainText("finetune: 2 cases, 16 slices each, spacing 1.25 mm, size 192\n"
                                        "epoch 11/100: loss 0.2201, validation Dice 0.874")
    bar = find("jobProgressBar")
    if bar is not None:
        bar.setValue(12)
    panel.resize(460, panel.sizeHint().height())
    panel.adjustSize()
    pixmap = panel.grab()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if not pixmap.save(output):
        raise SystemExit(f"could not write {output}")
    del app
    return output


if __name__ == "__main__":
    print(render(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "images" / "slicer_panel.png")))
