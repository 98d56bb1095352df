"""Cine MRI as a volume sequence: its frames, the sequence behind a browser's proxy volume, loading a 4D file,
and the end-diastolic (ED) and end-systolic (ES) frames.

Cardiac cine MRI usually loads into Slicer as a ``vtkMRMLSequenceNode`` of scalar volumes, shown through a
``vtkMRMLSequenceBrowserNode`` whose *proxy* volume (a normal volume in the scene) shows the current frame.
The frames themselves live in the sequence's own scene; they can be written to files like any volume.
"""

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from .errors import InputError

LV_CAVITY = "LV cavity"  # the default schema's label whose volume tells ED (largest) from ES (smallest)
TIME_WORDS = ("time", "trigger")  # index names of a cine's frames that are times (DICOM Trigger Time)
TIME_UNITS = ("ms", "s")


def isVolumeSequence(node: Any) -> bool:
    """A sequence node whose frames are scalar volumes."""
    if node is None or not node.IsA("vtkMRMLSequenceNode") or node.GetNumberOfDataNodes() == 0:
        return False
    frame = node.GetNthDataNode(0)
    return frame is not None and frame.IsA("vtkMRMLScalarVolumeNode") and not frame.IsA("vtkMRMLLabelMapVolumeNode")


def frames(sequenceNode: Any, indices: Optional[Sequence[int]] = None) -> List[Tuple[int, str, Any]]:
    """(frame number, index value, volume node) of the chosen frames (default: all), in order."""
    count = sequenceNode.GetNumberOfDataNodes()
    chosen = range(count) if indices is None else list(indices)
    if not chosen:
        raise InputError(f"'{sequenceNode.GetName()}': no frame chosen")
    result = []
    for index in chosen:
        if not 0 <= int(index) < count:
            raise InputError(f"'{sequenceNode.GetName()}' has frames 1 to {count}; frame {int(index) + 1} does not "
                             "exist")
        result.append((int(index), sequenceNode.GetNthIndexValue(int(index)), sequenceNode.GetNthDataNode(int(index))))
    return result


def expandFrames(nodes: Sequence[Any]) -> List[Any]:
    """Volumes, with each volume sequence replaced by all its frames (e.g. to pretrain on every cine frame)."""
    expanded: List[Any] = []
    for node in nodes:
        if node is not None and node.IsA("vtkMRMLSequenceNode"):
            if not isVolumeSequence(node):
                raise InputError(f"'{node.GetName()}' is not a sequence of volumes")
            expanded.extend(frame for _, _, frame in frames(node))
        elif node is not None:
            expanded.append(node)
    return expanded


def browserOf(scene: Any, sequenceNode: Any) -> Optional[Any]:
    """The sequence browser that plays ``sequenceNode`` (None when none does)."""
    browsers = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    for index in range(browsers.GetNumberOfItems()):
        browser = browsers.GetItemAsObject(index)
        if browser.IsSynchronizedSequenceNodeID(sequenceNode.GetID(), True):
            return browser
    return None


def sequenceOfProxy(scene: Any, volumeNode: Any) -> Tuple[Optional[Any], Optional[Any], Optional[int]]:
    """(browser, sequence, current frame number) when ``volumeNode`` is the proxy of a volume sequence (a cine
    loaded with ``loadSequence`` shows as such a volume); (None, None, None) otherwise."""
    if volumeNode is None:
        return None, None, None
    browsers = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    for index in range(browsers.GetNumberOfItems()):
        browser = browsers.GetItemAsObject(index)
        sequence = browser.GetSequenceNode(volumeNode)
        if sequence is not None and isVolumeSequence(sequence):
            return browser, sequence, browser.GetSelectedItemNumber()
    return None, None, None


def loadVolumeSequence(scene: Any, path: str, name: Optional[str] = None) -> Any:
    """Read a 4D volume file (``.seq.nrrd``, 4D NRRD) into a new sequence node, as Slicer's sequence reader
    does (inside the application ``slicer.util.loadSequence`` also makes a browser and shows it)."""
    import os

    storage = scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    storage.SetFileName(path)
    base = os.path.basename(path)
    for suffix in (".seq.nrrd", ".seq.nhdr", ".nrrd", ".nhdr"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    node = scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName(name or base))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node) or node.GetNumberOfDataNodes() == 0:
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError(f"{path}: not a volume sequence Slicer can read")
    return node


@dataclass(frozen=True)
class CardiacPhases:
    """The end-diastolic and end-systolic frames of a cine (0-based frame numbers) and how they were found.

    ``method``: ``lv-volume`` (from a segmentation sequence), ``trigger-time`` or ``image-difference`` (from the
    images alone); ``lvVolumes``: the LV cavity volume of each frame in mL (``lv-volume`` only).
    """

    ed: int
    es: int
    method: str
    lvVolumes: Optional[Tuple[float, ...]] = None


