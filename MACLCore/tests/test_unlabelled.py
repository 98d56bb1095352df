"""Unlabelled volumes in finetuning: which rows they take, their pseudo-labels (post-processed, unsure and
unstable pixels ignored, relabelled at each pass), the loss over kept pixels, and runs that use them."""

import numpy as np
import pytest
import torch

from maclcore.data.dataset import SliceData
from maclcore.errors import ConfigError
from maclcore.labels import LabelSchema
from maclcore.losses.segmentation import segmentation_loss
from maclcore.training.unlabelled import (IGNORE, PseudoLabels, UnlabelledConfig, copy_paste_corners, pseudo_rows,
                                          swap_squares)

TWO_LABELS = LabelSchema(names=("a", "b"), colors=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)))
ONE_OBJECT = LabelSchema(names=("a", "b"), colors=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)), one_object=True)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="confidence"):
        UnlabelledConfig(confidence=1.0)
    with pytest.raises(ConfigError, match="share"):
        UnlabelledConfig(share=1.0)
    for side in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="copy_paste"):
            UnlabelledConfig(copy_paste=side)
    for passes in [(), (0.5, 0.4), (0.4, 0.4), (0.5, 1.0), (-0.1,)]:
        with pytest.raises(ConfigError, match="passes"):
            UnlabelledConfig(passes=passes)


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
    pseudo = PseudoLabels(data, ONE_OBJECT, UnlabelledConfig(confidence=0.9, passes=(0.5,), tta=False), 16, 1.0)
    assert not pseudo.due(0.4) and pseudo.due(0.5)
    summary = pseudo.label(Teacher(), 8, amp=False, progress=0.5)
    labels = pseudo.labels.numpy()
    assert (labels[:, 4:10, 4:10] == 2).all()  # the heart, confident
    assert (labels[:, 0:4, 16:18] == IGNORE).all()  # 60% sure: ignored
    assert (labels[:, 26:28, 26:28] == 0).all()  # the stray island: removed by the heart-first post-processing
    assert summary["kept"] == pytest.approx(1 - 8 / 32 ** 2) and summary["volumes_found"] == 2
    assert summary["pass"] == 1 and summary["changed"] == 0
    assert not pseudo.due(0.9)  # its one pass is made
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


class Bright(torch.nn.Module):
    """Labels by intensity: class 1 where the image is above ``threshold``, background elsewhere; as sure
    as ``sure``. Flip-equivariant, as a trained network nearly is."""

    def __init__(self, threshold, sure=0.95):
        super().__init__()
        self.threshold, self.sure = threshold, sure
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        one = (x[:, 0] > self.threshold).float()
        p1 = one * self.sure + (1 - one) * (1 - self.sure) / 2
        p = torch.stack([1 - p1 - (1 - self.sure) / 2, p1, torch.full_like(p1, (1 - self.sure) / 2)], 1)
        return p.clamp(min=1e-4).log() + 0 * self.weight


def _ramp_slices():
    """Two volumes of two 32² slices whose intensity rises from left (0) to right (1)."""
    ramp = torch.linspace(0, 1, 32).expand(32, 32)
    return SliceData(images=ramp.expand(4, 1, 32, 32).clone(), positions=torch.zeros(4),
                     volumes=torch.tensor([0, 0, 1, 1]), names=["a", "b"])


