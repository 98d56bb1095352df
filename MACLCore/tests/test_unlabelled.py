"""Unlabelled volumes in finetuning: the term's schedule, its views and mask, and a run that uses them."""

import pytest
import torch

from maclcore.data.augment import AugmentationConfig
from maclcore.data.dataset import SliceData
from maclcore.errors import ConfigError
from maclcore.training.unlabelled import PseudoLabels, UnlabelledConfig


def test_weight_is_off_then_ramps_up():
    config = UnlabelledConfig(weight=2.0, start=0.1, ramp=0.3)
    assert config.weight_at(0.05) == 0.0
    assert config.weight_at(0.25) == pytest.approx(1.0)
    assert config.weight_at(0.9) == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="confidence"):
        UnlabelledConfig(confidence=1.0)


class Constant(torch.nn.Module):
    """A 'teacher' that is 95% sure of class 2 in the left half and 60% sure of class 1 in the right half."""

    def forward(self, x):
        n, _, h, w = x.shape
        probabilities = torch.full((n, 3, h, w), 0.025)
        probabilities[:, 2, :, : w // 2] = 0.95
        probabilities[:, 1, :, w // 2:] = 0.6
        probabilities[:, 0, :, w // 2:] = 0.2
        probabilities[:, 2, :, w // 2:] = 0.2
        return probabilities.log()


def test_views_share_one_geometry_and_only_confident_pixels_count():
    images = torch.rand(6, 1, 32, 32)
    data = SliceData(images=images, positions=torch.zeros(6), volumes=torch.zeros(6, dtype=torch.long), names=["u"])
    no_intensity = AugmentationConfig(gamma=(1, 1), gain=(1, 1))
    pseudo = PseudoLabels(data, UnlabelledConfig(confidence=0.9), no_intensity, 16, lambda: Constant())
    generator = torch.Generator().manual_seed(0)
    student, teacher_inputs = pseudo.views(4, torch.arange(4), 4, generator)
    assert student.shape == teacher_inputs.shape == (4, 1, 16, 16)
    assert torch.allclose(student, teacher_inputs)  # without intensity changes the two views are one crop
    labels, mask = pseudo.labels(teacher_inputs)
    assert bool((labels[:, :, :8] == 2).all()) and bool(mask[:, :, :8].all()) and not bool(mask[:, :, 8:].any())
    perfect = torch.full((4, 3, 16, 16), -20.0)
    perfect[:, 2] = 20.0
    assert PseudoLabels.loss(perfect, labels, mask) < 1e-6  # agrees with the confident half; the rest is masked
    wrong = torch.full((4, 3, 16, 16), -20.0)
    wrong[:, 0] = 20.0
    assert PseudoLabels.loss(wrong, labels, mask) == pytest.approx(20.0, rel=0.01)  # 40 nats on half the pixels


def test_finetune_with_unlabelled_volumes_records_them(tmp_path):
    from maclcore.data.phantom import write_phantom_dataset
    from maclcore.io.pairing import find_images, pair_cases
    from maclcore.training.finetune import FinetuneConfig, finetune
    from maclcore.training.loop import LoopConfig

    write_phantom_dataset(str(tmp_path / "l"), 2, seed=1)
    write_phantom_dataset(str(tmp_path / "u"), 3, seed=2, prefix="unl")
    cases = pair_cases(str(tmp_path / "l" / "imagesTr"), str(tmp_path / "l" / "labelsTr"))
    unlabelled = find_images([str(tmp_path / "u" / "imagesTr")])
    config = FinetuneConfig(loop=LoopConfig(epochs=2, steps_per_epoch=3, batch_size=2, ema_decay=0.9),
                            channels=(4, 4, 4, 8, 8), spacing=6.0,
                            unlabelled_loss=UnlabelledConfig(start=0.0, ramp=0.0, confidence=0.0))
    summary = finetune(cases, tmp_path / "m.pt", config, device="cpu", unlabelled=unlabelled)
    assert summary["history"][-1]["step"] == 6
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert saved["training"]["config"]["unlabelled_loss"]["confidence"] == 0.0
    assert sorted(saved["training"]["unlabelled_cases"]) == sorted(c.name for c in unlabelled)
    without = finetune(cases, tmp_path / "plain.pt", config, device="cpu")
    assert without["history"][-1]["loss"] != summary["history"][-1]["loss"]  # the term took part
