"""Unlabelled volumes in finetuning: which rows they take, their pseudo-labels (post-processed, unsure pixels
ignored), the loss over confident pixels, and runs that use them (labelled once, at the start share)."""

import numpy as np
import pytest
import torch

from maclcore.data.dataset import SliceData
from maclcore.errors import ConfigError
from maclcore.losses.segmentation import segmentation_loss
from maclcore.training.unlabelled import IGNORE, PseudoLabels, UnlabelledConfig, pseudo_rows


def test_config_is_checked():
    with pytest.raises(ConfigError, match="confidence"):
        UnlabelledConfig(confidence=1.0)
    with pytest.raises(ConfigError, match="share"):
        UnlabelledConfig(share=1.0)
    with pytest.raises(ConfigError, match="start"):
        UnlabelledConfig(start=1.0)


def test_pseudo_rows_take_their_share_whatever_the_split():
    rows = torch.arange(16)
    assert pseudo_rows(rows, 0.5).tolist() == [False, True] * 8
    assert int(pseudo_rows(torch.arange(100), 0.25).sum()) == 25
    # Two processes with 8 rows each decide as one process with 16.
    assert torch.equal(torch.cat([pseudo_rows(torch.arange(0, 8), 0.3), pseudo_rows(torch.arange(8, 16), 0.3)]),
                       pseudo_rows(rows, 0.3))


