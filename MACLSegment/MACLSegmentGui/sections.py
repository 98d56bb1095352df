"""The Widget's button handlers and polls, by section of the panel: mixins of ``MACLSegmentWidget``.

Qt side (unlike ``MACLSegmentLib``): they read and write the Widget's controls (``self.ui``), show dialogs and
schedule timers, and call the Logic (``self.logic``) for everything else. They use the Widget's
``_parameterNode``, ``_monitor`` (a ``controller.JobMonitor``), ``_timer``, ``_dependencies``, ``_gpus``,
``_gpuProbe``, ``_suggestions`` and ``_history``, and its ``updateButtons``, ``updatePretrainSummary``,
``fillDefaultSchema`` and ``_ready``.
"""

import os
import pathlib
from typing import Any, Callable, Optional

import qt
import slicer
from slicer.i18n import tr as _

from MACLSegmentLib import dependencies, sequences
from MACLSegmentLib.controller import cpuTrainingWarning
from MACLSegmentLib.options import (FinetuneOptions, PretrainOptions, SegmentOptions, SuggestOptions,
                                    optionalCount, optionalMinutes)
from MACLSegmentLib.parameters import pathOrNone
from MACLSegmentLib.schema import defaultSchema, formatSchemaText, parseSchemaText

POLL_INTERVAL_MS = 250


class SetupSection:
    """The Setup section: dependency status, the GPU probe (a background process, polled), install and upgrade."""

    def updateDependencyStatus(self) -> None:
        # Versions only (package metadata): torch is imported, and CUDA queried, by a background process.
        self._dependencies = self.logic.checkDependencies(queryGpus=False)
        self.ui.dependencyStatusLabel.text = self._dependencies.describe()
        self.ui.gpuStatusLabel.text = self._dependencies.describeGpus()
        self._probeGpus()
        self.ui.installButton.enabled = not self._dependencies.ready
        self.ui.installButton.text = _("Upgrade") if self._dependencies.upgrade else _("Install")
        self.fillDefaultSchema()
        self.updatePretrainSummary()
        self.updateModelHistory()

    def _probeGpus(self) -> None:
        self._gpus = None  # unknown until the probe answers
        if not self._dependencies.torchVersion or self._gpuProbe is not None:
            return
        try:
            self._gpuProbe = self.logic.probeGpus()
        except Exception as exc:  # e.g. PythonSlicer missing: say so, the rest of the panel works
            self.ui.gpuStatusLabel.text = _("GPUs: unknown ({error})").format(error=exc)
            return
        self.ui.gpuStatusLabel.text = _("GPUs: checking...")
        qt.QTimer.singleShot(POLL_INTERVAL_MS, self._pollGpuProbe)

    def _pollGpuProbe(self) -> None:
        probe = self._gpuProbe
        if probe is None:
            return
        if probe.poll():
            qt.QTimer.singleShot(POLL_INTERVAL_MS, self._pollGpuProbe)
            return
        self._gpuProbe = None
        try:
            self._gpus = self._dependencies.gpus = probe.finish()
            self.ui.gpuStatusLabel.text = self._dependencies.describeGpus()
        except Exception as exc:  # a broken torch install: say so instead of failing the GUI
            self._dependencies.problems.append(_("torch does not load ({error})").format(error=str(exc)[:160]))
            self.ui.dependencyStatusLabel.text = self._dependencies.describe()
            self.ui.gpuStatusLabel.text = _("GPUs: unknown")
            self.updateButtons()

    def _confirmDevice(self) -> bool:
        """Before a training job: a clear question when it would run on the CPU."""
        question = cpuTrainingWarning(self._gpus, self._parameterNode.device)
        return question is None or slicer.util.confirmOkCancelDisplay(question)

    def onInstall(self) -> None:
        before = self._dependencies or self.logic.checkDependencies(queryGpus=False)
        # No wait cursor: the confirmation dialog must not appear under it.
        with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed.")):
            installed = self.logic.installDependencies(confirm=slicer.util.confirmOkCancelDisplay,
                                                       installTorch=dependencies.pyTorchUtilsInstaller(),
                                                       pipInstall=slicer.util.pip_install, status=before)
            replaced = dependencies.restartNeeded(before) if installed else []
            if replaced:
                slicer.util.infoDisplay(_("{names} was upgraded while Slicer had the old version loaded: restart "
                                          "Slicer to use it.").format(names=" and ".join(replaced)))
        self.updateDependencyStatus()