def test_each_pass_relabels_and_pixels_that_changed_are_ignored():
    data = _ramp_slices()
    pseudo = PseudoLabels(data, TWO_LABELS, UnlabelledConfig(confidence=0.5, passes=(0.2, 0.5, 0.8)), None, 1.0)
    assert [pseudo.due(p) for p in (0.1, 0.2)] == [False, True] and pseudo.remaining_passes() == 3
    first = pseudo.label(Bright(0.5), 4, amp=False, progress=0.2)
    labels = pseudo.labels.numpy()
    columns = torch.linspace(0, 1, 32).numpy() > 0.5
    assert (labels[:, :, columns] == 1).all() and (labels[:, :, ~columns] == 0).all()  # flips averaged back
    assert first["pass"] == 1 and first["kept"] == 1.0
    assert not pseudo.due(0.4) and pseudo.due(0.5) and pseudo.remaining_passes(0.4) == 2
    # The second teacher calls more columns class 1: those changed, so they are ignored; the rest are kept.
    second = pseudo.label(Bright(0.25), 4, amp=False, progress=0.5)
    labels = pseudo.labels.numpy()
    moved = (torch.linspace(0, 1, 32).numpy() > 0.25) & ~columns
    assert (labels[:, :, moved] == IGNORE).all() and (labels[:, :, columns] == 1).all()
    assert (labels[:, :, ~(moved | columns)] == 0).all()
    assert second["changed"] == pytest.approx(moved.mean()) and second["kept"] == pytest.approx(1 - moved.mean())
    # A third teacher that agrees with the second: nothing changed since the last pass, nothing ignored.
    third = pseudo.label(Bright(0.25), 4, amp=False, progress=0.8)
    assert third["changed"] == 0 and (pseudo.labels != IGNORE).all() and not pseudo.due(0.99)
    # Without the agreement rule, the changed pixels are kept with their new label.
    loose = PseudoLabels(data, TWO_LABELS, UnlabelledConfig(confidence=0.5, passes=(0.2, 0.5), agreement=False),
                         None, 1.0)
    loose.label(Bright(0.5), 4, amp=False, progress=0.2)
    loose.label(Bright(0.25), 4, amp=False, progress=0.5)
    assert (loose.labels.numpy()[:, :, moved] == 1).all()


def test_passes_already_due_are_made_as_one():
    """A run resumed past two passes labels once, and counts both as made."""
    pseudo = PseudoLabels(_ramp_slices(), TWO_LABELS, UnlabelledConfig(passes=(0.2, 0.5, 0.8)), None, 1.0)
    assert pseudo.remaining_passes(0.6) == 2  # the due one (made as one) and 0.8
    summary = pseudo.label(Bright(0.5), 4, amp=False, progress=0.6)
    assert summary["pass"] == 2 and not pseudo.due(0.7) and pseudo.due(0.8)


def _labelled_and_dark_unlabelled_task(terms: UnlabelledConfig):
    """A finetune task on bright labelled slices with dark unlabelled ones, pseudo-labelled already, and the
    list of batches its network was given."""
    from maclcore.data.augment import AugmentationConfig
    from maclcore.training.finetune import FinetuneConfig, FinetuneTask
    from maclcore.training.loop import LoopConfig

    size = 32
    labels = torch.zeros(6, size, size, dtype=torch.uint8)
    labels[:, 8:24, 8:24] = 1
    train = SliceData(images=torch.ones(6, 1, size, size), positions=torch.zeros(6), volumes=torch.zeros(6, dtype=torch.long),
                      names=["l"], labels=labels)
    unlabelled = SliceData(images=torch.zeros(5, 1, size, size), positions=torch.zeros(5),
                           volumes=torch.zeros(5, dtype=torch.long), names=["u"])
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 3, 1)

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.conv(x)

    config = FinetuneConfig(loop=LoopConfig(batch_size=4), augmentation=AugmentationConfig(enabled=False),
                            unlabelled_loss=terms)
    task = FinetuneTask(Recorder(), train, None, config, 3, crop=16)
    task.pseudo = PseudoLabels(unlabelled, TWO_LABELS, terms, 16, 0.0)
    task.pseudo.label(Bright(0.5), 4, amp=False, progress=0.0)
    return task, seen


def test_the_step_puts_labelled_rows_first_and_pseudo_rows_after():
    """The loss splits the batch by position (no device-to-host wait): labelled slices first, then the
    pseudo-labelled ones, as many as pseudo_rows gives them, whatever the process's offset."""
    task, seen = _labelled_and_dark_unlabelled_task(UnlabelledConfig(share=0.5, passes=(0.0,), tta=False,
                                                                      confidence=0.0))
    generator = torch.Generator().manual_seed(0)
    for offset, batch in [(0, 4), (4, 3), (1, 1)]:
        loss = task.loss(torch.arange(batch), generator, offset, 8)
        assert torch.isfinite(loss)
        taken = pseudo_rows(torch.arange(offset, offset + batch), 0.5)
        mine = int((~taken).sum())
        means = seen[-1].mean((1, 2, 3))
        assert (means[:mine] > 0.5).all() and (means[mine:] == 0).all()


