"""Learning from corrections: ``finetune --init MODEL.pt`` continues a segmentation model (every weight, the
preprocessing plan) and the new model records its lineage (parent file and SHA-256, cases, time, validation
Dice), readable from the file alone."""

import datetime
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from maclcore.data.augment import AugmentationConfig
from maclcore.inference.predict import load_segmentation_model, predict_volume
from maclcore.io.pairing import pair_cases
from maclcore.io.volume import read_volume
from maclcore.io.checkpoint import file_sha256, load_checkpoint
from maclcore.training.finetune import FinetuneConfig, finetune
from maclcore.io.lineage import read_lineage
from maclcore.training.loop import LoopConfig
from maclcore.runtime.progress import Reporter
from reliability_utils import one_thread, write_case, write_cases  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = FinetuneConfig(loop=LoopConfig(epochs=4, steps_per_epoch=4, batch_size=4, seed=1), lr=1e-2,
                      channels=(4, 8, 8, 16, 16), spacing=6.0, size=64)


def cases_of(folder):
    return pair_cases(folder / "imagesTr", folder / "labelsTr")


@pytest.fixture(scope="module")
def parent(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("lineage")
    write_cases(root / "first", 2, seed=5)
    write_case(root / "second", "case_new", seed=77)
    for case in cases_of(root / "first"):
        write_case(root / "second", case.name, seed=500 + int(case.name[-3:]))  # same names, like Slicer's
    model = root / "parent.pt"
    finetune(cases_of(root / "first"), model, BASE, device="cpu")
    return {"root": root, "model": model}


def test_continuing_starts_from_every_weight_of_the_parent(parent, tmp_path):
    # One step at a negligible learning rate and without augmentation: the child must be the parent,
    # up to the BatchNorm statistics of that one step. A child from scratch (the control) is not.
    still = replace(BASE, loop=LoopConfig(epochs=1, steps_per_epoch=1, batch_size=4, seed=2), lr=1e-9, min_lr=0.0,
                    size=None, spacing=None, channels=None, augmentation=AugmentationConfig(enabled=False))
    child, scratch = tmp_path / "child.pt", tmp_path / "scratch.pt"
    summary = finetune(cases_of(parent["root"] / "second"), child, still, init=parent["model"], device="cpu")
    assert {"encoder", "decoder.blocks.0", "decoder.blocks.3", "head"} <= set(summary["init"]["loaded"])
    assert summary["init"]["random"] == []
    finetune(cases_of(parent["root"] / "second"), scratch, replace(still, channels=(4, 8, 8, 16, 16), spacing=6.0),
             device="cpu")
    weights = {name: load_checkpoint(path)["state_dict"] for name, path in
               (("parent", parent["model"]), ("child", child), ("scratch", scratch))}
    learnt = [k for k in weights["parent"] if k.endswith(".weight") or k.endswith(".bias")]
    assert max(float((weights["child"][k] - weights["parent"][k]).abs().max()) for k in learnt) < 1e-6
    assert max(float((weights["scratch"][k] - weights["parent"][k]).abs().max()) for k in learnt) > 1e-2

    volume = read_volume(parent["root"] / "second" / "imagesTr" / "case_new_0000.nii.gz")
    labels = {name: predict_volume(load_segmentation_model(path), volume, postprocess=False)
              for name, path in (("parent", parent["model"]), ("child", child), ("scratch", scratch))}
    assert np.mean(labels["child"] == labels["parent"]) > 0.98
    assert np.mean(labels["scratch"] == labels["parent"]) < 0.9


def test_the_preprocessing_plan_is_inherited(parent, tmp_path):
    child = tmp_path / "child.pt"
    config = replace(BASE, loop=LoopConfig(epochs=1, steps_per_epoch=1, batch_size=2), size=None, spacing=None,
                     channels=None)
    finetune(cases_of(parent["root"] / "second"), child, config, init=parent["model"], device="cpu")
    inherited, own = load_checkpoint(parent["model"])["preprocessing"], load_checkpoint(child)["preprocessing"]
    assert own == inherited and own["size"] == 64  # the new cases alone would plan 48 at 6 mm


def test_lineage_records_parent_cases_time_and_dice(parent, tmp_path):
    child, grandchild = tmp_path / "model-002.pt", tmp_path / "model-003.pt"
    config = replace(BASE, loop=LoopConfig(epochs=1, steps_per_epoch=1, batch_size=2), size=None, spacing=None,
                     channels=None)
    second = cases_of(parent["root"] / "second")
    finetune(second, child, config, init=parent["model"], device="cpu")
    finetune(second, grandchild, config, init=child, device="cpu", reporter=Reporter())
    first = read_lineage(parent["model"])
    assert len(first) == 1 and first[0]["parent"] is None and first[0]["generation"] == 1
    assert first[0]["cases"] == ["case_000", "case_001"] and first[0]["output"] == os.path.abspath(parent["model"])

    lineage = read_lineage(grandchild)  # the whole history, from the last file alone
    assert [g["generation"] for g in lineage] == [1, 2, 3]
    assert lineage[0] == first[0]
    assert lineage[1]["parent"] == {"path": os.path.abspath(parent["model"]), "sha256": file_sha256(parent["model"]),
                                    "kind": "segmentation"}
    assert lineage[2]["parent"]["sha256"] == file_sha256(child) and lineage[2]["output"] == os.path.abspath(grandchild)
    assert lineage[1]["cases"] == ["case_000", "case_001", "case_new"] and lineage[1]["added_cases"] == ["case_new"]
    assert lineage[2]["added_cases"] == []
    for generation in lineage:
        assert datetime.datetime.fromisoformat(generation["created"]).tzinfo is not None
        assert generation["val_dice"] is None  # too few patients for a validation split
    assert torch.load(grandchild, weights_only=True)["lineage"] == lineage  # plain data


def test_validation_dice_is_recorded_when_there_is_a_split(tmp_path):
    folder = write_cases(tmp_path / "five", 5, seed=9)
    model = tmp_path / "validated.pt"
    config = replace(BASE, loop=LoopConfig(epochs=1, steps_per_epoch=1, batch_size=2))
    summary = finetune(cases_of(folder), model, config, device="cpu")
    recorded = read_lineage(model)[-1]["val_dice"]
    assert summary["val_cases"] and isinstance(recorded, float) and 0.0 <= recorded <= 1.0