def segmentVolumeMl(segmentationNode: Any, segmentName: str) -> float:
    """Volume in mL of the segment named ``segmentName`` (case-insensitive): its voxels in the binary labelmap
    (which may be shared with other segments: only the segment's own label value counts) times the voxel size."""
    import numpy as np
    from vtk.util.numpy_support import vtk_to_numpy

    segmentation = segmentationNode.GetSegmentation()
    segmentId = None
    for index in range(segmentation.GetNumberOfSegments()):
        if segmentation.GetNthSegment(index).GetName().lower() == segmentName.lower():
            segmentId = segmentation.GetNthSegmentID(index)
            break
    if segmentId is None:
        raise InputError(f"'{segmentationNode.GetName()}' has no segment named '{segmentName}'")
    labelmapName = "Binary labelmap"
    if not segmentation.ContainsRepresentation(labelmapName):
        segmentation.CreateRepresentation(labelmapName)
    image = segmentation.GetSegment(segmentId).GetRepresentation(labelmapName)
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None:
        return 0.0
    voxels = int(np.count_nonzero(vtk_to_numpy(scalars) == segmentation.GetSegment(segmentId).GetLabelValue()))
    return voxels * float(np.prod(image.GetSpacing())) / 1000.0  # mm^3 -> mL


def _isTimeIndex(sequenceNode: Any) -> bool:
    name, unit = sequenceNode.GetIndexName().lower(), sequenceNode.GetIndexUnit().lower()
    numeric = sequenceNode.GetIndexType() == sequenceNode.NumericIndex
    return numeric and (any(word in name for word in TIME_WORDS) or unit in TIME_UNITS)


def _frameArray(volumeNode: Any) -> Any:
    import numpy as np
    from vtk.util.numpy_support import vtk_to_numpy

    image = volumeNode.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"'{volumeNode.GetName()}': the frame has no voxel data")
    return vtk_to_numpy(image.GetPointData().GetScalars()).astype(np.float64)


def cardiacPhases(volumeSequence: Any = None, segmentationSequence: Any = None,
                  lvName: str = LV_CAVITY) -> CardiacPhases:
    """Choose the ED and ES frames of a cardiac cine.

    With a segmentation sequence (one segmentation per frame, e.g. from :meth:`CoreLogic.segmentSequence`): ED is
    the frame with the largest LV cavity volume, ES the one with the smallest (the first such frame on ties).
    Otherwise, from the volume sequence alone: ED is the first frame in time (the smallest trigger time when the
    frames' index is a time, as a DICOM cine's Trigger Time is: an ECG-triggered cine starts at the R wave, i.e.
    at end-diastole; else frame 0), and ES the frame that differs most from ED (mean absolute intensity
    difference: the heart is most contracted at end-systole). The image rule is a heuristic; a segmentation
    sequence gives the clinical definition.
    """
    if segmentationSequence is not None:
        count = segmentationSequence.GetNumberOfDataNodes()
        if count == 0:
            raise InputError(f"'{segmentationSequence.GetName()}' has no frames")
        volumes = []
        for index in range(count):
            frame = segmentationSequence.GetNthDataNode(index)
            if frame is None or not frame.IsA("vtkMRMLSegmentationNode"):
                raise InputError(f"'{segmentationSequence.GetName()}' is not a sequence of segmentations")
            volumes.append(segmentVolumeMl(frame, lvName))
        if max(volumes) <= 0:
            raise InputError(f"'{segmentationSequence.GetName()}': the {lvName} is empty in every frame")
        return CardiacPhases(ed=volumes.index(max(volumes)), es=volumes.index(min(volumes)), method="lv-volume",
                             lvVolumes=tuple(volumes))
    if volumeSequence is None or not isVolumeSequence(volumeSequence):
        raise InputError("ED/ES: choose a sequence of volumes (cine MRI) or a segmentation sequence")
    count = volumeSequence.GetNumberOfDataNodes()
    method, ed = "image-difference", 0
    if _isTimeIndex(volumeSequence):
        try:
            times = [float(volumeSequence.GetNthIndexValue(i)) for i in range(count)]
            ed, method = times.index(min(times)), "trigger-time"
        except ValueError:  # an index value that is not a number: fall back to frame order
            pass
    reference = _frameArray(volumeSequence.GetNthDataNode(ed))
    differences = []
    for index in range(count):
        frame = _frameArray(volumeSequence.GetNthDataNode(index))
        if frame.shape != reference.shape:
            raise InputError(f"'{volumeSequence.GetName()}': frame {index + 1} has another size than frame {ed + 1}")
        differences.append(float(abs(frame - reference).mean()))
    es = differences.index(max(differences)) if count > 1 else ed
    return CardiacPhases(ed=ed, es=es, method=method)


# What Segment does with a volume shown from a cine sequence (the values of the panel's "Cine frames" choice).
SHOWN_FRAME, ED_AND_ES, EVERY_FRAME = "shown frame", "ED and ES", "every frame"
FRAME_CHOICES = (SHOWN_FRAME, ED_AND_ES, EVERY_FRAME)


def framesToSegment(choice: str, sequenceNode: Any, shownFrame: int) -> Optional[List[int]]:
    """The frames (0-based) Segment segments for ``choice``; None means every frame."""
    if choice == EVERY_FRAME:
        return None
    if choice == SHOWN_FRAME:
        return [int(shownFrame)]
    if choice == ED_AND_ES:
        phases = cardiacPhases(volumeSequence=sequenceNode)
        return sorted({phases.ed, phases.es})
    raise ValueError(f"unknown choice of cine frames {choice!r} (one of {', '.join(FRAME_CHOICES)})")

