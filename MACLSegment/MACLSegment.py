"""MACLSegment: label-efficient cardiac segmentation in 3D Slicer, wrapping MACLCore.

Module, parameter node, Widget, Logic and Test, in the scripted-module template's order. The work is in
the Qt-free ``MACLSegmentLib`` package beside this file and the Widget's handlers per panel section in
``MACLSegmentGui``; training and inference run as a background ``maclcore`` process whose JSON progress the
Widget polls with a timer, so Slicer stays responsive.
"""

import logging
import os
import pathlib
import time
import unittest
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MACLSegmentGui.sections import POLL_INTERVAL_MS, HumanLoopSection, JobSection, SetupSection, TrainingSection
from MACLSegmentLib import dependencies, selftests
from MACLSegmentLib.controller import SYNCED_PATHS, JobMonitor, PathSync, TextSync, ValueWatcher, buttonStates
from MACLSegmentLib.logic import CoreLogic
from MACLSegmentLib.parameters import CHECKED_NODE_ROLES, pathOrNone, readNodeList, writeNodeList
from MACLSegmentLib.reloading import reloadPackage
from MACLSegmentLib.schema import defaultSchema, formatSchemaText


#
# MACLSegment
#


class MACLSegment(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MACL Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]  # the context Slicer uses
        self.parent.dependencies = []
        self.parent.contributors = ["MACLSegment developers"]
        self.parent.helpText = _(
            "Label-efficient cardiac MRI segmentation: pretrain on unlabelled volumes (MACL), annotate a few "
            "cases, finetune a U-Net and segment new volumes. Jobs run in the background and can be cancelled. "
            "See the <a href=\"https://github.com/MACLSegment/MACLSegment/blob/main/docs/slicer.md\">user guide</a>.")
        self.parent.acknowledgementText = _("Built on MACLCore and PyTorch. Module layout follows the Slicer "
                                            "extension template.")


#
# MACLSegmentParameterNode
#


@parameterNodeWrapper
class MACLSegmentParameterNode:
    """What the module remembers in the scene; fields equal MACLSegmentLib.parameters.FIELDS (tested).

    Counts of 0 mean "not set": MACLCore's own default applies (``options.optionalCount``). The label schema
    and the paths are not bound by the wrapper (see ``MACLSegmentLib.controller``): paths left empty read as
    ``.`` (an empty pathlib.Path), which ``pathOrNone`` turns into None.
    """

    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    gpuCount: Annotated[int, WithinRange(1, 64)] = 1
    pretrainFolder: pathlib.Path
    pretrainEpochs: Annotated[int, WithinRange(0, 100000)] = 0
    pretrainTimeBudget: Annotated[float, WithinRange(0, 1440)] = 0.0
    pretrainBatchSize: Annotated[int, WithinRange(0, 4096)] = 0
    pretrainOutput: pathlib.Path
    schemaText: str = ""
    finetunePretrained: pathlib.Path
    finetuneEpochs: Annotated[int, WithinRange(0, 100000)] = 0
    finetuneTimeBudget: Annotated[float, WithinRange(0, 1440)] = 0.0
    finetuneUseUnlabelled: bool = True  # self-training on the Pretrain volumes (MACLCore's --unlabelled)
    finetuneOutput: pathlib.Path
    segmentModel: pathlib.Path
    segmentVolume: vtkMRMLScalarVolumeNode
    # A cine's frames to segment: MACLSegmentLib.sequences.FRAME_CHOICES (a test checks they are the same)
    segmentFrames: Annotated[str, Choice(["shown frame", "ED and ES", "every frame"])] = "shown frame"
    segmentShow3D: bool = False
    segmentOutput: vtkMRMLSegmentationNode  # None: a new segmentation (the default)


#
# MACLSegmentWidget
#


class MACLSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, SetupSection, TrainingSection,
                        HumanLoopSection, JobSection):
    """Binds the controls to the parameter node and calls the Logic; polls the running job with a timer.

    The behaviour lives in ``MACLSegmentLib.controller`` (tested headless and with Qt offscreen); this class
    only connects it to the widgets. The handlers of each panel section are in ``MACLSegmentGui.sections``.
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._monitor = JobMonitor()
        self._dependencies = None
        self._suggestions = []
        self._history = []
        self._syncs = []
        self._modelWatcher = None
        self._gpus = None
        self._gpuProbe = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MACLSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MACLSegmentLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.installButton.connect("clicked(bool)", self.onInstall)
        self.ui.pretrainButton.connect("clicked(bool)", self.onPretrain)
        self.ui.schemaResetButton.connect("clicked(bool)", self.onResetSchema)
        self.ui.annotateButton.connect("clicked(bool)", self.onAnnotate)
        self.ui.finetuneButton.connect("clicked(bool)", self.onFinetune)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.undoSegmentButton.connect("clicked(bool)", self.onUndoSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.suggestButton.connect("clicked(bool)", self.onSuggest)
        self.ui.loadSuggestionButton.connect("clicked(bool)", self.onLoadSuggestion)
        self.ui.suggestionsListWidget.connect("itemDoubleClicked(QListWidgetItem*)", self.onLoadSuggestion)
        self.ui.acceptCorrectionButton.connect("clicked(bool)", self.onAcceptCorrection)
        self.ui.revertModelButton.connect("clicked(bool)", self.onRevertModel)
        self.ui.pretrainVolumesComboBox.connect("checkedNodesChanged()", self.updatePretrainSummary)
        for role, comboName in CHECKED_NODE_ROLES.items():  # ticked nodes are saved with the scene
            combo = getattr(self.ui, comboName)
            combo.connect("checkedNodesChanged()",
                          lambda role=role, combo=combo: self._parameterNode and writeNodeList(
                              self._parameterNode.parameterNode, role, combo.checkedNodes()))
        self.ui.pretrainFolderPathLineEdit.connect("currentPathChanged(QString)", self.updatePretrainSummary)
        self._connectSyncedParameters()
        # The history follows the parameter, not a widget signal: a slot of the path field would run before the
        # parameter is written and read the previous model.
        self._modelWatcher = ValueWatcher(
            lambda: pathOrNone(self._parameterNode.segmentModel) if self._parameterNode else None,
            lambda model: self.updateModelHistory())

        self.initializeParameterNode()
        self.updateDependencyStatus()

    def _connectSyncedParameters(self) -> None:
        """The label schema and the paths, kept in step with the parameter node by controller classes."""
        schemaEdit = self.ui.schemaTextEdit
        schema = TextSync(lambda: self._parameterNode.schemaText if self._parameterNode else "",
                          lambda text: self._setParameter("schemaText", text),
                          schemaEdit.toPlainText, schemaEdit.setPlainText)
        schemaEdit.connect("textChanged()", schema.widgetEdited)
        self._syncs = [schema]
        for name, widgetName in SYNCED_PATHS.items():
            widget = getattr(self.ui, widgetName)
            sync = PathSync(lambda name=name: getattr(self._parameterNode, name) if self._parameterNode else None,
                            lambda value, name=name: self._setParameter(name, pathlib.Path(value or "")),
                            lambda widget=widget: widget.currentPath,
                            lambda text, widget=widget: setattr(widget, "currentPath", text))
            widget.connect("currentPathChanged(QString)", sync.widgetEdited)
            # ctkPathLineEdit emits currentPathChanged only for valid paths; the combo box's text edits include
            # the emptied field, which is how an optional path is cleared.
            widget.comboBox().connect("editTextChanged(QString)", sync.widgetEdited)
            self._syncs.append(sync)

    def _setParameter(self, name: str, value) -> None:
        if self._parameterNode:
            setattr(self._parameterNode, name, value)

    def cleanup(self) -> None:
        """Called when the application closes: do not leave a training process behind."""
        if self._monitor.running:
            self._monitor.cancel()
        if self._gpuProbe is not None:
            self._gpuProbe.cancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        if self._dependencies is not None:
            self._probeGpus()  # a driver installed or a GPU freed meanwhile shows up

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterModified)

    def onReload(self) -> None:
        """Reload and Test: reload MACLSegmentLib and MACLSegmentGui too (Slicer reloads only this file)."""
        reloadPackage("MACLSegmentLib")
        reloadPackage("MACLSegmentGui")
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if p.segmentVolume is None:
            p.segmentVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        models = pathlib.Path(slicer.app.defaultScenePath) / "MACLSegment"
        for name, fileName in (("pretrainOutput", "pretrained.pt"), ("finetuneOutput", "model.pt")):
            if pathOrNone(getattr(p, name)) is None:
                setattr(p, name, models / fileName)

    def setParameterNode(self, parameterNode: Optional[MACLSegmentParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterModified)
        self._parameterNode = parameterNode
        if self._modelWatcher is not None:
            self._modelWatcher.reset()
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterModified)
            self.fillDefaultSchema()
            for role, comboName in CHECKED_NODE_ROLES.items():
                for node in readNodeList(self._parameterNode.parameterNode, role):
                    getattr(self.ui, comboName).check(node)
        self.onParameterModified()

    def onParameterModified(self, *unused) -> None:
        for sync in self._syncs:
            sync.parameterModified()
        if self._modelWatcher is not None and not self._modelWatcher.check():
            self.updateButtons()

    # -- state shown in the GUI -------------------------------------------------------------------------------
    def fillDefaultSchema(self) -> None:
        if self._parameterNode and not self._parameterNode.schemaText and self._ready():
            self._parameterNode.schemaText = formatSchemaText(defaultSchema())

    def updatePretrainSummary(self, *unused) -> None:
        if not self._ready() or not self._parameterNode:
            self.ui.pretrainSummaryLabel.text = ""
            return
        try:
            count, size = self.logic.pretrainInputSummary(self.ui.pretrainVolumesComboBox.checkedNodes(),
                                                          pathOrNone(self.ui.pretrainFolderPathLineEdit.currentPath))
            self.ui.pretrainSummaryLabel.text = _("{count} volumes, {size:.1f} MB").format(count=count,
                                                                                          size=size / 2 ** 20)
        except ValueError as exc:
            self.ui.pretrainSummaryLabel.text = str(exc)

    def updateButtons(self, *unused) -> None:
        states = buttonStates(self._ready(), self._monitor.running, bool(self._suggestions), len(self._history),
                              canUndoSegment=self.logic is not None and self.logic.canUndoSegment)
        for name, enabled in states.items():
            getattr(self.ui, name).enabled = enabled

    def _ready(self) -> bool:
        return self._dependencies is not None and self._dependencies.ready


#
# MACLSegmentLogic
#


class MACLSegmentLogic(ScriptedLoadableModuleLogic, CoreLogic):
    """The module's actions (see ``MACLSegmentLib.logic.CoreLogic``), usable from scripts without the GUI::

        logic = slicer.util.getModuleLogic("MACLSegment")
        segmentation = logic.runToCompletion(logic.segment(volumeNode, "/path/model.pt"))
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        CoreLogic.__init__(self, temporaryFolder=os.path.join(slicer.app.temporaryPath, "MACLSegment"))

    def getParameterNode(self):
        return MACLSegmentParameterNode(super().getParameterNode())


