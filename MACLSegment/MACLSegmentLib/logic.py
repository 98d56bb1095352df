"""The module's actions on MRML nodes; each long action returns a started :class:`BackgroundJob`.

Usable without any GUI (scripts, tests)::

    logic = CoreLogic()
    annotation = logic.createAnnotation(volumeNode)          # then paint it in the Segment Editor
    model = logic.runToCompletion(logic.finetune([(volumeNode, annotation)], None, "model.pt"))
    segmentation = logic.runToCompletion(logic.segment(otherVolumeNode, model))

The human-in-the-loop actions (suggest, correct, update, history) are in :mod:`humanloop`.
"""

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import slicer

from . import dependencies, scene_io, sequences
from .terminology import applyTerminology
from .errors import InputError, JobError
from .humanloop import ANNOTATION_ATTRIBUTE, HumanInTheLoopLogic, caseName
from .jobs import BackgroundJob, runToCompletion
from .options import FinetuneOptions, PretrainOptions, SegmentOptions
from .schema import defaultSchema, matchSegments, registeredSchemaName, writeSchemaFile

ANNOTATION_SUFFIX = " annotation"
RESULT_SUFFIX = " MACL segmentation"
MODEL_ATTRIBUTE = "MACLSegment.Model"
UNDO_ATTRIBUTES = (MODEL_ATTRIBUTE, ANNOTATION_ATTRIBUTE)  # what Segment sets on its output, restored by undo


def defaultPythonExecutable() -> str:
    """``PythonSlicer`` inside the Slicer application (Slicer's Python with its environment), else this Python."""
    if hasattr(slicer, "app"):
        found = shutil.which("PythonSlicer")
        if not found:
            raise JobError("PythonSlicer was not found next to Slicer; the installation looks incomplete")
        return found
    return sys.executable


@dataclass
class SegmentUndo:
    """What :meth:`CoreLogic.undoLastSegment` restores: the output node of the last Segment and, when Segment
    wrote into an existing node, that node's previous content (a deep copy of its ``vtkSegmentation``)."""

    nodeID: str
    created: bool  # True: Segment made this node (undo removes it)
    segmentation: Any = None  # vtkSegmentation deep copy of the previous content (existing node only)
    referenceVolumeID: Optional[str] = None
    transformID: Optional[str] = None
    attributes: Dict[str, Optional[str]] = field(default_factory=dict)


