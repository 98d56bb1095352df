"""ED/ES frames of a cine, headless, on synthetic sequences (real vtkMRMLSequenceNode): from a segmentation sequence
by the LV cavity volume, else from the images (trigger time, then the frame most different from ED)."""

import pytest

pytest.importorskip("slicer", reason="slicer-core (real Slicer MRML) is not installed")

import numpy as np  # noqa: E402

from MACLSegmentLib import sequences  # noqa: E402
from MACLSegmentLib.errors import InputError  # noqa: E402

SHAPE = (4, 32, 32)  # k, j, i
SPACING = (1.5, 1.5, 8.0)  # i, j, k in mm
RADII = (10, 8, 5, 7, 9)  # the LV cavity's radius per frame: smallest at frame 2 (ES), largest at frame 0 (ED)


def disk(radius, value=1):
    k, j, i = np.indices(SHAPE)
    return np.where((j - 16) ** 2 + (i - 16) ** 2 <= radius ** 2, value, 0).astype(np.uint8)


def add_volume(scene, array, name, labelmap=False):
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    node.SetSpacing(*SPACING)
    slicer.util.updateVolumeFromArray(node, array)
    return node


def volume_sequence(scene, arrays, index_name="time", unit="ms", values=None):
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    sequence.SetIndexName(index_name)
    sequence.SetIndexUnit(unit)
    numeric = values is None or all(v.replace(".", "").isdigit() for v in values)
    sequence.SetIndexType(sequence.NumericIndex if numeric else sequence.TextIndex)
    for number, array in enumerate(arrays):
        frame = add_volume(scene, array, f"frame {number}")
        sequence.SetDataNodeAtValue(frame, values[number] if values else str(40 * number))
        scene.RemoveNode(frame)
    return sequence


def segmentation_sequence(environment, radii, lv_name="LV cavity"):
    """One segmentation per frame with an RV box (value 1) and an LV disk (value 2) in one shared labelmap,
    imported as Slicer imports a label map."""
    import vtk

    scene = environment.scene
    logic = environment.moduleLogics["Segmentations"]
    result = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine segmentation")
    for number, radius in enumerate(radii):
        labels = disk(radius, 2)
        labels[:, 0:4, 0:4] = 1
        labelmap = add_volume(scene, labels, f"labels {number}", labelmap=True)
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"segmentation {number}")
        node.CreateDefaultDisplayNodes()
        segmentation = node.GetSegmentation()
        ids = vtk.vtkStringArray()
        for label, name in ((1, "RV cavity"), (2, lv_name)):
            ids.InsertNextValue(segmentation.AddEmptySegment(f"label{label}", name, [0.5, 0.5, 0.5]))
        # Slicer gives the N-th listed segment the map's voxels of value N (and that label value).
        assert logic.ImportLabelmapToSegmentationNode(labelmap, node, ids)
        result.SetDataNodeAtValue(node, str(40 * number))
        for removed in (node.GetDisplayNode(), node, labelmap):
            scene.RemoveNode(removed)
    return result


def test_ed_and_es_from_the_lv_cavity_volume(slicerEnvironment):
    result = sequences.cardiacPhases(segmentationSequence=segmentation_sequence(slicerEnvironment, RADII))
    assert (result.ed, result.es, result.method) == (0, 2, "lv-volume")
    voxel_ml = np.prod(SPACING) / 1000.0
    expected = [disk(r).sum() * voxel_ml for r in RADII]
    assert np.allclose(result.lvVolumes, expected)


def test_ed_is_the_largest_cavity_wherever_it_is(slicerEnvironment):
    radii = (6, 9, 11, 4, 7)
    result = sequences.cardiacPhases(segmentationSequence=segmentation_sequence(slicerEnvironment, radii))
    assert (result.ed, result.es) == (2, 3)


def test_a_segmentation_without_the_lv_cavity_is_refused(slicerEnvironment):
    sequence = segmentation_sequence(slicerEnvironment, RADII[:2], lv_name="something else")
    with pytest.raises(InputError, match="no segment named 'LV cavity'"):
        sequences.cardiacPhases(segmentationSequence=sequence)


def cine_images(radii):
    return [(100 * disk(r) + 20).astype(np.int16) for r in radii]


def test_without_segmentation_ed_is_the_earliest_trigger_time_and_es_the_most_different_frame(slicerEnvironment):
    # Trigger times in ms; the earliest (ED, at the R wave) is the third frame of the sequence's order.
    sequence = volume_sequence(slicerEnvironment.scene, cine_images((8, 9, 10, 5, 7)),
                               values=["80", "120", "0", "160", "200"])
    order = [sequence.GetNthIndexValue(i) for i in range(sequence.GetNumberOfDataNodes())]
    result = sequences.cardiacPhases(sequence)
    assert result.method == "trigger-time"
    assert order[result.ed] == "0"
    assert float(order[result.es]) == 160.0  # the smallest disk: most different from the largest


def test_without_a_time_index_ed_is_frame_0(slicerEnvironment):
    sequence = volume_sequence(slicerEnvironment.scene, cine_images(RADII), index_name="frame", unit="",
                               values=["a", "b", "c", "d", "e"])
    result = sequences.cardiacPhases(sequence)
    assert (result.ed, result.es, result.method) == (0, 2, "image-difference")


def test_not_a_sequence_is_refused(slicerEnvironment):
    with pytest.raises(InputError, match="ED/ES"):
        sequences.cardiacPhases(None)


def test_the_cine_frames_choice_picks_the_frames_segment_segments(slicerEnvironment):
    """The panel's "Cine frames" choice for a volume shown from a cine: the shown frame, ED and ES, or all."""
    sequence = volume_sequence(slicerEnvironment.scene, cine_images(RADII))  # times 0, 40, ...: ED 0, ES 2
    assert sequences.framesToSegment(sequences.SHOWN_FRAME, sequence, 3) == [3]
    assert sequences.framesToSegment(sequences.ED_AND_ES, sequence, 3) == [0, 2]
    assert sequences.framesToSegment(sequences.EVERY_FRAME, sequence, 3) is None
    assert [frame for frame, _, _ in sequences.frames(sequence, sequences.framesToSegment(
        sequences.ED_AND_ES, sequence, 3))] == [0, 2]
    with pytest.raises(ValueError, match="unknown choice of cine frames"):
        sequences.framesToSegment("frame 2", sequence, 3)