#
# MACLSegmentTest
#


class MACLSegmentTest(ScriptedLoadableModuleTest):
    """Self-tests: the bodies in MACLSegmentLib/selftests.py, which pytest also runs headless."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()
        status = dependencies.checkDependencies(queryGpus=False)
        if not status.ready:
            self.skipTest(f"MACLSegment needs torch and MACLCore ({status.describe()}); use the Setup section")
        self.context = selftests.SelfTestContext(scene=slicer.mrmlScene,
                                                 applicationLogic=slicer.app.applicationLogic(),
                                                 folder=slicer.util.tempDirectory("MACLSegmentTest"),
                                                 log=logging.info, idle=_processEventsFor)

    def runTest(self) -> None:
        """The Reload-and-Test button: every test in turn (ctest runs the test_ methods one by one)."""
        for test in (self.test_BadInput, self.test_ParameterRoundTrip, self.test_JobError, self.test_Cancel,
                     self.test_Pretrain, self.test_Walkthrough, self.test_HumanInTheLoop, self.test_CineSequence):
            try:
                self.setUp()  # inside the guard: missing dependencies skip, they do not fail
                test()
            except unittest.SkipTest as exc:
                logging.info(f"{test.__name__} skipped: {exc}")

    def test_Walkthrough(self) -> None:
        self.delayDisplay("Phantoms in, annotate, finetune, segment, check the overlay")
        results = selftests.runWalkthrough(self.context)
        self.delayDisplay(f"Walkthrough passed: mean Dice {results['meanDice']:.3f}")

    def test_BadInput(self) -> None:
        selftests.testBadInput(self.context)
        self.delayDisplay("Bad input is reported as one-line errors")

    def test_JobError(self) -> None:
        selftests.testJobError(self.context)
        self.delayDisplay("A failing job reports a readable error")

    def test_Cancel(self) -> None:
        selftests.testCancel(self.context)
        self.delayDisplay("Cancel stops the job and leaves its resumable state")

    def test_Pretrain(self) -> None:
        if not selftests.pretrainAvailable(self.context):
            self.skipTest("this MACLCore has no 'maclcore pretrain' command")
        selftests.testPretrain(self.context)
        self.delayDisplay("Pretraining on scene volumes and a folder wrote a pretrained model")

    def test_HumanInTheLoop(self) -> None:
        selftests.testHumanInTheLoop(self.context)
        self.delayDisplay("Suggest, correct, update the model and go back in its history")

    def test_CineSequence(self) -> None:
        selftests.testCineSequence(self.context)
        self.delayDisplay("A cine sequence is segmented frame by frame into a segmentation sequence")

    def test_ParameterRoundTrip(self) -> None:
        selftests.testParameterRoundTrip(self.context)
        self.delayDisplay("Parameters survive saving and loading the scene")


def _processEventsFor(seconds: float) -> None:
    """The self-tests' wait between job polls: keep the application responsive instead of sleeping."""
    end = time.monotonic() + seconds
    while True:
        slicer.app.processEvents()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.02))
