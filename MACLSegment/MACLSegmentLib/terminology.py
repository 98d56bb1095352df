"""Standard terminology (SNOMED CT) for the cardiac labels, in the form Slicer's Terminologies module stores on a
segment (the ``TerminologyEntry`` tag), so that DICOM SEG export and the Segment Editor's terminology selector
know what each structure is.

Serialised entry (``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``): context name, category,
type, type modifier, anatomic context name, anatomic region, anatomic region modifier, joined by ``~``; each
code is ``scheme^value^meaning``. The category/type context is the DICOM master list, as TotalSegmentator uses.
"""

from typing import Any, Dict, Optional, Tuple

CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
RIGHT_VENTRICLE = ("SCT", "53085002", "Right ventricle")
LEFT_VENTRICLE = ("SCT", "87878005", "Left ventricle")
MYOCARDIUM = ("SCT", "74281007", "Myocardium")
EMPTY = ("", "", "")

# label name (lower case) -> (type, anatomic region): the cavities as their ventricle, the myocardium with the
# left ventricle as its region.
CARDIAC: Dict[str, Tuple[Tuple[str, str, str], Tuple[str, str, str]]] = {
    "rv cavity": (RIGHT_VENTRICLE, EMPTY),
    "lv myocardium": (MYOCARDIUM, LEFT_VENTRICLE),
    "lv cavity": (LEFT_VENTRICLE, EMPTY),
}


def _code(code: Tuple[str, str, str]) -> str:
    return "^".join(code)


def entryFor(name: str) -> Optional[str]:
    """The serialised terminology entry of a label name (None for a name without a standard code)."""
    known = CARDIAC.get(name.strip().lower())
    if known is None:
        return None
    codeType, region = known
    return "~".join([CONTEXT, _code(ANATOMICAL_STRUCTURE), _code(codeType), _code(EMPTY), ANATOMIC_CONTEXT,
                     _code(region), _code(EMPTY)])


def applyTerminology(segmentationNode: Any) -> int:
    """Tag each segment whose name has a standard code; returns how many were tagged."""
    segmentation = segmentationNode.GetSegmentation()
    tagged = 0
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        entry = entryFor(segment.GetName())
        if entry:
            segment.SetTag(segment.GetTerminologyEntryTagName(), entry)
            tagged += 1
    return tagged


def segmentEntry(segment: Any) -> str:
    """The serialised terminology entry stored on a segment ('' when none)."""
    import vtk

    tag = vtk.mutable("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
    return str(tag)
