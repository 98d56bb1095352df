"""Segment and Suggest jobs, headless, with a stand-in for ``maclcore`` (no model, no torch): their commands carry a
stop file so Cancel stops them cleanly; Segment writes into a chosen existing segmentation (or a new one) and
``undoLastSegment`` brings the previous content back bit for bit (or removes the new node)."""

import hashlib
import json
import os
import sys
import time

import pytest

pytest.importorskip("slicer", reason="slicer-core (real Slicer MRML) is not installed")
pytestmark = pytest.mark.skipif(os.name == "nt", reason="the stand-in maclcore is a POSIX script")

from MACLSegmentLib import terminology  # noqa: E402
from MACLSegmentLib.errors import InputError, JobCancelled  # noqa: E402
from MACLSegmentLib.jobs import EXIT_INTERRUPTED  # noqa: E402
from MACLSegmentLib.logic import MODEL_ATTRIBUTE, CoreLogic  # noqa: E402
from MACLSegmentLib.options import SegmentOptions, SuggestOptions  # noqa: E402
from MACLSegmentLib.schema import defaultSchema  # noqa: E402

# Stands in for "python -m maclcore predict|suggest ...": records its arguments, then either waits for its stop
# file and exits as a stopped maclcore does (FAKE_MODE=wait), or writes a fixed segmentation of the image.
FAKE_MACLCORE = """\
import json, os, sys, time
args = sys.argv[1:]
assert args[:2] == ["-m", "maclcore"], args
command, rest = args[2], args[3:]
value = lambda flag: rest[rest.index(flag) + 1] if flag in rest else None
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if os.environ.get("FAKE_MODE") == "wait":
    print(json.dumps({"event": "stage", "stage": command, "total": 1}), flush=True)
    while not (value("--stop-file") and os.path.exists(value("--stop-file"))):
        time.sleep(0.02)
    print(f"maclcore {command}: stopped after 0 of 1 volume(s); nothing was written", file=sys.stderr)
    sys.exit(130)
import numpy as np
from maclcore.io.seg_nrrd import write_seg_nrrd
from maclcore.io.volume import read_volume
from maclcore.labels import CARDIAC
volume = read_volume(value("--image"))
labels = np.zeros(volume.array.shape, np.uint8)
z, y, x = labels.shape
labels[:, y // 4:y // 2, x // 4:x // 2] = 1  # RV cavity: a box; LV cavity: another one; no myocardium
labels[:, y // 2:3 * y // 4, x // 2:3 * x // 4] = 3
write_seg_nrrd(labels, volume.geometry, value("--out"), CARDIAC)
print(json.dumps({"event": "done", "output": value("--out")}), flush=True)
"""


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\n" + FAKE_MACLCORE)
    script.chmod(0o755)
    model = tmp_path / "model.pt"
    model.write_bytes(b"")  # the stand-in never reads it
    return script, str(model), tmp_path / "calls.jsonl"


def make_logic(selfTestContext, fake, mode=""):
    script, _, log = fake
    return CoreLogic(scene=selfTestContext.scene, applicationLogic=selfTestContext.applicationLogic,
                     pythonExecutable=str(script), temporaryFolder=os.path.join(selfTestContext.folder, "jobs"),
                     environment={"FAKE_LOG": str(log), "FAKE_MODE": mode})


def phantom_volume(context, seed=203):
    from MACLSegmentLib.testsupport import loadPhantoms

    (volume, phantom), = loadPhantoms(context, (seed,))
    return volume, phantom


def segmentation_count(scene):
    return scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems()


def cancel_when_started(job):
    while job.poll() and job.progress.events == 0:
        time.sleep(0.02)
    job.cancel()
    assert job.wait(timeout=30) == EXIT_INTERRUPTED
    assert job.state == "cancelled"
    with pytest.raises(JobCancelled):
        job.finish()
    assert not os.path.exists(job.stopFile) and not os.path.exists(job.cleanupFolder)


def test_segment_and_suggest_jobs_have_a_stop_file_and_cancel_cleanly(selfTestContext, fake):
    logic = make_logic(selfTestContext, fake, mode="wait")
    volume, _ = phantom_volume(selfTestContext)
    before = segmentation_count(selfTestContext.scene)
    jobs = [logic.segment(volume, fake[1], SegmentOptions(device="cpu")),
            logic.suggestCases(fake[1], [volume], SuggestOptions(device="cpu"))]
    sequence = selfTestContext.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    sequence.SetDataNodeAtValue(volume, "0")
    jobs.append(logic.segmentSequence(sequence, fake[1], SegmentOptions(device="cpu")))
    for job in jobs:
        stop = job.command[job.command.index("--stop-file") + 1]
        assert job.stopFile == stop and os.path.dirname(stop) == job.cleanupFolder
        cancel_when_started(job)
    commands = [json.loads(line)[2] for line in fake[2].read_text().splitlines()]
    assert sorted(commands) == ["predict", "predict", "suggest"]  # the three ran at once: any order
    assert segmentation_count(selfTestContext.scene) == before, "a cancelled job added a segmentation"


