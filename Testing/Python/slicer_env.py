"""Slicer's start-up done by hand on the slicer-core wheel: a scene, an application logic and the C++ module
logics the module uses, so that the module's Logic and self-tests run headless against real MRML.

This is test scaffolding, not part of the product (see shared/SLICER.md).
"""

import os
import sys

MODULE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "MACLSegment"))
MODULE_LOGICS = (("Colors", "vtkSlicerColorLogic"),  # must be named "Colors", or segmentation import fails
                 ("Volumes", "vtkSlicerVolumesLogic"),
                 ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
                 ("Sequences", "vtkSlicerSequencesLogic"))  # registers the sequence browser node


def addModulePath() -> None:
    """Make ``MACLSegmentLib`` importable, as Slicer does for a scripted module's folder."""
    if MODULE_DIR not in sys.path:
        sys.path.insert(0, MODULE_DIR)


class SlicerEnvironment:
    """A fresh scene with its application logic and module logics; ``close()`` releases them."""

    def __init__(self) -> None:
        import slicer

        self.scene = slicer.vtkMRMLScene()
        self.applicationLogic = slicer.vtkSlicerApplicationLogic()
        self.applicationLogic.SetMRMLScene(self.scene)
        self.moduleLogics = {}
        for name, className in MODULE_LOGICS:
            logic = getattr(slicer, className)()
            logic.SetMRMLApplicationLogic(self.applicationLogic)
            logic.SetMRMLScene(self.scene)
            self.applicationLogic.SetModuleLogic(name, logic)
            self.moduleLogics[name] = logic
        self._previousScene = getattr(slicer, "mrmlScene", None)
        slicer.mrmlScene = self.scene  # code written for the application uses slicer.mrmlScene

    def close(self) -> None:
        import slicer

        self.scene.Clear(True)
        slicer.mrmlScene = self._previousScene
