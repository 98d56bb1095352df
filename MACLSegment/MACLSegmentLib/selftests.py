"""The module's self-tests as plain functions on a scene, shared by the Slicer self-test and pytest.

``MACLSegmentTest`` (in ``MACLSegment.py``: Slicer's Reload-and-Test button and ctest) and
``Testing/Python`` (pytest, headless against the slicer-core MRML wheel) call these same bodies with a
:class:`SelfTestContext`. The data are synthetic phantoms written to disk (no network); the jobs run the
real ``maclcore`` command in a background process, read through its JSON progress lines.
"""

import dataclasses
import os
import pathlib
import subprocess
import time
from typing import Any, Dict

from . import parameters, scene_io, sequences, terminology
from .errors import JobCancelled, JobError
from .humanloop import ANNOTATION_ATTRIBUTE, CORRECTION_SUFFIX, nextModelPath
from .jobs import EXIT_INTERRUPTED
from .logic import RESULT_SUFFIX
from .options import FinetuneOptions, PretrainOptions, SegmentOptions, SuggestOptions
from .schema import defaultSchema, matchSegments, parseSchemaText
from .testsupport import (SelfTestContext, check, checkGeometry, checkNamesAndColors, diceScores,
                          expectInputError, loadPhantoms, loadVolume, paintFromTruth, resultLabels, writePhantom)

__all__ = ["SelfTestContext", "pretrainAvailable", "runWalkthrough", "testBadInput", "testCancel",
           "testCineSequence", "testFinetuneWithUnlabelled", "testHumanInTheLoop", "testJobError", "testParameterRoundTrip", "testPretrain"]

# A finetune that learns the phantoms in ~25 s on two idle CPU cores (320 steps of a small U-Net; with the
# finetuning recipe of issue 16, 160 steps scored 0.27-0.73 over five runs of these phantoms, 320 steps 0.91 (seed 0) and 0.61 (seed 1)).
QUICK_FINETUNE = FinetuneOptions(epochs=40, stepsPerEpoch=8, batchSize=8, device="cpu", spacing=3.0,
                                 channels=(8, 16, 32, 64, 128), seed=0, extraArgs=("--lr", "2e-3"))
TRAINING_SEEDS = (201, 202)
TEST_SEED = 203
# Mean foreground Dice of QUICK_FINETUNE on a held-out phantom, measured with 7 sets of phantoms: 0.50-0.92
# (0.81 for these seeds); a regression (labels shuffled, geometry lost) falls far below the threshold.
MIN_MEAN_DICE = 0.5
JOB_TIMEOUT = 900.0
# The human-in-the-loop round trip checks the plumbing, not the learning: a tiny network, a few steps.
TINY_FINETUNE = FinetuneOptions(epochs=2, stepsPerEpoch=2, batchSize=4, device="cpu", spacing=6.0,
                                channels=(4, 8, 8, 16, 16), seed=0)


def annotateCases(context: SelfTestContext, cases: list, schema: Any) -> list:
    """Annotate step: a new segmentation per volume with the schema's empty segments, then painted."""
    logic = context.logic()
    segmentations = scene_io.moduleLogic(context.applicationLogic, "Segmentations")
    pairs = []
    for volume, phantom in cases:
        annotation = logic.createAnnotation(volume, schema)
        checkNamesAndColors(annotation, schema)
        check(scene_io.referenceVolume(annotation) is volume, "annotation is not linked to its volume")
        segmentIds = matchSegments(annotation, schema)
        for segmentId in segmentIds:
            check(not scene_io.segmentMask(annotation, segmentId, volume, segmentations).any(),
                  "a new annotation segment is not empty")
        paintFromTruth(context, annotation, volume, phantom.labels, segmentIds)  # the simulated annotator
        pairs.append((volume, annotation))
    return pairs


