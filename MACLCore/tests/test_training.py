"""Finetuning and pretraining through the API: self-describing files, weight transfer, learning."""

import numpy as np
import pytest
import torch

from maclcore.data.augment import AugmentationConfig
from maclcore.errors import InputError
from maclcore.inference.predict import load_segmentation_model, predict_volume
from maclcore.io.pairing import find_images, pair_cases
from maclcore.io.segmentation import read_label_map
from maclcore.io.volume import read_volume
from maclcore.evaluation.metrics import overlap_per_class
from maclcore.labels import CARDIAC
from maclcore.models.unet import UNet, UNetConfig
from maclcore.io.checkpoint import load_checkpoint
from maclcore.training.finetune import FinetuneConfig, case_group, finetune, split_validation
from maclcore.training.loop import LoopConfig
from maclcore.training.pretrain import pretrain, pretrain_config
from maclcore.training.transfer import load_initial_weights

from phantom_data import images_of, labels_of

CHANNELS = (4, 8, 8, 16, 16)


def tiny_finetune(epochs=2, **kwargs):
    return FinetuneConfig(loop=LoopConfig(epochs=epochs, batch_size=4, seed=0), channels=CHANNELS, spacing=6.0,
                          **kwargs)


def test_finetuned_model_file_describes_itself(phantoms, tmp_path):
    cases = pair_cases(images_of(phantoms["train"]), labels_of(phantoms["train"]))
    summary = finetune(cases, tmp_path / "m.pt", tiny_finetune(), device="cpu")
    data = load_checkpoint(tmp_path / "m.pt", kinds=("segmentation",))
    assert data["labels"]["names"] == list(CARDIAC.names)
    assert data["preprocessing"]["spacing"] == 6.0 and data["preprocessing"]["size"] % 16 == 0
    assert data["model"]["channels"] == list(CHANNELS) and data["model"]["num_classes"] == 4
    assert data["training"]["seed"] == 0 and len(data["training"]["history"]) == 2
    assert data["training"]["train_cases"] == [c.name for c in cases]
    assert data["provenance"]["torch"] == str(torch.__version__)
    assert summary["selected_epoch"] == 2
    assert not (tmp_path / "m.resume.pt").exists() and not (tmp_path / "m.pt.lock").exists()


def test_prediction_lies_on_the_input_grid(phantoms, tmp_path):
    cases = pair_cases(images_of(phantoms["train"]), labels_of(phantoms["train"]))
    finetune(cases, tmp_path / "m.pt", tiny_finetune(), device="cpu")
    model = load_segmentation_model(tmp_path / "m.pt")
    volume = read_volume(find_images([images_of(phantoms["test"])])[0].image)
    labels = predict_volume(model, volume)
    assert labels.shape == volume.array.shape and labels.dtype == np.uint8
    assert labels.max() <= 3


def test_validation_split_holds_out_whole_patients():
    names = [f"patient{p:03d}_{f}" for p in range(1, 11) for f in ("ED", "ES")]
    assert case_group("patient007_ES") == "patient007" and case_group("phantom_003") == "phantom_003"
    train, val = split_validation(names, FinetuneConfig())
    assert len(val) == 4 and len(train) == 16  # 2 of 10 patients, both frames each
    assert {case_group(n) for n in val}.isdisjoint({case_group(n) for n in train})
    assert split_validation(names[:8], FinetuneConfig()) == (names[:8], [])  # 4 patients: keep the last epoch


def test_validation_dice_selects_the_model(phantoms, tmp_path):
    cases = pair_cases(images_of(phantoms["train"]), labels_of(phantoms["train"]))
    summary = finetune(cases, tmp_path / "m.pt", tiny_finetune(epochs=3, min_val_groups=3, val_fraction=0.34),
                       device="cpu")
    assert len(summary["val_cases"]) == 1 and summary["val_cases"][0] not in summary["train_cases"]
    scores = [entry["val_dice"] for entry in summary["history"]]
    assert summary["selected_epoch"] == int(np.argmax(scores)) + 1


def test_pretrained_encoder_and_decoder_blocks_are_transferred(phantoms, tmp_path):
    cases = find_images([images_of(phantoms["train"]), images_of(phantoms["test"])])
    config = pretrain_config("macl", loop=LoopConfig(epochs=1, batch_size=4, steps_per_epoch=2), channels=CHANNELS,
                             spacing=6.0)
    summary = pretrain(cases, tmp_path / "pre.pt", config, device="cpu")
    assert summary["decoder_depth"] == 2 and {"loss_global", "loss_dense", "loss_er"} <= set(summary["history"][0])
    data = load_checkpoint(tmp_path / "pre.pt", kinds=("pretrain",))
    unet = UNet(UNetConfig(channels=CHANNELS))
    report = load_initial_weights(unet, data, tmp_path / "pre.pt")
    assert report["loaded"] == ["decoder.blocks.0", "decoder.blocks.1", "encoder"]
    assert report["random"] == ["decoder.blocks.2", "decoder.blocks.3", "head"]
    state = unet.state_dict()
    for name, tensor in data["state_dict"].items():
        if name.startswith(("encoder.", "decoder.")):
            assert torch.equal(state[name], tensor)
    with pytest.raises(InputError, match="use the same channels"):
        load_initial_weights(UNet(UNetConfig(channels=(8, 8, 8, 16, 16))), data, tmp_path / "pre.pt")
    with pytest.raises(InputError, match="needed here"):
        load_checkpoint(tmp_path / "pre.pt", kinds=("segmentation",))


@pytest.mark.slow
def test_finetuning_learns_the_phantom_anatomy(phantoms, tmp_path):
    cases = pair_cases(images_of(phantoms["train"]), labels_of(phantoms["train"]))
    # The phantoms' hearts all point one way (within 30 degrees), so a narrower augmentation than the default
    # full circle lets this short run learn them.
    config = FinetuneConfig(loop=LoopConfig(epochs=10, batch_size=8, steps_per_epoch=20, seed=0),
                            channels=(8, 16, 32, 64, 128), spacing=6.0, lr=2e-3,
                            augmentation=AugmentationConfig(rotation=30.0, scale=(0.85, 1.15)))
    finetune(cases, tmp_path / "m.pt", config, device="cpu")
    model = load_segmentation_model(tmp_path / "m.pt")
    test = pair_cases(images_of(phantoms["test"]), labels_of(phantoms["test"]))[0]
    volume = read_volume(test.image)
    truth = read_label_map(test.label, CARDIAC, volume.geometry)
    dice = overlap_per_class(predict_volume(model, volume), truth, 4)["dice"]
    assert dice.mean() > 0.6, dice