class Teacher(torch.nn.Module):
    """Sure (97%) of class 2 in a 6x6 square at (4..10, 4..10) and of a 2x2 stray square at (26..28, 26..28)
    of class 1; 60% sure of class 1 at (0..4, 16..18); background, sure, elsewhere."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))  # predict_slices reads the device from a parameter

    def forward(self, x):
        n, _, h, w = x.shape
        p = torch.zeros(n, 3, h, w)
        p[:, 0] = 0.97
        p[:, :, 4:10, 4:10] = torch.tensor([0.015, 0.015, 0.97])[:, None, None]
        p[:, :, 26:28, 26:28] = torch.tensor([0.015, 0.97, 0.015])[:, None, None]
        p[:, :, 0:4, 16:18] = torch.tensor([0.2, 0.6, 0.2])[:, None, None]
        p = p.clamp(min=0.015)
        return (p / p.sum(1, keepdim=True)).log() + 0 * self.weight


def test_labels_are_postprocessed_and_unsure_pixels_ignored():
    data = SliceData(images=torch.rand(4, 1, 32, 32), positions=torch.zeros(4),
                     volumes=torch.tensor([0, 0, 1, 1]), names=["a", "b"])
    pseudo = PseudoLabels(data, 3, UnlabelledConfig(confidence=0.9, start=0.5), 16, 1.0, one_object=True)
    assert not pseudo.due(0.4) and pseudo.due(0.5)
    summary = pseudo.label(Teacher(), 8, amp=False)
    labels = pseudo.labels.numpy()
    assert (labels[:, 4:10, 4:10] == 2).all()  # the heart, confident
    assert (labels[:, 0:4, 16:18] == IGNORE).all()  # 60% sure: ignored
    assert (labels[:, 26:28, 26:28] == 0).all()  # the stray island: removed by the heart-first post-processing
    assert summary["confident"] == pytest.approx(1 - 8 / 32 ** 2) and summary["volumes_found"] == 2
    assert not pseudo.due(0.9)  # labelled once
    # Crops are centred on the pseudo-labelled structure (foreground 1: always), never on an ignored pixel.
    picks, centres = pseudo.draw(torch.arange(64), 64, torch.Generator().manual_seed(0))
    pixels = ((centres + 1) / 2 * 32 - 0.5).numpy()  # (x, y): a square pixel 4..9, +-1/8 crop of jitter
    assert (np.abs(pixels - 6.5) <= 2.5 + 16 / 8).all() and picks.max() < 4


def test_loss_counts_only_confident_pixels():
    target = torch.full((2, 8, 8), IGNORE, dtype=torch.uint8)
    target[:, :, :4] = 2
    perfect = torch.full((2, 3, 8, 8), -20.0)
    perfect[:, 2] = 20.0  # right where labelled, "wrong" (class 2) where ignored
    assert segmentation_loss(perfect, target, 1.0, ignore_index=IGNORE) < 1e-6
    wrong = torch.full((2, 3, 8, 8), -20.0)
    wrong[:, 0] = 20.0
    assert segmentation_loss(wrong, target, 0.0, ignore_index=IGNORE) == pytest.approx(40.0, rel=0.01)
    nothing = torch.full((2, 8, 8), IGNORE, dtype=torch.uint8)
    assert float(segmentation_loss(wrong, nothing, 1.0, ignore_index=IGNORE)) == 0.0  # no pixel counts: no loss
    plain = torch.randint(0, 3, (2, 8, 8))
    logits = torch.randn(2, 3, 8, 8)
    assert torch.allclose(segmentation_loss(logits, plain, 1.0, ignore_index=IGNORE), segmentation_loss(logits, plain, 1.0))


def _phantoms(tmp_path):
    from maclcore.data.phantom import write_phantom_dataset
    from maclcore.io.pairing import find_images, pair_cases

    write_phantom_dataset(str(tmp_path / "l"), 2, seed=1)
    write_phantom_dataset(str(tmp_path / "u"), 3, seed=2, prefix="unl")
    return (pair_cases(str(tmp_path / "l" / "imagesTr"), str(tmp_path / "l" / "labelsTr")),
            find_images([str(tmp_path / "u" / "imagesTr")]))


def test_finetune_labels_the_unlabelled_volumes_once_at_the_start_share(tmp_path):
    from maclcore.runtime.progress import Reporter
    from maclcore.training.finetune import FinetuneConfig, finetune
    from maclcore.training.loop import LoopConfig

    class Recorder(Reporter):
        def __init__(self):
            super().__init__()
            self.messages = []

        def message(self, text):
            self.messages.append(text)

    cases, unlabelled = _phantoms(tmp_path)
    config = FinetuneConfig(loop=LoopConfig(epochs=2, steps_per_epoch=4, batch_size=4, ema_decay=0.9),
                            channels=(4, 4, 4, 8, 8), spacing=6.0, size=64,  # the unlabelled ones may not grow it
                            unlabelled_loss=UnlabelledConfig(start=0.5, confidence=0.0))
    recorder = Recorder()
    summary = finetune(cases, tmp_path / "m.pt", config, device="cpu", unlabelled=unlabelled, reporter=recorder)
    assert summary["history"][-1]["step"] == 8
    labelled = [m for m in recorder.messages if "labelled" in m and m.startswith("step")]
    assert len(labelled) == 1 and labelled[0].startswith("step 4:")  # once, half-way through 8 steps
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert saved["training"]["config"]["unlabelled_loss"]["start"] == 0.5
    assert sorted(saved["training"]["unlabelled_cases"]) == sorted(c.name for c in unlabelled)
    without = finetune(cases, tmp_path / "plain.pt", config, device="cpu")
    # The first half is the same run; the second half differs (its batches hold unlabelled crops).
    assert without["history"][0]["loss"] == pytest.approx(summary["history"][0]["loss"], rel=1e-5)
    assert without["history"][-1]["loss"] != summary["history"][-1]["loss"]


def test_budgeted_run_keeps_the_labelling_time_aside(tmp_path, monkeypatch):
    """Under a time budget the clock is told the labelling pass's estimated time, so the run still ends on time."""
    from maclcore.training import loop
    from maclcore.training.budget import RESERVE_SECONDS, BudgetClock
    from maclcore.training.finetune import FinetuneConfig, finetune
    from maclcore.training.loop import LoopConfig

    reserves = []

    def recording_clock(*args, **kwargs):
        reserves.append(kwargs["reserve_seconds"])
        return BudgetClock(*args, **kwargs)

    monkeypatch.setattr(loop, "BudgetClock", recording_clock)
    monkeypatch.setattr(PseudoLabels, "estimate_seconds", lambda self, network, batch_size, amp: 12.5)
    cases, unlabelled = _phantoms(tmp_path)
    config = FinetuneConfig(loop=LoopConfig(time_budget=0.05, batch_size=2, ema_decay=0.9, epochs=1),
                            channels=(4, 4, 4, 8, 8), spacing=6.0)
    finetune(cases, tmp_path / "m.pt", config, device="cpu", unlabelled=unlabelled)
    finetune(cases, tmp_path / "plain.pt", config, device="cpu")
    assert reserves == [RESERVE_SECONDS + 12.5, RESERVE_SECONDS]