def runWalkthrough(context: SelfTestContext) -> Dict[str, Any]:
    """Volumes in, annotate, finetune, segment, check the overlay; returns the measured numbers."""
    logic, schema = context.logic(), defaultSchema()
    training = loadPhantoms(context, TRAINING_SEEDS)
    (volume, phantom), = loadPhantoms(context, (TEST_SEED,), oblique=True)
    pairs = annotateCases(context, training, schema)

    model = os.path.join(context.folder, "models", "walkthrough.pt")
    started = time.monotonic()
    job = logic.finetune(pairs, None, model, QUICK_FINETUNE, schema)
    check(logic.runToCompletion(job, JOB_TIMEOUT) == model and os.path.isfile(model), "no model file written")
    finetuneSeconds = time.monotonic() - started
    check(job.progress.events > 0, "no JSON progress event arrived")
    check(job.progress.epoch == QUICK_FINETUNE.epochs and job.progress.done, "training did not report its end")

    # A segmentation the user already has under the result's name must stay untouched.
    existing = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", volume.GetName() + RESULT_SUFFIX)
    existing.GetSegmentation().AddEmptySegment("", "user's own", [1.0, 1.0, 0.0])
    before = {node.GetID() for node in context.scene.GetNodesByClass("vtkMRMLSegmentationNode")}
    started = time.monotonic()
    result = logic.runToCompletion(logic.segment(volume, model, SegmentOptions(device="cpu")), JOB_TIMEOUT)
    segmentSeconds = time.monotonic() - started

    check(result.GetID() not in before, "segment() did not create a new segmentation node")
    check(result.GetName() != existing.GetName() and result.GetName().startswith(volume.GetName()),
          f"result name {result.GetName()!r}")
    check(existing.GetSegmentation().GetNumberOfSegments() == 1, "an existing segmentation was modified")
    check(scene_io.referenceVolume(result) is volume, "result is not linked to its volume")
    check(result.GetDisplayNode() is not None and result.GetDisplayNode().GetVisibility(), "result not shown")
    checkNamesAndColors(result, schema)
    labels, labelMapNode = resultLabels(context, result, volume, schema)
    checkGeometry(result, volume, labels, labelMapNode)
    dice = diceScores(labels, phantom.labels, len(schema.names))
    meanDice = sum(dice) / len(dice)
    context.log(f"walkthrough: finetune {finetuneSeconds:.1f} s, segment {segmentSeconds:.1f} s, "
                f"Dice {', '.join(f'{n} {d:.3f}' for n, d in zip(schema.names, dice))}, mean {meanDice:.3f}")
    check(meanDice > MIN_MEAN_DICE, f"mean Dice {meanDice:.3f} is not above {MIN_MEAN_DICE}")
    for pairVolume, annotation in pairs:
        check(annotation.GetSegmentation().GetNumberOfSegments() == len(schema.names), "annotation changed")
    return {"dice": dict(zip(schema.names, dice)), "meanDice": meanDice, "finetuneSeconds": finetuneSeconds,
            "segmentSeconds": segmentSeconds, "progressEvents": job.progress.events, "finalLoss": job.progress.loss,
            "model": model, "resultNode": result.GetName()}


def testBadInput(context: SelfTestContext) -> None:
    """Bad input gives a one-line ValueError naming the node or file, before any process starts."""
    logic, schema = context.logic(), defaultSchema()
    (volume, phantom), = loadPhantoms(context, (TRAINING_SEEDS[0],))
    model = os.path.join(context.folder, "bad", "model.pt")
    expectInputError(lambda: logic.segment(None, model), "no volume selected")
    expectInputError(lambda: logic.createAnnotation(None), "no volume selected")
    expectInputError(lambda: logic.finetune([], None, model), "no annotated cases")
    expectInputError(lambda: logic.pretrain([], None, model), "no volumes")
    expectInputError(lambda: logic.segment(volume, os.path.join(context.folder, "missing.pt")),
                     "missing.pt", "does not exist")

    empty = logic.createAnnotation(volume, schema)
    expectInputError(lambda: logic.finetune([(volume, empty)], None, model), empty.GetName(), "is empty")

    painted = logic.createAnnotation(volume, schema)
    paintFromTruth(context, painted, volume, phantom.labels, matchSegments(painted, schema))
    expectInputError(lambda: logic.finetune([(volume, painted)], os.path.join(context.folder, "none.pt"), model),
                     "none.pt", "does not exist")
    custom = parseSchemaText("Liver #aa3322\nSpleen #2233aa")
    expectInputError(lambda: logic.finetune([(volume, painted)], None, model, schema=custom), painted.GetName(),
                     "not in the label schema")

    segmentation = painted.GetSegmentation()
    segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("LV cavity")).SetName("Liver")
    expectInputError(lambda: logic.finetune([(volume, painted)], None, model), painted.GetName(), "'Liver'",
                     "not in the label schema")
    segmentation.RemoveSegment(segmentation.GetSegmentIdBySegmentName("Liver"))
    expectInputError(lambda: logic.finetune([(volume, painted)], None, model), "no segment named 'LV cavity'")
    expectInputError(lambda: FinetuneOptions(epochs=0), "epochs")
    expectInputError(lambda: PretrainOptions(gpus=2, device="cpu"), "cpu")
    check(not os.path.exists(model), "a bad input still produced a model file")