class TrainingSection:
    """Pretrain, label schema, annotate, finetune and segment: each button handler calls the Logic inside
    ``tryWithErrorDisplay`` and hands the job to :class:`JobSection`."""

    def _pretrainOptions(self, output) -> PretrainOptions:
        p = self._parameterNode
        return PretrainOptions(epochs=optionalCount(p.pretrainEpochs), timeBudget=optionalMinutes(p.pretrainTimeBudget),
                               batchSize=optionalCount(p.pretrainBatchSize),
                               device=p.device, gpus=p.gpuCount, resume=self._askResume(output))

    def onPretrain(self) -> None:
        p = self._parameterNode
        if not self._confirmDevice():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start pretraining."), waitCursor=True):
            output = pathOrNone(p.pretrainOutput)
            job = self.logic.pretrain(self.ui.pretrainVolumesComboBox.checkedNodes(), pathOrNone(p.pretrainFolder),
                                      output, self._pretrainOptions(output))
            self._watch(job, lambda model: setattr(p, "finetunePretrained", pathlib.Path(model)))

    def onResetSchema(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not read the default label schema.")):
            self._parameterNode.schemaText = formatSchemaText(defaultSchema())

    def onAnnotate(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not create the annotations."), waitCursor=True):
            schema = parseSchemaText(self._parameterNode.schemaText)
            volumes = self.ui.annotateVolumesComboBox.checkedNodes() or [None]  # None: "no volume selected"
            annotations = [self.logic.createAnnotation(volume, schema) for volume in volumes]
            self._openSegmentEditor(annotations[0], volumes[0])

    def onFinetune(self) -> None:
        p = self._parameterNode
        if not self._confirmDevice():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start finetuning."), waitCursor=True):
            output = pathOrNone(p.finetuneOutput)
            pairs = self.logic.annotationPairs(self.ui.finetuneSegmentationsComboBox.checkedNodes())
            options = FinetuneOptions(epochs=optionalCount(p.finetuneEpochs),
                                      timeBudget=optionalMinutes(p.finetuneTimeBudget), device=p.device,
                                      resume=self._askResume(output))
            unlabelled = ((self.ui.pretrainVolumesComboBox.checkedNodes(), pathOrNone(p.pretrainFolder))
                          if p.finetuneUseUnlabelled else ((), None))
            job = self.logic.finetune(pairs, pathOrNone(p.finetunePretrained), output, options,
                                      schema=parseSchemaText(p.schemaText), unlabelledNodes=unlabelled[0],
                                      unlabelledFolder=unlabelled[1])
            self._watch(job, lambda model: setattr(p, "segmentModel", pathlib.Path(model)))

    def onSegment(self) -> None:
        p = self._parameterNode
        volume = p.segmentVolume
        browser, sequence, frame = sequences.sequenceOfProxy(slicer.mrmlScene, volume)
        with slicer.util.tryWithErrorDisplay(_("Could not start the segmentation."), waitCursor=True):
            options = SegmentOptions(device=p.device)
            if sequence is not None:  # a cine: the frames chosen under "Cine frames", into a segmentation sequence
                frames = sequences.framesToSegment(p.segmentFrames, sequence, frame)
                job = self.logic.segmentSequence(sequence, pathOrNone(p.segmentModel), options, frames=frames)
            else:  # into the chosen output segmentation (its content kept for Undo), or a new one
                job = self.logic.segment(volume, pathOrNone(p.segmentModel), options, show3D=p.segmentShow3D,
                                         outputNode=p.segmentOutput)
            self._watch(job, lambda node: slicer.util.setSliceViewerLayers(background=volume, fit=False))

    def onUndoSegment(self) -> None:
        try:  # tryWithErrorDisplay re-raises: the buttons are updated in any case
            with slicer.util.tryWithErrorDisplay(_("Could not undo the segmentation.")):
                self.logic.undoLastSegment()  # restores the node's previous content, or removes a new node
        finally:
            self.updateButtons()


class HumanLoopSection:
    """Human in the loop: suggestions, loading a suggested case for correction, accepting corrections, and
    the model's history."""

    def onSuggest(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not start the suggestion."), waitCursor=True):
            job = self.logic.suggestCases(pathOrNone(p.segmentModel),
                                          self.ui.annotateVolumesComboBox.checkedNodes() or None,
                                          SuggestOptions(device=p.device))
            self._watch(job, self.showSuggestions)

    def showSuggestions(self, suggestions) -> None:
        self._suggestions = list(suggestions)
        self.ui.suggestionsListWidget.clear()
        for suggestion in self._suggestions:
            self.ui.suggestionsListWidget.addItem(suggestion.describe())
        self.ui.suggestionsListWidget.setCurrentRow(0)
        self.updateButtons()

    def onLoadSuggestion(self, *unused) -> None:
        p = self._parameterNode
        row = self.ui.suggestionsListWidget.currentRow
        if not 0 <= row < len(self._suggestions) or self._monitor.running:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not load the suggested case."), waitCursor=True):
            volume = slicer.mrmlScene.GetNodeByID(self._suggestions[row].volumeNodeID)
            job = self.logic.loadSuggestion(volume, pathOrNone(p.segmentModel), SegmentOptions(device=p.device))
            self._watch(job, lambda node: self._openSegmentEditor(node, volume))

    def onAcceptCorrection(self) -> None:
        p = self._parameterNode
        if not self._confirmDevice():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start updating the model."), waitCursor=True):
            job = self.logic.acceptCorrections(pathOrNone(p.segmentModel),
                                               FinetuneOptions(epochs=optionalCount(p.finetuneEpochs),
                                                               timeBudget=optionalMinutes(p.finetuneTimeBudget),
                                                               device=p.device),
                                               schema=parseSchemaText(p.schemaText),
                                               pretrainedModel=pathOrNone(p.finetunePretrained),
                                               outputPath=pathOrNone(p.finetuneOutput))
            self._watch(job, lambda model: setattr(p, "segmentModel", pathlib.Path(model)))

    def updateModelHistory(self, *unused) -> None:
        self._history = []
        self.ui.modelHistoryListWidget.clear()
        model = pathOrNone(self._parameterNode.segmentModel) if self._parameterNode else None
        if self._ready() and model and os.path.isfile(model):
            try:
                self._history = self.logic.modelHistory(model)
            except ValueError as exc:
                self.ui.modelHistoryListWidget.addItem(str(exc))
        for version in self._history:
            self.ui.modelHistoryListWidget.addItem(version.describe())
        self.ui.modelHistoryListWidget.setCurrentRow(len(self._history) - 1)
        self.updateButtons()

    def onRevertModel(self) -> None:
        row = self.ui.modelHistoryListWidget.currentRow
        if not 0 <= row < len(self._history):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not go back to this model.")):
            self._parameterNode.segmentModel = pathlib.Path(self.logic.revertModel(self._history[row]))

    @staticmethod
    def _openSegmentEditor(segmentationNode, volumeNode) -> None:
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.SegmentEditorWidget.editor
        editor.setSegmentationNode(segmentationNode)
        if hasattr(editor, "setSourceVolumeNode"):
            editor.setSourceVolumeNode(volumeNode)
        else:  # Slicer < 5.2
            editor.setMasterVolumeNode(volumeNode)


class JobSection:
    """The running job: start watching it, poll it on the Widget's timer, cancel it, offer to resume."""

    def _watch(self, job, onSuccess: Callable[[Any], None]) -> None:
        self._monitor.watch(job, onSuccess)
        self.ui.jobLogTextEdit.clear()
        self.ui.jobProgressBar.value = 0
        self.ui.jobCollapsibleButton.collapsed = False
        self._timer.start()
        self.onPollJob()

    def onPollJob(self) -> None:
        update = self._monitor.poll()
        self.ui.jobProgressBar.value = update.percent
        if update.status:
            self.ui.jobStatusLabel.text = update.status
            slicer.util.showStatusMessage(update.status, 2 * POLL_INTERVAL_MS)
        for line in update.newLogLines:
            self.ui.jobLogTextEdit.appendPlainText(line)
        if update.finished:
            self._timer.stop()
        self.updateButtons()  # before any error dialog: a failed job leaves the panel usable
        if update.error:
            slicer.util.errorDisplay(update.error)

    def onCancel(self) -> None:
        message = self._monitor.cancel()  # returns at once; later polls end the whole process tree if needed
        if message:
            self.ui.jobStatusLabel.text = message

    def _askResume(self, output: Optional[str]) -> bool:
        """Offer to continue an interrupted run on the same output; otherwise its old state is discarded."""
        if not self.logic.resumeState(output):
            return False
        if slicer.util.confirmYesNoDisplay(_("An interrupted run left its state beside {output}. Continue that run? "
                                             "(No starts over.)").format(output=output)):
            return True
        self.logic.discardResumeState(output)
        return False
