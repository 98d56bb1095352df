"""Human in the loop: suggest the next case, correct the model's prediction, update the model, go back.

The actions of the Annotate section's lower half, mixed into :class:`logic.CoreLogic` (they use its job
machinery) and, like it, usable without a GUI::

    job = logic.suggestCases("model.pt")                  # background ``maclcore suggest``
    suggestions = logic.runToCompletion(job)              # [Suggestion], best first
    volume = logic.scene.GetNodeByID(suggestions[0].volumeNodeID)
    correction = logic.runToCompletion(logic.loadSuggestion(volume, "model.pt"))  # a NEW node to edit
    ...                                                   # the user corrects it in the Segment Editor
    newModel = logic.runToCompletion(logic.acceptCorrections("model.pt"))  # -> model-002.pt
    history = logic.modelHistory(newModel)                # [ModelVersion], oldest first
    earlier = logic.revertModel(history[0])               # its path, after checking the file is unchanged

Every annotated case takes part in each update (the new one and all earlier ones), and each update
continues from the current model and writes a NEW numbered file beside it, so that no model is ever
overwritten and each one records where it came from (``maclcore.io.lineage``).
"""

import json
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from . import scene_io
from .errors import InputError
from .options import FinetuneOptions, SegmentOptions, SuggestOptions

ANNOTATION_ATTRIBUTE = "MACLSegment.Annotation"  # "1" on segmentations that are annotations of their volume
CORRECTION_SUFFIX = " correction"


@dataclass(frozen=True)
class Suggestion:
    """One ranked volume: scores as ``maclcore suggest`` gives them (uncertainty in cm^2 per slice)."""

    rank: int
    volumeNodeID: str
    name: str
    uncertainty: float
    diversity: float
    score: float
    nearest: Optional[str] = None

    def describe(self) -> str:
        text = (f"{self.rank}. {self.name}: score {self.score:.2f} (uncertainty {self.uncertainty:.2f}, "
                f"diversity {self.diversity:.2f}")
        return text + (f", nearest {self.nearest})" if self.nearest else ")")


@dataclass(frozen=True)
class ModelVersion:
    """One generation of the current model's history (oldest first); ``expectedSha256`` is the hash its child
    recorded (None for the current model itself)."""

    generation: int
    path: str
    created: str
    cases: Tuple[str, ...]
    addedCases: Tuple[str, ...]
    valDice: Optional[float]
    expectedSha256: Optional[str]
    current: bool

    @property
    def exists(self) -> bool:
        return os.path.isfile(self.path)

    def describe(self) -> str:
        count = f"{len(self.cases)} case" + ("" if len(self.cases) == 1 else "s")
        parts = [f"v{self.generation}", (self.created or "")[:16].replace("T", " "), count]
        if self.addedCases and self.generation > 1:
            parts[-1] += f" (+{', '.join(self.addedCases[:3])}{' ...' if len(self.addedCases) > 3 else ''})"
        if self.valDice is not None:
            parts.append(f"validation Dice {self.valDice:.3f}")
        parts.append(os.path.basename(self.path) + (" [current]" if self.current else "")
                     + ("" if self.exists else " [file missing]"))
        return " · ".join(p for p in parts if p)


def nextModelPath(currentModel: str) -> str:
    """``model.pt`` -> ``model-002.pt``: MACLCore's rule (``maclcore.io.naming``), so an update never
    overwrites a model."""
    from maclcore.io.naming import next_model_path

    return next_model_path(currentModel)