class CoreLogic(HumanInTheLoopLogic):
    """Every action of the module, taking MRML nodes and plain options.

    Args:
        scene: the MRML scene (default: ``slicer.mrmlScene`` at call time).
        applicationLogic: gives the Volumes and Segmentations module logics (default: the application's).
        pythonExecutable: Python that runs ``maclcore`` (default: :func:`defaultPythonExecutable`).
        temporaryFolder: where job folders are made (default: the system's temporary folder).
        environment: extra environment variables for the background processes.
        idle: passes the time while :meth:`runToCompletion` waits (default ``time.sleep``; in Slicer one that
            processes events).
    """

    def __init__(self, scene: Any = None, applicationLogic: Any = None, pythonExecutable: Optional[str] = None,
                 temporaryFolder: Optional[str] = None, environment: Optional[Dict[str, str]] = None,
                 idle: Optional[Callable[[float], None]] = None) -> None:
        self.idle = idle
        self._scene = scene
        self._applicationLogic = applicationLogic
        self._pythonExecutable = pythonExecutable
        self.temporaryFolder = temporaryFolder
        self.environment = dict(environment or {})
        self._segmentUndo: Optional[SegmentUndo] = None

    # -- context -----------------------------------------------------------------------------------------
    @property
    def scene(self) -> Any:
        return self._scene if self._scene is not None else slicer.mrmlScene

    @property
    def applicationLogic(self) -> Any:
        if self._applicationLogic is not None:
            return self._applicationLogic
        return slicer.app.applicationLogic()

    @property
    def pythonExecutable(self) -> str:
        return self._pythonExecutable or defaultPythonExecutable()

    def segmentationsLogic(self) -> Any:
        return scene_io.moduleLogic(self.applicationLogic, "Segmentations")

    def maclcoreCommand(self, subcommand: str, arguments: Sequence[str], processes: int = 1) -> List[str]:
        """``python -m maclcore SUBCOMMAND ...``; several processes run under torchrun (one per GPU)."""
        if processes > 1:
            launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        else:
            launcher = []
        return [self.pythonExecutable, *launcher, "-m", "maclcore", subcommand, *arguments]

    def _jobFolder(self) -> str:
        base = self.temporaryFolder or tempfile.gettempdir()
        os.makedirs(base, exist_ok=True)
        return tempfile.mkdtemp(prefix="MACLSegment-", dir=base)

    def _startJob(self, name: str, subcommand: str, arguments: List[str], folder: str, stoppable: bool = True,
                  processes: int = 1, finisher: Optional[Callable[[BackgroundJob], Any]] = None) -> BackgroundJob:
        stopFile = os.path.join(folder, "stop") if stoppable else None
        arguments = arguments + ["--progress", "json"] + (["--stop-file", stopFile] if stopFile else [])
        job = BackgroundJob(name, self.maclcoreCommand(subcommand, arguments, processes), stopFile=stopFile,
                            finisher=finisher, cleanupFolder=folder, environment=self.environment)
        try:
            return job.start()
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def runToCompletion(self, job: BackgroundJob, timeout: Optional[float] = None) -> Any:
        """Wait for a job (for scripts and tests; between polls ``idle`` runs) and return its result."""
        return runToCompletion(job, timeout, idle=getattr(self, "idle", None))

    # -- setup -------------------------------------------------------------------------------------------
    @staticmethod
    def checkDependencies(queryGpus: bool = True) -> dependencies.DependencyStatus:
        return dependencies.checkDependencies(queryGpus)

    def probeGpus(self) -> BackgroundJob:
        """The usable GPUs, found by a background process: importing torch and initialising CUDA take seconds,
        which must not freeze the GUI when the module opens. Result: ``dependencies.usableGpus()``'s list."""
        import json

        library = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (f"import json, sys; sys.path.insert(0, {library!r}); "
                "from MACLSegmentLib.dependencies import usableGpus; print(json.dumps(usableGpus()))")
        folder = self._jobFolder()

        def read(job: BackgroundJob) -> List[str]:
            for line in reversed(job.progress.messages):
                try:
                    found = json.loads(line)
                except ValueError:
                    continue
                if isinstance(found, list):
                    return [str(name) for name in found]
            raise JobError("the GPU check printed no result")

        job = BackgroundJob("GPU check", [self.pythonExecutable, "-c", code], finisher=read, cleanupFolder=folder,
                            environment=self.environment, stderrSink=lambda line: None)
        return job.start()

    @staticmethod
    def installDependencies(confirm: Callable[[str], bool], installTorch: Callable[[], None],
                            pipInstall: Callable[[str], None], **kwargs: Any) -> bool:
        return dependencies.installDependencies(confirm, installTorch, pipInstall, **kwargs)

    # -- pretrain ----------------------------------------------------------------------------------------
    @staticmethod
    def folderVolumes(folder: Optional[str]) -> List[str]:
        """The volume files directly in ``folder`` (the kinds MACLCore reads)."""
        if not folder:
            return []
        if not os.path.isdir(folder):
            raise InputError(f"{folder}: folder does not exist")
        from maclcore.io.volume import VOLUME_EXTENSIONS

        return sorted(os.path.join(folder, entry) for entry in os.listdir(folder)
                      if entry.lower().endswith(VOLUME_EXTENSIONS) and not entry.startswith("."))

    def pretrainInputSummary(self, volumeNodes: Sequence[Any], folder: Optional[str]) -> Tuple[int, int]:
        """(number of volumes, total bytes): scene volumes by their voxel data, folder files by file size."""
        files = self.folderVolumes(folder)
        volumeNodes = sequences.expandFrames(volumeNodes)
        size = sum(scene_io.volumeBytes(node) for node in volumeNodes) + sum(os.path.getsize(f) for f in files)
        return len(volumeNodes) + len(files), size

    def pretrain(self, volumeNodes: Sequence[Any], folder: Optional[str], outputPath: str,
                 options: Optional[PretrainOptions] = None) -> BackgroundJob:
        """Self-supervised pretraining on scene volumes and/or a folder's volumes; result: the model file."""
        options = options or PretrainOptions()
        volumeNodes = sequences.expandFrames(volumeNodes)  # a cine sequence: every frame
        files = self.folderVolumes(folder)
        if not volumeNodes and not files:
            raise InputError("Pretrain: no volumes; select volumes in the scene or a folder that holds volumes")
        outputPath = _checkOutput(outputPath, "Pretrain")
        jobFolder = self._jobFolder()
        inputs = [scene_io.writeVolume(node, os.path.join(jobFolder, "images", f"slicerscene{index:03d}.nrrd"))
                  for index, node in enumerate(volumeNodes)]
        arguments = ["--images", *inputs, *files, "--out", outputPath, *options.arguments()]
        return self._startJob("Pretraining", "pretrain", arguments, jobFolder, processes=options.gpus,
                              finisher=lambda job: _modelWritten(job, outputPath))

    @staticmethod
    def resumeState(outputPath: str) -> Optional[str]:
        """The interrupted run's state beside ``outputPath`` (``MODEL.resume.pt``), or None."""
        if not outputPath:
            return None
        from maclcore.io.naming import resume_path

        path = resume_path(os.path.abspath(os.fspath(outputPath)))
        return path if os.path.isfile(path) else None

    @classmethod
    def discardResumeState(cls, outputPath: str) -> None:
        """Delete an interrupted run's state, so that the next run starts over."""
        path = cls.resumeState(outputPath)
        if path:
            os.remove(path)

    # -- annotate ----------------------------------------------------------------------------------------
    def createAnnotation(self, volumeNode: Any, schema: Any = None) -> Any:
        """A new segmentation of ``volumeNode`` with the schema's segments, empty, ready for the Segment Editor."""
        if volumeNode is None:
            raise InputError("Annotate: no volume selected; choose the volumes to annotate")
        schema = schema or defaultSchema()
        node = scene_io.createSchemaSegmentation(self.scene, volumeNode, schema,
                                                 volumeNode.GetName() + ANNOTATION_SUFFIX)
        node.SetAttribute(ANNOTATION_ATTRIBUTE, "1")
        applyTerminology(node)
        return node

    @staticmethod
    def annotationPairs(segmentationNodes: Sequence[Any]) -> List[Tuple[Any, Any]]:
        """(volume, segmentation) for annotations made on a volume (their reference geometry)."""
        pairs = []
        for node in segmentationNodes:
            volume = scene_io.referenceVolume(node)
            if volume is None:
                raise InputError(f"'{node.GetName()}': no volume is linked to this segmentation; create "
                                 "annotations in the Annotate section")
            pairs.append((volume, node))
        return pairs

    def annotationLabels(self, volumeNode: Any, segmentationNode: Any, schema: Any = None) -> Any:
        """The annotation as a label map on the volume's grid, after checking schema and non-empty segments."""
        if volumeNode is None:
            raise InputError(f"'{segmentationNode.GetName()}': no volume selected for this annotation")
        segmentIds = matchSegments(segmentationNode, schema or defaultSchema())
        return scene_io.exportLabelMap(segmentationNode, segmentIds, volumeNode, self.segmentationsLogic())

    # -- finetune ----------------------------------------------------------------------------------------
    def finetune(self, pairs: Sequence[Tuple[Any, Any]], pretrainedModel: Optional[str], outputPath: str,
                 options: Optional[FinetuneOptions] = None, schema: Any = None, unlabelledNodes: Sequence[Any] = (),
                 unlabelledFolder: Optional[str] = None) -> BackgroundJob:
        """Train a segmentation model on annotated (volume, segmentation) pairs; result: the model file.

        ``unlabelledNodes`` (cine sequences: every frame) and the volumes of ``unlabelledFolder`` are learnt
        from too, by self-training (MACLCore's ``--unlabelled``); the annotated volumes among the nodes are
        left out, as they are learnt from with their labels."""
        options = options or FinetuneOptions()
        schema = schema or defaultSchema()
        pairs = [(volume, segmentation) for volume, segmentation in pairs if segmentation is not None]
        if not pairs:
            raise InputError("Finetune: no annotated cases selected")
        if pretrainedModel and not os.path.isfile(pretrainedModel):
            raise InputError(f"{pretrainedModel}: pretrained model file does not exist")
        outputPath = _checkOutput(outputPath, "Finetune")
        labelMaps = [self.annotationLabels(volume, segmentation, schema) for volume, segmentation in pairs]
        jobFolder = self._jobFolder()
        images, labels = os.path.join(jobFolder, "images"), os.path.join(jobFolder, "labels")
        names: List[str] = []
        for (volume, _), labelMap in zip(pairs, labelMaps):
            names.append(caseName(volume.GetName(), names))  # stable names: the model's lineage lists them
            scene_io.writeVolume(volume, os.path.join(images, f"{names[-1]}_0000.nrrd"))
            scene_io.writeLabelMap(labelMap, volume, os.path.join(labels, f"{names[-1]}.nrrd"))
        arguments = ["--images", images, "--labels", labels, "--out", outputPath,
                     "--labels-schema", registeredSchemaName(schema) or writeSchemaFile(schema, jobFolder)]
        # By identity: a sequence's frames live in its own scene, where node IDs may repeat the main scene's.
        annotated = [volume for volume, _ in pairs]
        others = [node for node in sequences.expandFrames(unlabelledNodes) if not any(node is v for v in annotated)]
        unlabelled = [scene_io.writeVolume(node, os.path.join(jobFolder, "unlabelled", f"slicerscene{index:03d}.nrrd"))
                      for index, node in enumerate(others)] + self.folderVolumes(unlabelledFolder)
        if unlabelled:
            arguments += ["--unlabelled", *unlabelled]
        if pretrainedModel:
            arguments += ["--init", pretrainedModel]
        return self._startJob("Finetuning", "finetune", arguments + options.arguments(), jobFolder,
                              finisher=lambda job: _modelWritten(job, outputPath))

    # -- segment -----------------------------------------------------------------------------------------
    def segment(self, volumeNode: Any, modelPath: str, options: Optional[SegmentOptions] = None,
                name: Optional[str] = None, annotation: bool = False, show3D: bool = False,
                outputNode: Any = None) -> BackgroundJob:
        """Segment a volume; the job's result is the segmentation node holding the model's named segments.

        ``outputNode``: None (default) makes a NEW segmentation node; an existing ``vtkMRMLSegmentationNode`` has
        its segments replaced, after a deep copy of its previous content is kept, so that
        :meth:`undoLastSegment` can restore it. ``name``: a new node's name (default: the volume's name +
        " MACL segmentation"); ``annotation``: mark the node as the volume's annotation (a prediction to correct,
        then train on); ``show3D``: also make the closed-surface representation, so the result shows in 3D.
        Cancelling the job stops ``maclcore predict`` through its stop file.
        """
        options = options or SegmentOptions()
        if volumeNode is None:
            raise InputError("Segment: no volume selected; choose the volume to segment")
        if outputNode is not None and (not outputNode.IsA("vtkMRMLSegmentationNode")
                                       or outputNode.GetScene() is not self.scene):
            raise InputError("Segment: the output must be a segmentation in the scene (or none: a new one)")
        if volumeNode.GetImageData() is None:
            raise InputError(f"'{volumeNode.GetName()}': the volume has no voxel data")
        if not modelPath:
            raise InputError("Segment: no model file selected")
        if not os.path.isfile(modelPath):
            raise InputError(f"{modelPath}: model file does not exist")
        jobFolder = self._jobFolder()
        image = scene_io.writeVolume(volumeNode, os.path.join(jobFolder, "image.nrrd"))
        result = os.path.join(jobFolder, "result.seg.nrrd")
        arguments = ["--model", modelPath, "--image", image, "--out", result, *options.arguments()]

        def load(job: BackgroundJob) -> Any:
            node = scene_io.loadSegmentation(result, volumeNode, name or volumeNode.GetName() + RESULT_SUFFIX,
                                             self.segmentationsLogic())
            if outputNode is None:
                self._segmentUndo = SegmentUndo(node.GetID(), created=True)
            else:
                node = self._replaceContent(outputNode, node, volumeNode)
            node.SetAttribute(MODEL_ATTRIBUTE, os.path.abspath(modelPath))
            applyTerminology(node)
            if show3D:
                node.CreateClosedSurfaceRepresentation()
            if annotation:
                node.SetAttribute(ANNOTATION_ATTRIBUTE, "1")
            return node

        return self._startJob("Segmentation", "predict", arguments, jobFolder, finisher=load)

    def _replaceContent(self, outputNode: Any, loaded: Any, volumeNode: Any) -> Any:
        """Move the segments of the freshly ``loaded`` node into ``outputNode`` (removing ``loaded``), keeping
        a deep copy of what ``outputNode`` held for :meth:`undoLastSegment`."""
        if outputNode.GetScene() is None:  # deleted while the job ran: nothing to write into
            _removeWithDisplay(self.scene, loaded)
            raise JobError(f"the output segmentation '{outputNode.GetName()}' was deleted while segmenting")
        previous = slicer.vtkSegmentation()
        previous.DeepCopy(outputNode.GetSegmentation())  # labelmaps, names, colours, tags, conversion parameters
        role = outputNode.GetReferenceImageGeometryReferenceRole()
        self._segmentUndo = SegmentUndo(outputNode.GetID(), created=False, segmentation=previous,
                                        referenceVolumeID=outputNode.GetNodeReferenceID(role),
                                        transformID=outputNode.GetTransformNodeID(),
                                        attributes={a: outputNode.GetAttribute(a) for a in UNDO_ATTRIBUTES})
        wasModifying = outputNode.StartModify()
        try:
            outputNode.GetSegmentation().DeepCopy(loaded.GetSegmentation())
            outputNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            outputNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        finally:
            outputNode.EndModify(wasModifying)
        if outputNode.GetDisplayNode() is None:
            outputNode.CreateDefaultDisplayNodes()
        _removeWithDisplay(self.scene, loaded)
        return outputNode

    @property
    def canUndoSegment(self) -> bool:
        """True when the last Segment's output can be undone (its node is still in the scene)."""
        undo = self._segmentUndo
        return undo is not None and self.scene.GetNodeByID(undo.nodeID) is not None

    def undoLastSegment(self) -> Any:
        """Undo the last Segment: a segmentation it created is removed (returns None); an existing output node
        gets its previous segments, reference volume, transform and attributes back (returns that node). One
        level of undo, consumed by the call."""
        undo, self._segmentUndo = self._segmentUndo, None
        node = self.scene.GetNodeByID(undo.nodeID) if undo is not None else None
        if node is None:
            raise InputError("Undo: there is no segmentation result to undo" if undo is None
                             else "Undo: the last segmentation result was deleted meanwhile")
        if undo.created:
            _removeWithDisplay(self.scene, node)
            return None
        wasModifying = node.StartModify()
        try:
            node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), undo.referenceVolumeID)
            node.GetSegmentation().DeepCopy(undo.segmentation)  # after the reference: this holds its geometry too
            node.SetAndObserveTransformNodeID(undo.transformID)
            for attribute, value in undo.attributes.items():
                if value is None:
                    node.RemoveAttribute(attribute)
                else:
                    node.SetAttribute(attribute, value)
        finally:
            node.EndModify(wasModifying)
        return node

    def segmentSequence(self, sequenceNode: Any, modelPath: str, options: Optional[SegmentOptions] = None,
                        frames: Optional[Sequence[int]] = None, name: Optional[str] = None) -> BackgroundJob:
        """Segment the chosen frames (0-based; default: all) of a volume sequence (cine MRI) in one job.

        The result is a NEW segmentation sequence (``vtkMRMLSequenceNode``) with the same index (name, unit,
        values) as the frames segmented, one segmentation per frame on that frame's grid; when a browser plays
        the volume sequence, the result is added to it, so it plays along.
        """
        if sequenceNode is None or not sequences.isVolumeSequence(sequenceNode):
            raise InputError("Segment: choose a sequence of volumes (cine MRI)")
        if not modelPath:
            raise InputError("Segment: no model file selected")
        if not os.path.isfile(modelPath):
            raise InputError(f"{modelPath}: model file does not exist")
        chosen = sequences.frames(sequenceNode, frames)
        jobFolder = self._jobFolder()
        images = [scene_io.writeVolume(volume, os.path.join(jobFolder, "images", f"frame{number:04d}.nrrd"))
                  for number, _, volume in chosen]
        results = os.path.join(jobFolder, "results")
        if len(images) == 1:
            outputs = [os.path.join(results, "frame.seg.nrrd")]
            out = ["--out", outputs[0]]
        else:
            from maclcore.io.naming import SEG_EXTENSION, case_name

            outputs = [os.path.join(results, case_name(image) + SEG_EXTENSION) for image in images]
            out = ["--out", results, "--format", SEG_EXTENSION.lstrip(".")]
        os.makedirs(results, exist_ok=True)
        arguments = ["--model", modelPath, "--image", *images, *out, *(options or SegmentOptions()).arguments()]
        baseName = name or sequenceNode.GetName() + RESULT_SUFFIX

        def load(job: BackgroundJob) -> Any:
            scene = self.scene
            result = scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName(baseName))
            result.SetIndexName(sequenceNode.GetIndexName())
            result.SetIndexUnit(sequenceNode.GetIndexUnit())
            result.SetIndexType(sequenceNode.GetIndexType())
            result.SetAttribute(MODEL_ATTRIBUTE, os.path.abspath(modelPath))
            unit = sequenceNode.GetIndexUnit()
            for (number, value, volume), path in zip(chosen, outputs):
                frame = scene_io.loadSegmentation(path, volume, f"{baseName} [{value}{unit}]",
                                                  self.segmentationsLogic())
                applyTerminology(frame)
                result.SetDataNodeAtValue(frame, value)  # the sequence keeps its own copy
                display = frame.GetDisplayNode()
                scene.RemoveNode(frame)
                if display is not None:
                    scene.RemoveNode(display)
            browser = sequences.browserOf(scene, sequenceNode)
            if browser is not None:
                browser.AddSynchronizedSequenceNode(result)
            return result

        # Cancel stops between frames (the stop file); the result sequence appears only for a finished job.
        return self._startJob("Segmentation", "predict", arguments, jobFolder, finisher=load)


def _removeWithDisplay(scene: Any, node: Any) -> None:
    """Remove a node and its display nodes (the scene does not remove those with it)."""
    displays = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    scene.RemoveNode(node)
    for display in displays:
        if display is not None and display.GetScene() is scene:
            scene.RemoveNode(display)


def _checkOutput(outputPath: str, action: str) -> str:
    if not outputPath:
        raise InputError(f"{action}: no output model file given")
    outputPath = os.path.abspath(os.fspath(outputPath))
    if os.path.isdir(outputPath):
        raise InputError(f"{outputPath}: is a folder; give a model file name such as model.pt")
    os.makedirs(os.path.dirname(outputPath), exist_ok=True)
    return outputPath


def _modelWritten(job: BackgroundJob, outputPath: str) -> str:
    if not os.path.isfile(outputPath):
        raise JobError(f"{job.name} finished but wrote no model file at {outputPath}")
    return outputPath