def testJobError(context: SelfTestContext) -> None:
    """A failing process reports its own one-line message, not a traceback."""
    logic = context.logic()
    (volume, _), = loadPhantoms(context, (TRAINING_SEEDS[0],))
    fake = os.path.join(context.folder, "fake.pt")
    with open(fake, "w") as handle:
        handle.write("not a model\n")
    job = logic.segment(volume, fake, SegmentOptions(device="cpu"))
    try:
        logic.runToCompletion(job, JOB_TIMEOUT)
    except JobCancelled:
        raise AssertionError("a failed job was reported as cancelled") from None
    except JobError as exc:
        message = str(exc)
        check("fake.pt" in message and "Traceback" not in message and "\n" not in message,
              f"unreadable job error: {message!r}")
        check(job.returncode == 1 and job.state == "failed", f"exit code {job.returncode}, state {job.state}")
        nodes = [n.GetName() for n in context.scene.GetNodesByClass("vtkMRMLSegmentationNode")]
        check(not any(name.endswith(RESULT_SUFFIX) for name in nodes), "a failed job added a segmentation")
        return
    raise AssertionError("segmenting with a broken model file did not fail")


def testCancel(context: SelfTestContext, stopWithin: float = 20.0) -> Dict[str, float]:
    """Cancel a running finetune: it stops within seconds, exit 130, and leaves its resumable state."""
    logic, schema = context.logic(), defaultSchema()
    pairs = annotateCases(context, loadPhantoms(context, (TRAINING_SEEDS[0],)), schema)
    model = os.path.join(context.folder, "cancel", "model.pt")
    options = dataclasses.replace(QUICK_FINETUNE, epochs=500)
    job = logic.finetune(pairs, None, model, options, schema)
    deadline = time.monotonic() + JOB_TIMEOUT
    # Cancel once training has begun: a cancel while the data loads ends the job with nothing to resume.
    while job.poll() and not (job.progress.stage == "finetune" and job.progress.step > 0) \
            and time.monotonic() < deadline:
        context.idle(0.1)
    check(job.running, f"the job ended before it could be cancelled: {job.stderrLines and job.stderrLines[-1]}")
    started = time.monotonic()
    job.cancel()
    job.wait(timeout=3 * job.cancelGrace, idle=context.idle)
    stopSeconds = time.monotonic() - started
    check(not job.running, "the job did not stop")
    check(job.returncode == EXIT_INTERRUPTED, f"exit code {job.returncode}, expected {EXIT_INTERRUPTED}")
    check(stopSeconds < stopWithin, f"stopping took {stopSeconds:.1f} s")
    resume = logic.resumeState(model)
    check(resume is not None and os.path.isfile(resume), "no resumable state was left")
    try:
        job.finish()
        raise AssertionError("a cancelled job returned a result")
    except JobCancelled as exc:
        check("resume" in str(exc), f"cancel message does not mention resuming: {exc}")
    check(not os.path.exists(model), "a cancelled run wrote a final model")
    context.log(f"cancel: stopped {stopSeconds:.1f} s after the request, exit {job.returncode}")
    return {"stopSeconds": stopSeconds}