def test_finetune_relabels_the_unlabelled_volumes_at_each_pass(tmp_path):
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
    config = FinetuneConfig(loop=LoopConfig(epochs=5, steps_per_epoch=2, batch_size=4, ema_decay=0.9),
                            channels=(4, 4, 4, 8, 8), spacing=6.0, size=64,  # the unlabelled ones may not grow it
                            unlabelled_loss=UnlabelledConfig(passes=(0.5, 0.8), confidence=0.0))
    recorder = Recorder()
    summary = finetune(cases, tmp_path / "m.pt", config, device="cpu", unlabelled=unlabelled, reporter=recorder)
    assert summary["history"][-1]["step"] == 10
    labelled = [m for m in recorder.messages if m.startswith("step") and "labelled" in m]
    assert [m.split(":")[0] for m in labelled] == ["step 5", "step 8"]  # half-way and at 80% of 10 steps
    assert "pass 1 of 2" in labelled[0] and "pass 2 of 2" in labelled[1] and "changed since the last" in labelled[1]
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert saved["training"]["config"]["unlabelled_loss"]["passes"] == [0.5, 0.8]
    assert sorted(saved["training"]["unlabelled_cases"]) == sorted(c.name for c in unlabelled)
    without = finetune(cases, tmp_path / "plain.pt", config, device="cpu")
    # The first half is the same run; the second half differs (its batches hold unlabelled crops).
    assert without["history"][0]["loss"] == pytest.approx(summary["history"][0]["loss"], rel=1e-5)
    assert without["history"][-1]["loss"] != summary["history"][-1]["loss"]


def test_budgeted_run_keeps_the_labelling_time_aside(tmp_path, monkeypatch):
    """Under a time budget the clock is told the labelling passes' estimated time, so the run still ends on time."""
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
    passes = len(config.unlabelled_loss.passes)  # every pass to come is kept aside
    assert passes == 3 and reserves == [RESERVE_SECONDS + passes * 12.5, RESERVE_SECONDS]


def test_copy_paste_swaps_one_square_between_each_pair_and_nothing_else():
    images = torch.arange(4, dtype=torch.float32)[:, None, None, None].expand(4, 1, 8, 8).clone()
    labels = torch.tensor([1, 1, 2, IGNORE], dtype=torch.uint8)[:, None, None].expand(4, 8, 8).clone()
    corners = torch.tensor([[0, 0], [5, 2]])
    mixed, mixed_labels = swap_squares(images, labels, torch.tensor([0, 1]), torch.tensor([2, 3]), corners, 3)
    assert (images[:, 0, 0, 0] == torch.arange(4.0)).all()  # the inputs are left alone
    square = torch.zeros(2, 8, 8, dtype=torch.bool)
    square[0, 0:3, 0:3] = True
    square[1, 5:8, 2:5] = True
    for pair, (a, b) in enumerate([(0, 2), (1, 3)]):
        inside = square[pair]
        assert (mixed[a, 0][inside] == b).all() and (mixed[a, 0][~inside] == a).all()
        assert (mixed[b, 0][inside] == a).all() and (mixed[b, 0][~inside] == b).all()
        assert (mixed_labels[a][inside] == labels[b, 0, 0]).all() and (mixed_labels[b][inside] == labels[a, 0, 0]).all()
        assert (mixed_labels[a][~inside] == labels[a, 0, 0]).all()


def test_copy_paste_corners_keep_the_square_inside_and_do_not_depend_on_the_split():
    corners = copy_paste_corners(64, torch.arange(64), (16, 16), 11, torch.Generator().manual_seed(3))
    assert corners.min() >= 0 and corners.max() <= 16 - 11 and len({tuple(c) for c in corners.tolist()}) > 10
    halves = [copy_paste_corners(64, torch.arange(a, a + 32), (16, 16), 11, torch.Generator().manual_seed(3))
              for a in (0, 32)]
    assert torch.equal(torch.cat(halves), corners)


def test_the_step_with_copy_paste_mixes_labelled_and_pseudo_labelled_crops():
    """With copy_paste the first labelled row and the first pseudo-labelled row swap a square (the bright
    labelled image shows in the dark unlabelled one and the reverse); the loss stays finite."""
    task, seen = _labelled_and_dark_unlabelled_task(UnlabelledConfig(share=0.5, passes=(0.0,), tta=False,
                                                                      confidence=0.0, copy_paste=0.5))
    loss = task.loss(torch.arange(4), torch.Generator().manual_seed(0), 0, 4)
    assert torch.isfinite(loss)
    batch = seen[-1][:, 0]
    for row in range(4):  # two rows of each kind; each holds one 8x8 square of the other kind
        assert int((batch[row] == (0.0 if row < 2 else 1.0)).sum()) == 64