class HumanInTheLoopLogic:
    """Mixin of :class:`logic.CoreLogic`: needs its ``scene``, ``_jobFolder``, ``_startJob``, ``segment``,
    ``finetune`` and ``annotationPairs``."""

    # -- which cases are annotated -----------------------------------------------------------------------
    def annotationNodes(self) -> List[Any]:
        """Segmentations marked as annotations (made by Annotate or loaded for correction) that have a volume."""
        nodes = self.scene.GetNodesByClass("vtkMRMLSegmentationNode")
        found = [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
        return [n for n in found if n.GetAttribute(ANNOTATION_ATTRIBUTE) == "1"
                and scene_io.referenceVolume(n) is not None]

    def annotatedVolumes(self) -> List[Any]:
        volumes = []
        for node in self.annotationNodes():
            volume = scene_io.referenceVolume(node)
            if all(volume is not v for v in volumes):
                volumes.append(volume)
        return volumes

    def suggestionCandidates(self, volumeNodes: Optional[Sequence[Any]] = None) -> List[Any]:
        """The volumes to rank: those given (default: every scalar volume in the scene), except label maps,
        volumes without voxels and volumes that already have an annotation."""
        if volumeNodes is None:
            nodes = self.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
            volumeNodes = [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
        annotated = self.annotatedVolumes()
        return [v for v in volumeNodes if v is not None and not v.IsA("vtkMRMLLabelMapVolumeNode")
                and v.GetImageData() is not None and all(v is not a for a in annotated)]

    # -- suggest -----------------------------------------------------------------------------------------
    def suggestCases(self, modelPath: str, volumeNodes: Optional[Sequence[Any]] = None,
                     options: Optional[SuggestOptions] = None) -> Any:
        """Rank the candidate volumes for annotation with the current model; result: [Suggestion], best first."""
        options = options or SuggestOptions()
        _checkModel(modelPath, "Suggest")
        candidates = self.suggestionCandidates(volumeNodes)
        if not candidates:
            raise InputError("Suggest: no volume left to suggest; load volumes that are not annotated yet")
        labelled = self.annotatedVolumes()
        jobFolder = self._jobFolder()
        names = {}
        for prefix, nodes in (("candidate", candidates), ("labelled", labelled)):
            for index, node in enumerate(nodes):
                names[f"{prefix}{index:03d}"] = node
                scene_io.writeVolume(node, os.path.join(jobFolder, prefix, f"{prefix}{index:03d}.nrrd"))
        report = os.path.join(jobFolder, "suggestions.json")
        arguments = ["--model", modelPath, "--images", os.path.join(jobFolder, "candidate"), "--json", report]
        if labelled:
            arguments += ["--labelled", os.path.join(jobFolder, "labelled")]

        def read(job: Any) -> List[Suggestion]:
            with open(report, encoding="utf-8") as handle:
                ranking = json.load(handle)["ranking"]
            return [Suggestion(rank=r["rank"], volumeNodeID=names[r["case"]].GetID(), name=names[r["case"]].GetName(),
                               uncertainty=r["uncertainty"], diversity=r["diversity"], score=r["score"],
                               nearest=names[r["nearest"]].GetName() if r.get("nearest") in names else None)
                    for r in ranking]

        # Cancel stops between volumes (the stop file); no ranking is shown for a stopped job.
        return self._startJob("Suggestion", "suggest", arguments + options.arguments(), jobFolder, finisher=read)

    def loadSuggestion(self, volumeNode: Any, modelPath: str, options: Optional[SegmentOptions] = None) -> Any:
        """Segment a suggested volume; result: a NEW segmentation, marked as its annotation, to correct."""
        _checkModel(modelPath, "Load suggestion")
        return self.segment(volumeNode, modelPath, options, name=volumeNode.GetName() + CORRECTION_SUFFIX
                            if volumeNode is not None else None, annotation=True)

    # -- learn from the corrections ----------------------------------------------------------------------
    def acceptCorrections(self, currentModel: Optional[str], options: Optional[FinetuneOptions] = None,
                          schema: Any = None, pretrainedModel: Optional[str] = None,
                          outputPath: Optional[str] = None) -> Any:
        """Finetune on every annotated case, continuing from ``currentModel`` into a new numbered file beside it
        (without a current model: from ``pretrainedModel`` or from scratch, into ``outputPath``).
        Result: the new model's path."""
        if currentModel:
            _checkModel(currentModel, "Accept correction")
            init, output = currentModel, nextModelPath(currentModel)
        else:
            init, output = pretrainedModel, outputPath
        pairs, skipped = self.paintedAnnotationPairs()
        if not pairs:
            detail = f" ({', '.join(skipped)} not painted yet)" if skipped else ""
            raise InputError("Accept correction: no annotated cases" + detail + "; load a suggestion or create "
                             "and paint an annotation")
        job = self.finetune(pairs, init, output, options, schema)
        job.skippedAnnotations = skipped
        if skipped:
            job.logLines.append("Left out (nothing painted yet): " + ", ".join(skipped))
        return job

    def paintedAnnotationPairs(self) -> Tuple[List[Tuple[Any, Any]], List[str]]:
        """(volume, annotation) of every annotation with something painted, and the names of those left out
        because nothing is painted in them yet (an annotation just created must not block an update; a
        partly painted one still stops it, naming its empty segment)."""
        segmentations = self.segmentationsLogic()
        pairs, skipped = [], []
        for volume, node in self.annotationPairs(self.annotationNodes()):
            if scene_io.isUnpainted(node, volume, segmentations):
                skipped.append(node.GetName())
            else:
                pairs.append((volume, node))
        return pairs, skipped

    # -- history -------------------------------------------------------------------------------------------
    @staticmethod
    def modelHistory(modelPath: str) -> List[ModelVersion]:
        """The generations the model file records, oldest first, the model itself last."""
        from maclcore.errors import MaclError
        from maclcore.io.lineage import read_lineage

        _checkModel(modelPath, "Model history")
        try:
            lineage = read_lineage(modelPath)
        except MaclError as exc:
            raise InputError(str(exc)) from None
        versions = []
        for index, generation in enumerate(lineage):
            last = index == len(lineage) - 1
            child = None if last else lineage[index + 1].get("parent") or {}
            path = os.path.abspath(modelPath) if last else child.get("path") or generation.get("output", "")
            versions.append(ModelVersion(
                generation=int(generation.get("generation", index + 1)), path=path,
                created=str(generation.get("created") or ""), cases=tuple(generation.get("cases", [])),
                addedCases=tuple(generation.get("added_cases", [])), valDice=generation.get("val_dice"),
                expectedSha256=None if last else child.get("sha256"), current=last))
        return versions

    @staticmethod
    def revertModel(version: ModelVersion) -> str:
        """The path of an earlier model to make current, after checking it is the very file its child started
        from (InputError when it is gone or has changed)."""
        from maclcore.io.checkpoint import file_sha256

        if not version.exists:
            raise InputError(f"{version.path}: model v{version.generation} is no longer there")
        if version.expectedSha256 and file_sha256(version.path) != version.expectedSha256:
            raise InputError(f"{version.path}: the file has changed since model v{version.generation + 1} was "
                             "trained from it; it is not the model of this history")
        return version.path


def _checkModel(modelPath: Optional[str], action: str) -> None:
    if not modelPath:
        raise InputError(f"{action}: no model file selected; finetune a model first")
    if not os.path.isfile(modelPath):
        raise InputError(f"{modelPath}: model file does not exist")


def caseName(name: str, taken: Sequence[str]) -> str:
    """A file-safe case name from a node name, unique among ``taken``, that MACLCore reads back unchanged
    (``maclcore.io.naming``: never ending in the ``_NNNN`` of an image channel)."""
    from maclcore.io.naming import safe_case_name

    return safe_case_name(name, taken)