def testParameterRoundTrip(context: SelfTestContext) -> None:
    """Parameters (numbers, text, paths, a node reference) survive saving the scene and loading it again."""
    import slicer

    (volume, _), = loadPhantoms(context, (TEST_SEED,))
    node = parameters.getParameterNode(context.scene)
    annotation = context.logic().createAnnotation(volume)
    values = {"device": "cpu", "gpuCount": 2, "pretrainFolder": pathlib.Path(context.folder) / "unlabelled",
              "pretrainEpochs": 7, "pretrainTimeBudget": 12.5, "pretrainBatchSize": 12,
              "pretrainOutput": pathlib.Path("/models/pre.pt"),
              "schemaText": "RV cavity #4d95ed\nLV myocardium #62c75c\nLV cavity #e35647",
              "finetunePretrained": pathlib.Path("/models/pre.pt"), "finetuneEpochs": 9,
              "finetuneTimeBudget": 4.0, "finetuneUseUnlabelled": False,
              "finetuneOutput": pathlib.Path("/models/seg.pt"), "segmentModel": pathlib.Path("/models/seg.pt"),
              "segmentVolume": volume, "segmentFrames": "ED and ES", "segmentShow3D": True, "segmentOutput": annotation}
    check(set(values) == set(parameters.FIELDS_BY_NAME), "the round trip must cover every parameter")
    for name, value in values.items():
        parameters.writeParameter(node, name, value)
    ticked = {"pretrainVolumes": [volume], "annotateVolumes": [volume], "finetuneSegmentations": [annotation]}
    check(set(ticked) == set(parameters.CHECKED_NODE_ROLES), "the round trip must cover every ticked list")
    for role, nodes in ticked.items():
        parameters.writeNodeList(node, role, nodes)
    sceneFile = os.path.join(context.folder, "roundtrip", "scene.mrml")
    os.makedirs(os.path.dirname(sceneFile), exist_ok=True)
    previousUrl = context.scene.GetURL()
    try:
        context.scene.SetURL(sceneFile)
        check(context.scene.Commit(), f"could not save {sceneFile}")
    finally:
        context.scene.SetURL(previousUrl)

    reloaded = slicer.vtkMRMLScene()
    reloaded.SetURL(sceneFile)
    check(reloaded.Connect(), f"could not load {sceneFile}")
    found = reloaded.GetSingletonNode(parameters.MODULE_NAME, "vtkMRMLScriptedModuleNode")
    check(found is not None, "the parameter node was not saved")
    restored = parameters.readParameters(found)
    for name, value in values.items():
        if name == "segmentVolume":
            node = restored[name]
            check(node is not None and node.GetName() == volume.GetName(), "volume reference lost")
            check(node.GetImageData() is not None, "referenced volume has no voxels after reload")
        elif name == "segmentOutput":
            check(restored[name] is not None and restored[name].GetName() == annotation.GetName(),
                  "output segmentation reference lost")
        else:
            check(restored[name] == value, f"{name}: {restored[name]!r} != {value!r}")
    for role, nodes in ticked.items():
        names = [n.GetName() for n in parameters.readNodeList(found, role)]
        check(names == [n.GetName() for n in nodes], f"ticked {role} lost: {names}")


