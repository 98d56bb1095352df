"""What the self-tests stand on: their context, phantom data, a simulated annotator and result checks."""

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import slicer
import vtk

from . import scene_io
from .errors import InputError
from .logic import CoreLogic

GEOMETRY_TOLERANCE = 1e-4
# One CPU thread per test job: with other processes sharing 2 cores, the walkthrough's finetune took 32 s
# with one thread and 210 s with two (OpenMP threads spin against each other); the Dice was the same.
TEST_JOB_ENVIRONMENT = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class SelfTestContext:
    """Where the tests run: a scene with its application logic, a scratch folder, and the job's Python."""

    scene: Any
    applicationLogic: Any
    folder: str
    pythonExecutable: Optional[str] = None
    environment: Dict[str, str] = field(default_factory=lambda: dict(TEST_JOB_ENVIRONMENT))
    log: Callable[[str], None] = print
    idle: Callable[[float], None] = time.sleep  # inside Slicer: process events while waiting for a job

    def logic(self) -> CoreLogic:
        return CoreLogic(scene=self.scene, applicationLogic=self.applicationLogic,
                         pythonExecutable=self.pythonExecutable, temporaryFolder=os.path.join(self.folder, "jobs"),
                         environment=self.environment, idle=self.idle)


def check(condition: bool, message: str) -> None:
    """An assertion that survives ``python -O``."""
    if not condition:
        raise AssertionError(message)


def expectInputError(action: Callable[[], Any], *fragments: str) -> str:
    """Run ``action``; it must raise InputError (a ValueError) whose message holds every fragment."""
    try:
        action()
    except InputError as exc:
        message = str(exc)
        for fragment in fragments:
            check(fragment.lower() in message.lower(), f"error message {message!r} lacks {fragment!r}")
        check("\n" not in message, f"error message is not one line: {message!r}")
        return message
    raise AssertionError(f"expected an InputError mentioning {fragments}")


# -- data ------------------------------------------------------------------------------------------------
def writePhantom(folder: str, seed: int, oblique: bool = False) -> Tuple[str, Any]:
    """A synthetic short-axis phantom as NIfTI; returns (path, Phantom with the true labels)."""
    from maclcore.data.phantom import make_phantom
    from maclcore.io.volume import write_volume

    phantom = make_phantom(seed, oblique=oblique)
    path = os.path.join(folder, f"phantom{seed}.nii.gz")
    write_volume(phantom.image, phantom.geometry, path)
    return path, phantom


def loadVolume(context: SelfTestContext, path: str, name: str) -> Any:
    node = scene_io.moduleLogic(context.applicationLogic, "Volumes").AddArchetypeVolume(path, name)
    check(node is not None, f"could not load {path}")
    return node


def loadPhantoms(context: SelfTestContext, seeds: Tuple[int, ...], oblique: bool = False) -> List[Tuple[Any, Any]]:
    """(volume node, phantom) per seed, loaded as Slicer loads a file."""
    loaded = []
    for seed in seeds:
        path, phantom = writePhantom(os.path.join(context.folder, "data"), seed, oblique)
        loaded.append((loadVolume(context, path, f"phantom{seed}"), phantom))
    return loaded


# -- simulated annotator: stands in for a person painting in the Segment Editor ---------------------------
def paintFromTruth(context: SelfTestContext, segmentationNode: Any, volumeNode: Any, labels: Any,
                   segmentIds: List[str]) -> None:
    """Fill the segments (label 1 -> segmentIds[0], ...) from a true label map on the volume's grid."""
    labelMap = scene_io._labelMapLike(volumeNode)
    context.scene.AddNode(labelMap)
    try:
        slicer.util.updateVolumeFromArray(labelMap, labels.astype("uint8"))
        ids = vtk.vtkStringArray()
        for segmentId in segmentIds:
            ids.InsertNextValue(segmentId)
        segmentations = scene_io.moduleLogic(context.applicationLogic, "Segmentations")
        check(segmentations.ImportLabelmapToSegmentationNode(labelMap, segmentationNode, ids), "import failed")
    finally:
        context.scene.RemoveNode(labelMap)


# -- checks of a result ------------------------------------------------------------------------------------
def diceScores(prediction: Any, truth: Any, count: int) -> List[float]:
    import numpy as np

    scores = []
    for value in range(1, count + 1):
        a, b = prediction == value, truth == value
        total = int(a.sum() + b.sum())
        scores.append(1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total)
    return scores


def _matrix(getter: Callable[[Any], None]) -> Any:
    import numpy as np

    matrix = vtk.vtkMatrix4x4()
    getter(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def checkGeometry(segmentationNode: Any, volumeNode: Any, labels: Any, labelMapNode: Any) -> None:
    """Each segment lies on the volume's voxel grid; the export on the volume has its shape and matrix."""
    import numpy as np

    volumeMatrix = _matrix(volumeNode.GetIJKToRASMatrix)
    volumeExtent = volumeNode.GetImageData().GetExtent()
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        image = segmentation.GetNthSegment(index).GetRepresentation("Binary labelmap")
        check(image is not None, "a result segment has no binary labelmap")
        check(np.allclose(_matrix(image.GetImageToWorldMatrix), volumeMatrix, atol=GEOMETRY_TOLERANCE),
              "a result segment is not on the volume's voxel grid (spacing/origin/direction differ)")
        extent = image.GetExtent()
        inside = all(volumeExtent[2 * a] <= extent[2 * a] and extent[2 * a + 1] <= volumeExtent[2 * a + 1]
                     for a in range(3))
        check(inside, f"a result segment's extent {extent} exceeds the volume's {volumeExtent}")
    check(labels.shape == slicer.util.arrayFromVolume(volumeNode).shape, "exported shape differs from the volume")
    check(np.allclose(labelMapNode.GetSpacing(), volumeNode.GetSpacing(), atol=GEOMETRY_TOLERANCE), "spacing")
    check(np.allclose(labelMapNode.GetOrigin(), volumeNode.GetOrigin(), atol=GEOMETRY_TOLERANCE), "origin")
    check(np.allclose(_matrix(labelMapNode.GetIJKToRASDirectionMatrix), _matrix(volumeNode.GetIJKToRASDirectionMatrix),
                      atol=GEOMETRY_TOLERANCE), "direction")


def resultLabels(context: SelfTestContext, segmentationNode: Any, volumeNode: Any, schema: Any) -> Tuple[Any, Any]:
    """The result as a label map in schema order exported on the volume, and the labelmap node used."""
    segmentation = segmentationNode.GetSegmentation()
    ids = vtk.vtkStringArray()
    for name in schema.names:
        ids.InsertNextValue(segmentation.GetSegmentIdBySegmentName(name))
    labelMap = context.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    segmentations = scene_io.moduleLogic(context.applicationLogic, "Segmentations")
    check(segmentations.ExportSegmentsToLabelmapNode(segmentationNode, ids, labelMap, volumeNode), "export failed")
    return slicer.util.arrayFromVolume(labelMap).copy(), labelMap


def checkNamesAndColors(segmentationNode: Any, schema: Any) -> None:
    found = scene_io.segmentNamesAndColors(segmentationNode)
    check([name for name, _ in found] == list(schema.names), f"segment names {found} differ from {schema.names}")
    for (name, color), expected in zip(found, schema.colors):
        check(all(abs(a - b) < 1e-3 for a, b in zip(color, expected)), f"colour of {name}: {color} != {expected}")