def snapshot(node):
    """Everything a segmentation holds that undo must restore: per segment its id, name, colour, label value,
    terminology, and the exact voxels and grid of its labelmap; the node's reference volume and attributes."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    segmentation = node.GetSegmentation()
    segments = []
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        image = segment.GetRepresentation("Binary labelmap")
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        scalars = vtk_to_numpy(image.GetPointData().GetScalars())
        segments.append((segmentId, segment.GetName(), tuple(segment.GetColor()), segment.GetLabelValue(),
                         terminology.segmentEntry(segment), tuple(image.GetExtent()),
                         tuple(matrix.GetElement(r, c) for r in range(4) for c in range(4)),
                         str(scalars.dtype), hashlib.sha256(scalars.tobytes()).hexdigest()))
    role = node.GetReferenceImageGeometryReferenceRole()
    return {"segments": segments, "source": segmentation.GetSourceRepresentationName(),
            "reference": node.GetNodeReferenceID(role), "transform": node.GetTransformNodeID(),
            "model": node.GetAttribute(MODEL_ATTRIBUTE)}


def voxels(node, name):
    from vtk.util.numpy_support import vtk_to_numpy

    segmentation = node.GetSegmentation()
    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
    image = segment.GetRepresentation("Binary labelmap")
    return int((vtk_to_numpy(image.GetPointData().GetScalars()) == segment.GetLabelValue()).sum())


def test_segment_into_an_existing_segmentation_then_undo_restores_it_bit_for_bit(selfTestContext, fake):
    from MACLSegmentLib.selftests import annotateCases

    logic = make_logic(selfTestContext, fake)
    (volume, annotation), = annotateCases(selfTestContext, [phantom_volume(selfTestContext)], defaultSchema())
    other, _ = phantom_volume(selfTestContext, seed=204)
    before = snapshot(annotation)
    assert sum(voxels(annotation, name) for name in defaultSchema().names) > 0  # painted: something to lose
    count = segmentation_count(selfTestContext.scene)
    assert not logic.canUndoSegment

    result = logic.runToCompletion(logic.segment(other, fake[1], SegmentOptions(device="cpu"),
                                                 outputNode=annotation), timeout=60)
    assert result is annotation and segmentation_count(selfTestContext.scene) == count  # no new node
    after = snapshot(annotation)
    assert after["segments"] != before["segments"], "the segments were not replaced"
    assert [s[1] for s in after["segments"]] == list(defaultSchema().names)
    dims = other.GetImageData().GetDimensions()  # (x, y, z)
    box = dims[2] * (dims[1] // 2 - dims[1] // 4) * (dims[0] // 2 - dims[0] // 4)
    assert voxels(annotation, "RV cavity") == box and voxels(annotation, "LV myocardium") == 0
    assert after["reference"] == other.GetID() and after["model"] == os.path.abspath(fake[1])
    assert logic.canUndoSegment

    assert logic.undoLastSegment() is annotation
    assert snapshot(annotation) == before, "undo did not restore the previous content exactly"
    assert not logic.canUndoSegment
    with pytest.raises(InputError, match="nothing|no segmentation result"):
        logic.undoLastSegment()


def test_segment_into_a_new_segmentation_then_undo_removes_it(selfTestContext, fake):
    logic = make_logic(selfTestContext, fake)
    volume, _ = phantom_volume(selfTestContext)
    count = segmentation_count(selfTestContext.scene)
    node = logic.runToCompletion(logic.segment(volume, fake[1], SegmentOptions(device="cpu")), timeout=60)
    assert segmentation_count(selfTestContext.scene) == count + 1 and logic.canUndoSegment
    display = node.GetDisplayNode().GetID()
    assert logic.undoLastSegment() is None
    assert segmentation_count(selfTestContext.scene) == count
    assert selfTestContext.scene.GetNodeByID(display) is None, "the result's display node was left behind"


def test_an_output_that_is_not_a_segmentation_is_refused(selfTestContext, fake):
    logic = make_logic(selfTestContext, fake)
    volume, _ = phantom_volume(selfTestContext)
    with pytest.raises(InputError, match="output must be a segmentation"):
        logic.segment(volume, fake[1], outputNode=volume)