def testFinetuneWithUnlabelled(context: SelfTestContext) -> None:
    """Finetune with the Pretrain volumes as unlabelled ones: the annotated volume among them is left out,
    the others reach ``maclcore finetune --unlabelled`` and the model file names them."""
    import torch

    logic, schema = context.logic(), defaultSchema()
    cases = loadPhantoms(context, (TRAINING_SEEDS[0], TRAINING_SEEDS[1]))
    pairs = annotateCases(context, cases[:1], schema)
    model = os.path.join(context.folder, "unlabelled", "model.pt")
    job = logic.finetune(pairs, None, model, TINY_FINETUNE, schema, unlabelledNodes=[volume for volume, _ in cases])
    given = job.command[job.command.index("--unlabelled") + 1:]
    given = given[:next((i for i, part in enumerate(given) if part.startswith("--")), len(given))]
    check(len(given) == 1 and os.path.isfile(given[0]), f"unlabelled files passed: {given}")
    logic.runToCompletion(job, JOB_TIMEOUT)
    saved = torch.load(model, weights_only=True)
    check(len(saved["training"]["unlabelled_cases"]) == 1, f"the model lists {saved['training']['unlabelled_cases']}")
    plain = logic.finetune(pairs, None, os.path.join(context.folder, "unlabelled", "plain.pt"), TINY_FINETUNE, schema,
                           unlabelledNodes=[pairs[0][0]])
    check("--unlabelled" not in plain.command, "the annotated volume alone was passed as unlabelled")
    plain.cancel()
    plain.wait(timeout=3 * plain.cancelGrace, idle=context.idle)


