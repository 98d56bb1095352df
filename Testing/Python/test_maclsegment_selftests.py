"""The module's self-tests (the bodies Slicer's self-test runs), headless against slicer-core MRML."""

import pytest

pytest.importorskip("slicer", reason="slicer-core (real Slicer MRML) is not installed")

from MACLSegmentLib import selftests  # noqa: E402


@pytest.mark.slow
def test_walkthrough_volumes_in_segmentation_out(selfTestContext, capsys):
    results = selftests.runWalkthrough(selfTestContext)
    with capsys.disabled():
        print(f"\nMACLSegment walkthrough: {results}")
    assert results["meanDice"] > selftests.MIN_MEAN_DICE


def test_bad_input_is_a_one_line_value_error(selfTestContext):
    selftests.testBadInput(selfTestContext)


@pytest.mark.slow
def test_process_error_is_readable(selfTestContext):
    selftests.testJobError(selfTestContext)


@pytest.mark.slow
def test_cancel_stops_cleanly_and_leaves_resume_state(selfTestContext):
    selftests.testCancel(selfTestContext)


def test_finetune_learns_from_the_pretrain_volumes_too(selfTestContext):
    selftests.testFinetuneWithUnlabelled(selfTestContext)


def test_parameters_survive_scene_save_and_reload(selfTestContext):
    selftests.testParameterRoundTrip(selfTestContext)


@pytest.mark.slow
def test_pretrain_from_scene_and_folder(selfTestContext):
    if not selftests.pretrainAvailable(selfTestContext):
        pytest.skip("this MACLCore has no 'maclcore pretrain' command yet")
    selftests.testPretrain(selfTestContext)


def test_cine_sequence_segmented_frame_by_frame(selfTestContext):
    selftests.testCineSequence(selfTestContext)


def test_annotation_of_a_transformed_volume_lies_with_it_and_carries_terminology(selfTestContext):
    from MACLSegmentLib import terminology
    from MACLSegmentLib.schema import defaultSchema
    from MACLSegmentLib.testsupport import loadPhantoms

    (volume, _), = loadPhantoms(selfTestContext, (201,))
    transform = selfTestContext.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "table shift")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    annotation = selfTestContext.logic().createAnnotation(volume, defaultSchema())
    assert annotation.GetTransformNodeID() == transform.GetID()
    segmentation = annotation.GetSegmentation()
    entries = [terminology.segmentEntry(segmentation.GetNthSegment(i)) for i in range(3)]
    assert [e.split("~")[2] for e in entries] == ["SCT^53085002^Right ventricle", "SCT^74281007^Myocardium",
                                                   "SCT^87878005^Left ventricle"]
    assert all(len(e.split("~")) == 7 for e in entries)
    assert entries[1].split("~")[5] == "SCT^87878005^Left ventricle"  # myocardium of the left ventricle
