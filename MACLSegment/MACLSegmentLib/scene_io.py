"""Moving data between the MRML scene and the files the background process reads and writes.

Volumes go out as NRRD written by Slicer's own storage node (so the geometry is exactly Slicer's),
annotations go out as label maps on their volume's grid in schema order, and predictions come back as
``.seg.nrrd`` loaded into a new segmentation node.
"""

import os
from typing import Any, List, Sequence

import slicer
import vtk

from .errors import InputError


def moduleLogic(applicationLogic: Any, name: str) -> Any:
    """A registered C++ module logic (``Volumes``, ``Segmentations``) of the application logic."""
    logic = applicationLogic.GetModuleLogic(name) if applicationLogic is not None else None
    if logic is None:
        raise RuntimeError(f"the {name} module logic is not available")
    return logic


def writeVolume(volumeNode: Any, path: str) -> str:
    """Write a volume (scalar or label map) with its geometry, uncompressed for speed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    storage.SetUseCompression(False)
    if not storage.WriteData(volumeNode):
        raise OSError(f"{path}: could not write volume '{volumeNode.GetName()}'")
    return path


def volumeBytes(volumeNode: Any) -> int:
    """Size of a volume's voxel data in memory."""
    image = volumeNode.GetImageData() if volumeNode is not None else None
    if image is None:
        return 0
    scalars = image.GetPointData().GetScalars()
    return 0 if scalars is None else scalars.GetNumberOfValues() * scalars.GetDataTypeSize()


def _labelMapLike(volumeNode: Any) -> Any:
    node = slicer.vtkMRMLLabelMapVolumeNode()
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    return node


def segmentMask(segmentationNode: Any, segmentId: str, referenceVolume: Any, segmentationsLogic: Any) -> Any:
    """A segment as a boolean numpy array (k, j, i) on the reference volume's grid."""
    scene = segmentationNode.GetScene()
    labelMap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentId)
        if not segmentationsLogic.ExportSegmentsToLabelmapNode(segmentationNode, ids, labelMap, referenceVolume):
            raise RuntimeError(f"could not export segment {segmentId} of '{segmentationNode.GetName()}'")
        return slicer.util.arrayFromVolume(labelMap) > 0
    finally:
        scene.RemoveNode(labelMap)


def isUnpainted(segmentationNode: Any, referenceVolume: Any, segmentationsLogic: Any) -> bool:
    """True when no segment of the segmentation has a single voxel on the reference grid."""
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        if segmentMask(segmentationNode, segmentId, referenceVolume, segmentationsLogic).any():
            return False
    return True


def exportLabelMap(segmentationNode: Any, segmentIds: Sequence[str], referenceVolume: Any,
                   segmentationsLogic: Any) -> Any:
    """Label map (uint8, k j i) on the reference grid: segment ``segmentIds[i]`` gets value ``i + 1``.

    Raises InputError naming the segment when one is empty (an unpainted structure would teach the model
    that it is background).
    """
    import numpy as np

    shape = slicer.util.arrayFromVolume(referenceVolume).shape
    labels = np.zeros(shape, dtype=np.uint8)
    segmentation = segmentationNode.GetSegmentation()
    for value, segmentId in enumerate(segmentIds, start=1):
        mask = segmentMask(segmentationNode, segmentId, referenceVolume, segmentationsLogic)
        if not mask.any():
            name = segmentation.GetSegment(segmentId).GetName()
            raise InputError(f"'{segmentationNode.GetName()}': segment '{name}' is empty; paint it in the "
                             "Segment Editor or leave this case out")
        labels[mask] = value
    return labels


def writeLabelMap(labels: Any, referenceVolume: Any, path: str) -> str:
    """Write a (k, j, i) label array on the reference volume's grid."""
    node = _labelMapLike(referenceVolume)
    slicer.util.updateVolumeFromArray(node, labels)
    return writeVolume(node, path)


def createSchemaSegmentation(scene: Any, volumeNode: Any, schema: Any, name: str) -> Any:
    """A new segmentation on the volume's grid with one empty segment per schema label, in label order."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    segmentation = node.GetSegmentation()
    for label, color in zip(schema.names, schema.colors):
        segmentation.AddEmptySegment("", label, [float(c) for c in color])
    return node


def referenceVolume(segmentationNode: Any) -> Any:
    """The volume whose grid a segmentation was created on (None when it has none)."""
    return segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())


def loadSegmentation(path: str, volumeNode: Any, name: str, segmentationsLogic: Any) -> Any:
    """Load a ``.seg.nrrd`` into a NEW segmentation node, named uniquely, on the volume's grid, shown."""
    node = segmentationsLogic.LoadSegmentationFromFile(path, False)
    if node is None:
        raise OSError(f"{path}: could not load the segmentation")
    scene = node.GetScene()
    node.SetName(scene.GenerateUniqueName(name))
    storage = node.GetStorageNode()
    if storage is not None:
        # The file is temporary: without a storage node Slicer treats the result as new data to save.
        node.SetAndObserveStorageNodeID(None)
        scene.RemoveNode(storage)
    node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())  # lies where its volume lies
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetVisibility(True)
    return node


def segmentNamesAndColors(segmentationNode: Any) -> List[tuple]:
    """(name, (r, g, b)) of each segment, in order."""
    segmentation = segmentationNode.GetSegmentation()
    result = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        result.append((segment.GetName(), tuple(segment.GetColor())))
    return result