def pretrainAvailable(context: SelfTestContext) -> bool:
    """Whether the installed MACLCore has the ``pretrain`` command."""
    command = context.logic().maclcoreCommand("pretrain", ["--help"])
    try:
        return subprocess.run(command, capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def testPretrain(context: SelfTestContext) -> Dict[str, Any]:
    """Pretrain briefly on scene volumes plus a folder of volumes; the result is a pretrained model file."""
    from maclcore.io.checkpoint import load_checkpoint

    logic = context.logic()
    volumes = [volume for volume, _ in loadPhantoms(context, TRAINING_SEEDS)]
    folder = os.path.join(context.folder, "unlabelled")
    writePhantom(folder, TEST_SEED)
    count, size = logic.pretrainInputSummary(volumes, folder)
    check(count == 3 and size > 0, f"input summary {count} volumes, {size} bytes")
    model = os.path.join(context.folder, "models", "pretrained.pt")
    options = PretrainOptions(epochs=1, batchSize=4, device="cpu",
                              extraArgs=("--steps-per-epoch", "2", "--spacing", "3", "--channels", "8,16,32,64,128"))
    job = logic.pretrain(volumes, folder, model, options)
    check(logic.runToCompletion(job, JOB_TIMEOUT) == model, "pretraining returned no model")
    check(job.progress.events > 0 and job.progress.done, "no JSON progress from pretraining")
    check(load_checkpoint(model, kinds=("pretrain",))["kind"] == "pretrain", "not a pretrained model file")
    multi = logic.maclcoreCommand("pretrain", ["--out", model], processes=2)
    check(multi[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"],
          f"several GPUs should run under torchrun: {multi}")
    context.log(f"pretrain: {count} volumes ({size / 2 ** 20:.1f} MB), {job.progress.events} progress events")
    return {"volumes": count, "bytes": size, "events": job.progress.events}


def testHumanInTheLoop(context: SelfTestContext) -> Dict[str, Any]:
    """Suggest -> load the prediction to correct -> accept (update the model) -> history -> go back."""
    logic, schema = context.logic(), defaultSchema()
    cases = loadPhantoms(context, TRAINING_SEEDS + (TEST_SEED,))
    truth = {volume.GetID(): phantom.labels for volume, phantom in cases}
    first = cases[0][0]
    again = loadVolume(context, os.path.join(context.folder, "data", f"phantom{TRAINING_SEEDS[0]}.nii.gz"),
                       f"phantom{TRAINING_SEEDS[0]} again")  # an exact duplicate of the annotated case
    annotateCases(context, cases[:1], schema)
    check(logic.annotatedVolumes() == [first], "the annotated volume is not recognised")
    expectInputError(lambda: logic.suggestCases(None), "no model file")
    models = os.path.join(context.folder, "models")
    model = logic.runToCompletion(logic.acceptCorrections(None, TINY_FINETUNE, schema,
                                                          outputPath=os.path.join(models, "model.pt")), JOB_TIMEOUT)

    candidates = {volume.GetName() for volume in logic.suggestionCandidates()}
    check(candidates == {again.GetName(), cases[1][0].GetName(), cases[2][0].GetName()}, f"candidates {candidates}")
    job = logic.suggestCases(model, options=SuggestOptions(device="cpu", rotations=2))
    suggestions = logic.runToCompletion(job, JOB_TIMEOUT)
    check([s.rank for s in suggestions] == [1, 2, 3], f"ranks {[s.rank for s in suggestions]}")
    duplicate = next(s for s in suggestions if s.name == again.GetName())
    check(duplicate.diversity < 1e-6 and duplicate.rank == 3 and duplicate.nearest == first.GetName(),
          f"the duplicate of the annotated case should come last with diversity 0: {duplicate}")

    chosen = context.scene.GetNodeByID(suggestions[0].volumeNodeID)
    correction = logic.runToCompletion(logic.loadSuggestion(chosen, model, SegmentOptions(device="cpu")), JOB_TIMEOUT)
    check(correction.GetAttribute(ANNOTATION_ATTRIBUTE) == "1", "the prediction to correct is not an annotation")
    check(correction.GetName().startswith(chosen.GetName() + CORRECTION_SUFFIX), correction.GetName())
    check(scene_io.referenceVolume(correction) is chosen, "the correction is not linked to its volume")
    checkNamesAndColors(correction, schema)
    paintFromTruth(context, correction, chosen, truth[chosen.GetID()], matchSegments(correction, schema))
    corrected = logic.annotationLabels(chosen, correction, schema)
    check((corrected == truth[chosen.GetID()]).all(), "the correction did not replace the prediction")
    check(chosen not in logic.suggestionCandidates(), "an annotated volume is still a candidate")

    # An annotation created but not painted yet is left out of the update instead of blocking it.
    other = next(volume for volume, _ in cases if volume is not chosen and volume is not first)
    unpainted = logic.createAnnotation(other, schema)
    updateJob = logic.acceptCorrections(model, TINY_FINETUNE, schema)
    check(updateJob.skippedAnnotations == [unpainted.GetName()], f"left out {updateJob.skippedAnnotations}")
    updated = logic.runToCompletion(updateJob, JOB_TIMEOUT)
    check(updated == os.path.join(models, "model-002.pt") and os.path.isfile(model), f"update wrote {updated}")
    history = logic.modelHistory(updated)
    check([v.generation for v in history] == [1, 2] and history[1].current and not history[0].current, "history")
    check(history[0].path == model and len(history[1].cases) == 2 and len(history[1].addedCases) == 1,
          f"history {history}")
    check(logic.revertModel(history[0]) == model, "going back did not give the first model")
    check(nextModelPath(model) == os.path.join(models, "model-003.pt"), "numbering")
    with open(model, "ab") as handle:
        handle.write(b"changed")
    expectInputError(lambda: logic.revertModel(history[0]), "has changed")
    context.log(f"human in the loop: suggested {[s.name for s in suggestions]}, history "
                f"{[v.describe() for v in history]}")
    return {"suggestions": suggestions, "history": history}


def writeCinePhantom(context: SelfTestContext, frameCount: int = 3) -> str:
    """A 4D cine phantom on disk (``.seq.nrrd``, as Slicer's sequence writer writes it): a phantom whose heart
    moves by two voxels per frame, frames 40 ms apart."""
    import numpy as np
    import slicer

    (volume, phantom), = loadPhantoms(context, (TEST_SEED,))
    scene = context.scene
    image = slicer.util.arrayFromVolume(volume).copy()
    cine = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine phantom")
    cine.SetIndexName("time")
    cine.SetIndexUnit("ms")
    cine.SetIndexType(cine.NumericIndex)
    for frame in range(frameCount):
        slicer.util.updateVolumeFromArray(volume, np.roll(image, 2 * frame, axis=2))
        cine.SetDataNodeAtValue(volume, str(40 * frame))
    path = os.path.join(context.folder, "data", "cine.seq.nrrd")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    storage.SetFileName(path)
    check(bool(storage.WriteData(cine)), "could not write the 4D phantom")
    for node in (cine, storage, volume):
        scene.RemoveNode(node)
    return path


def testCineSequence(context: SelfTestContext) -> Dict[str, Any]:
    """A cine sequence from a 4D file: every frame, then one chosen frame, segmented into a segmentation
    sequence with the frames' index, names, colours, terminology and grids; pretraining takes every frame."""
    from .testsupport import _matrix

    import numpy as np

    logic, schema = context.logic(), defaultSchema()
    cine = sequences.loadVolumeSequence(context.scene, writeCinePhantom(context), "cine")
    check(sequences.isVolumeSequence(cine) and cine.GetNumberOfDataNodes() == 3, "the 4D phantom did not load")
    check(logic.pretrainInputSummary([cine], None)[0] == 3, "pretraining does not take every frame")
    browser = context.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "cine browser")
    browser.SetAndObserveMasterSequenceNodeID(cine.GetID())
    sequencesLogic = context.applicationLogic.GetModuleLogic("Sequences")
    if sequencesLogic is not None:  # the proxy volume: what the user sees and picks in the Segment section
        sequencesLogic.UpdateProxyNodesFromSequences(browser)
        browser.SetSelectedItemNumber(2)
        proxy = browser.GetProxyNode(cine)
        found = sequences.sequenceOfProxy(context.scene, proxy)
        check(proxy is not None and found == (browser, cine, 2), f"the proxy's sequence was not found: {found}")

    pairs = annotateCases(context, loadPhantoms(context, (TRAINING_SEEDS[0],)), schema)
    model = os.path.join(context.folder, "models", "cine.pt")
    logic.runToCompletion(logic.finetune(pairs, None, model, TINY_FINETUNE, schema), JOB_TIMEOUT)
    expectInputError(lambda: logic.segmentSequence(cine, model, frames=[3]), "frame 4 does not exist")
    shown = logic.runToCompletion(logic.segment(pairs[0][0], model, SegmentOptions(device="cpu"), show3D=True),
                                  JOB_TIMEOUT)
    check(shown.GetSegmentation().ContainsRepresentation("Closed surface"), "Show 3D made no surfaces")

    result = logic.runToCompletion(logic.segmentSequence(cine, model, SegmentOptions(device="cpu")), JOB_TIMEOUT)
    check(result.IsA("vtkMRMLSequenceNode") and result.GetNumberOfDataNodes() == 3, "not one result per frame")
    check(result.GetName() == "cine" + RESULT_SUFFIX, f"result name {result.GetName()!r}")
    check((result.GetIndexName(), result.GetIndexUnit()) == ("time", "ms"), "the result lost the frames' index")
    check([result.GetNthIndexValue(i) for i in range(3)] == ["0", "40", "80"], "index values differ")
    check(browser.IsSynchronizedSequenceNodeID(result.GetID(), False), "the result does not play with the cine")
    for index in range(3):
        frame, volume = result.GetNthDataNode(index), cine.GetNthDataNode(index)
        check(frame.IsA("vtkMRMLSegmentationNode"), f"frame {index} is a {frame.GetClassName()}")
        checkNamesAndColors(frame, schema)
        segmentation = frame.GetSegmentation()
        for number in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(number)
            check(terminology.segmentEntry(segment) == terminology.entryFor(segment.GetName()),
                  f"segment {segment.GetName()} has no standard terminology")
            image = segment.GetRepresentation("Binary labelmap")
            check(np.allclose(_matrix(image.GetImageToWorldMatrix), _matrix(volume.GetIJKToRASMatrix), atol=1e-4),
                  f"frame {index}: a segment is not on the frame's voxel grid")

    one = logic.runToCompletion(logic.segmentSequence(cine, model, SegmentOptions(device="cpu"), frames=[1]),
                                JOB_TIMEOUT)
    check(one.GetNumberOfDataNodes() == 1 and one.GetNthIndexValue(0) == "40", "the chosen frame was not segmented")
    check(one.GetName() != result.GetName(), "a second result replaced the first")
    context.log("cine: 3 frames and a chosen frame segmented into segmentation sequences")
    return {"result": result, "single": one}
