"""The module's saved settings: names, types and defaults, and their storage in the parameter node.

In Slicer the Widget reads and writes these through the ``@parameterNodeWrapper`` class in
``MACLSegment.py`` (whose fields must equal :data:`FIELDS`; a test checks it). This file stores values
exactly as that wrapper's serializers do (numbers and paths as text, booleans as ``True``/``False``, nodes
as node references), so that scripts and the headless tests read and write the same parameter node.
"""

import pathlib
from dataclasses import dataclass
from typing import Any, Dict, List

MODULE_NAME = "MACLSegment"


@dataclass(frozen=True)
class Field:
    """One setting: ``kind`` is int, float, str, bool, path or node (a node class name in ``nodeClass``)."""

    name: str
    kind: str
    default: Any = None
    nodeClass: str = ""


FIELDS = (
    Field("device", "str", "auto"),
    Field("gpuCount", "int", 1),
    Field("pretrainFolder", "path", pathlib.Path()),
    Field("pretrainEpochs", "int", 0),  # 0: not set, MACLCore's default applies (options.optionalCount)
    Field("pretrainTimeBudget", "float", 0.0),  # minutes; 0: not set (options.optionalMinutes)
    Field("pretrainBatchSize", "int", 0),
    Field("pretrainOutput", "path", pathlib.Path()),
    Field("schemaText", "str", ""),
    Field("finetunePretrained", "path", pathlib.Path()),
    Field("finetuneEpochs", "int", 0),
    Field("finetuneTimeBudget", "float", 0.0),
    Field("finetuneUseUnlabelled", "bool", True),  # self-training on the Pretrain volumes
    Field("finetuneOutput", "path", pathlib.Path()),
    Field("segmentModel", "path", pathlib.Path()),
    Field("segmentVolume", "node", None, "vtkMRMLScalarVolumeNode"),
    Field("segmentFrames", "str", "shown frame"),  # sequences.FRAME_CHOICES
    Field("segmentShow3D", "bool", False),
    Field("segmentOutput", "node", None, "vtkMRMLSegmentationNode"),  # None: Segment makes a new segmentation
)
# The ticked nodes of the checkable selectors (not parameterNodeWrapper fields: it has no connector for
# qMRMLCheckableNodeComboBox), kept as node references of these roles so that they are saved with the scene.
CHECKED_NODE_ROLES = {"pretrainVolumes": "pretrainVolumesComboBox", "annotateVolumes": "annotateVolumesComboBox",
                      "finetuneSegmentations": "finetuneSegmentationsComboBox"}
FIELDS_BY_NAME = {field.name: field for field in FIELDS}


def pathOrNone(value: Any) -> Any:
    """A path parameter as a string, or None when unset (the wrapper's empty Path reads as ``.``)."""
    text = str(value) if value is not None else ""
    return None if text in ("", ".") else text


def getParameterNode(scene: Any, moduleName: str = MODULE_NAME) -> Any:
    """The module's singleton parameter node, created as ``ScriptedLoadableModuleLogic`` creates it."""
    node = scene.GetSingletonNode(moduleName, "vtkMRMLScriptedModuleNode")
    if node is not None:
        return node
    node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
    node.UnRegister(None)
    node.SetSingletonTag(moduleName)
    node.SetAttribute("ModuleName", moduleName)
    node.SetName(scene.GenerateUniqueName(moduleName))
    return scene.AddNode(node)


def writeParameter(node: Any, name: str, value: Any) -> None:
    field = FIELDS_BY_NAME[name]
    if field.kind == "node":
        node.SetParameter(name, "")
        node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
    elif field.kind == "bool":
        node.SetParameter(name, "True" if value else "False")
    else:
        node.SetParameter(name, str(value))


def readParameter(node: Any, name: str) -> Any:
    field = FIELDS_BY_NAME[name]
    if field.kind == "node":
        return node.GetNodeReference(name)
    if not node.HasParameter(name):
        return field.default
    text = node.GetParameter(name)
    converters = {"int": int, "float": float, "str": str, "path": pathlib.Path, "bool": lambda t: t == "True"}
    return converters[field.kind](text)


def readParameters(node: Any) -> Dict[str, Any]:
    return {field.name: readParameter(node, field.name) for field in FIELDS}


def writeNodeList(node: Any, role: str, nodes: Any) -> None:
    """Store ``nodes`` (in order) as the ``role`` references of the parameter node."""
    ids = [n.GetID() for n in nodes if n is not None and n.GetID()]
    current = [node.GetNthNodeReferenceID(role, i) for i in range(node.GetNumberOfNodeReferences(role))]
    if ids == current:
        return
    wasModifying = node.StartModify()
    node.RemoveNodeReferenceIDs(role)
    for nodeId in ids:
        node.AddNodeReferenceID(role, nodeId)
    node.EndModify(wasModifying)


def readNodeList(node: Any, role: str) -> List[Any]:
    """The nodes stored by :func:`writeNodeList` that still exist."""
    found = [node.GetNthNodeReference(role, i) for i in range(node.GetNumberOfNodeReferences(role))]
    return [n for n in found if n is not None]
