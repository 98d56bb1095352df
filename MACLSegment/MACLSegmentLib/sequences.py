"""Cine MRI as a volume sequence: its frames, the sequence behind a browser's proxy volume, loading a 4D file.

Cardiac cine MRI usually loads into Slicer as a ``vtkMRMLSequenceNode`` of scalar volumes, shown through a
``vtkMRMLSequenceBrowserNode`` whose *proxy* volume (a normal volume in the scene) shows the current frame.
The frames themselves live in the sequence's own scene; they can be written to files like any volume.
"""

from typing import Any, List, Optional, Sequence, Tuple

from .errors import InputError


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
