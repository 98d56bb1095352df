"""Unlabelled volumes in finetuning: self-training on the weight average's pseudo-labels, relabelled as it improves.

For the first part of the run the network learns from the labelled crops alone. At each share of the run in
``passes`` the weight average (the model that is kept; the network itself when there is none) labels every
unlabelled slice, on the whole slice as inference does and averaged over the in-plane flips (``tta``),
followed by the post-processing inference applies to each volume (for the cardiac labels: the heart-first
largest components, then the background the myocardium encloses made LV cavity). A pixel is ignored by the
loss when the teacher is less than ``confidence`` sure of it, or (``agreement``) when its label changed since
the previous pass. From the first pass on, a share ``share`` of
each step's crops come from the pseudo-labelled slices, centred class-aware on the pseudo-labelled
structures like the labelled crops, with the same augmentation and the same loss (cross-entropy + soft Dice
over the kept pixels) times ``weight``.

Our choices, and why:
- A mean teacher labelling random crops every step (our first version) cost 3x a step and lost at M = 2 on
  ACDC (0.415 vs 0.763 mean Dice): random crops are mostly background, so its confident pixels taught the
  network to call the right ventricle background. Labelling whole slices, post-processed, and drawing crops
  around what was found keeps the classes balanced; the batch keeps its size, so a step costs the same.
- One labelling pass half-way (our second version) helped with 1-2 labelled patients (+8.9 / +3.1 points
  over 3 draws) but lost 1.5 at 4: the half-way teacher is the weakest model the student ever copies, and
  with flips the teacher's softmax was >= 0.8 sure of ~100% of pixels, so the confidence rule removed
  nothing. Several passes let later crops come from a better teacher; the flip average and the agreement
  between passes mark the pixels the teacher does not know (a label that flips between two passes is a
  guess). A pass costs one (``tta``: four) inference over the unlabelled slices; every pass is timed before
  the run (:meth:`PseudoLabels.estimate_seconds`) and kept out of the time budget.
- The teacher's flips (``tta``) stay on though a pass without them is ~4x cheaper (~8 s instead of ~37 s for
  30 ACDC patients on a 2-core CPU, so ~35% more steps in a 10-minute budget): at M = 4 (3 draws) that scored
  0.841 mean Dice vs 0.845 with them. More steps do not help self-training here; better pseudo-labels might.
- Copy-paste (``copy_paste``, off): each pseudo-labelled crop swaps a square with a labelled crop of the
  batch, as BCP does. Measured at M = 4 on ACDC (3 draws, side 0.67 of the crop): 0.849 mean Dice with flips
  vs 0.845 without it, per draw 0.0 / -0.5 / +1.7 points: within the spread of single runs in a 10-minute
  budget, so it stays an option (it may pay in the GPU's longer schedules, where BCP was shown).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ..data.dataset import SliceData
from ..data.sampling import CropConfig, CropSampler
from ..errors import ConfigError
from ..labels import LabelSchema

IGNORE = 255  # pseudo-label value of the pixels the loss ignores


@dataclass(frozen=True)
class UnlabelledConfig:
    """Self-training on unlabelled volumes: when they are labelled, which pixels are trusted, and how much of
    each batch and of the loss they take."""

    weight: float = 1.0
    confidence: float = 0.8
    passes: Tuple[float, ...] = (0.4, 0.6, 0.8)  # shares of the run at which they are (re)labelled
    share: float = 0.5  # share of each batch's crops taken from them from the first pass on
    tta: bool = True  # the teacher averages the in-plane flips (4 forward passes a slice)
    agreement: bool = True  # ignore pixels whose label changed since the previous pass
    # Side of the square swapped between each pseudo-labelled crop and a labelled crop of the batch, as a share
    # of the crop (0: off). BCP's bidirectional copy-paste (Bai et al., CVPR 2023) uses 2/3: the labelled
    # structures are seen in unlabelled surroundings and the reverse, so the two kinds of data do not drift apart.
    copy_paste: float = 0.0

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ConfigError("unlabelled_loss.weight", f"must be >= 0, got {self.weight}")
        if not 0 <= self.confidence < 1:
            raise ConfigError("unlabelled_loss.confidence", f"must be in [0, 1), got {self.confidence}")
        if not self.passes or any(not 0 <= p < 1 for p in self.passes) or list(self.passes) != sorted(set(self.passes)):
            raise ConfigError("unlabelled_loss.passes", f"must be increasing shares of the run in [0, 1), "
                                                        f"got {self.passes}")
        if not 0 < self.share < 1:
            raise ConfigError("unlabelled_loss.share", f"must be in (0, 1), got {self.share}")
        if not 0 <= self.copy_paste < 1:
            raise ConfigError("unlabelled_loss.copy_paste", f"must be in [0, 1), got {self.copy_paste}")


def pseudo_rows(rows: torch.Tensor, share: float) -> torch.Tensor:
    """Which of the batch's global sample numbers ``rows`` take a pseudo-labelled crop: ``share`` of them,
    spread evenly, decided by the number alone (so a distributed run splits them as one process does)."""
    rows = rows.double()
    return torch.floor((rows + 1) * share) > torch.floor(rows * share)


def swap_squares(images: torch.Tensor, labels: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                 corners: torch.Tensor, side: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, H, W) and labels (N, H, W) with the ``side``-pixel square at ``corners`` (P, 2: row and
    column of its top-left pixel) swapped between rows ``first`` (P,) and ``second`` (P,) of the batch."""
    height, width = labels.shape[-2:]
    rows = torch.arange(height, device=labels.device)[None, :, None] - corners[:, 0, None, None]
    columns = torch.arange(width, device=labels.device)[None, None, :] - corners[:, 1, None, None]
    square = (rows >= 0) & (rows < side) & (columns >= 0) & (columns < side)  # (P, H, W)
    images, labels = images.clone(), labels.clone()
    a_image, b_image, a_label, b_label = images[first], images[second], labels[first], labels[second]
    images[first] = torch.where(square[:, None], b_image, a_image)
    images[second] = torch.where(square[:, None], a_image, b_image)
    labels[first] = torch.where(square, b_label, a_label)
    labels[second] = torch.where(square, a_label, b_label)
    return images, labels


def copy_paste_corners(global_batch: int, rows: torch.Tensor, size: Tuple[int, int], side: int,
                       generator: torch.Generator) -> torch.Tensor:
    """Top-left corners (len(rows), 2) of the swapped squares, uniform over the crop, drawn for the whole
    global batch and indexed by ``rows`` (so a distributed run draws what one process would)."""
    draws = torch.rand(global_batch, 2, generator=generator, device=generator.device).to(rows.device)[rows]
    limits = torch.tensor([size[0] - side + 1, size[1] - side + 1], device=rows.device)
    return (draws * limits).long().clamp(max=limits - 1)


class PseudoLabels:
    """The unlabelled slices, their pseudo-labels once :meth:`label` has run, and crops drawn from them."""

    CHUNK = 256  # slices labelled at once: their probabilities (C floats a pixel) are never all held

    def __init__(self, data: SliceData, schema: LabelSchema, config: UnlabelledConfig, crop: Optional[int],
                 foreground: float) -> None:
        self.data, self.schema, self.num_classes, self.config = data, schema, schema.num_classes, config
        self.crop, self.foreground = crop, foreground
        self.labels: Optional[torch.Tensor] = None  # (N, S, S) uint8, IGNORE where not trusted
        self.sampler: Optional[CropSampler] = None
        self.passes_done = 0
        self._previous: Optional[torch.Tensor] = None  # the last pass's post-processed labels (CPU), for agreement

    @property
    def ready(self) -> bool:
        return self.sampler is not None

    def due(self, progress: float) -> bool:
        """True when the slices should be (re)labelled now (the run is ``progress`` of the way through)."""
        passes = self.config.passes
        return self.passes_done < len(passes) and progress >= passes[self.passes_done]

    def remaining_passes(self, progress: float = 0.0) -> int:
        """Passes still to come from ``progress`` on (one for any already due: they are made as one)."""
        left = [p for p in self.config.passes[self.passes_done:] if p > progress]
        return len(left) + int(self.due(progress))

    @torch.no_grad()
    def estimate_seconds(self, network: torch.nn.Module, batch_size: int, amp: bool) -> float:
        """What one :meth:`label` pass will take, from timing one batch through ``network`` (its cost does
        not depend on the weights) after a first one that pays the one-off costs, plus 10% for the
        post-processing (measured on a 2-core CPU, 554 slices of 192²: 35 s estimated for 31-32 s with flips,
        7.9 s for 8.2-8.6 s without)."""
        from ..inference.predict import predict_slices

        count = min(len(self.data), batch_size)
        batch = self.data.images[:count]
        predict_slices(network, batch, batch_size, amp, tta=self.config.tta)  # warm-up: first-call costs, each flip
        started = time.perf_counter()
        predict_slices(network, batch, batch_size, amp, tta=self.config.tta)
        return 1.1 * (time.perf_counter() - started) * len(self.data) / count

    @torch.no_grad()
    def label(self, teacher: torch.nn.Module, batch_size: int, amp: bool, progress: float = 1.0) -> Dict[str, float]:
        """(Re)label every unlabelled slice with ``teacher`` (every pass due at ``progress`` counts as done);
        a summary: pass number, share of pixels kept, share whose label changed since the previous pass,
        volumes in which a structure was found."""
        from ..inference.postprocess import clean_prediction
        from ..inference.predict import predict_slices

        was_training = teacher.training
        sure, found_labels = [], []
        for start in range(0, len(self.data), self.CHUNK):
            probabilities = predict_slices(teacher, self.data.images[start:start + self.CHUNK], batch_size, amp,
                                           tta=self.config.tta)
            confidence, labels = probabilities.max(1)
            sure.append((confidence >= self.config.confidence).cpu())
            found_labels.append(labels.to(torch.uint8).cpu())
        teacher.train(was_training)
        labels, kept = torch.cat(found_labels).numpy(), torch.cat(sure)
        volumes = self.data.volumes.cpu().numpy()
        found = 0
        for volume in range(len(self.data.names)):
            rows = volumes == volume
            stack = labels[rows]
            clean_prediction(stack, self.schema)  # as predict would label the volume
            labels[rows] = stack
            found += bool(stack.any())
        current = torch.from_numpy(labels)
        changed = 0.0
        if self._previous is not None:
            moved = current != self._previous
            changed = float(moved.float().mean())
            if self.config.agreement:
                kept &= ~moved
        self._previous = current.clone()
        current[~kept] = IGNORE
        self.labels = current.to(self.data.volumes.device)
        self.sampler = CropSampler(self.labels, self.num_classes,
                                   CropConfig(size=self.crop, foreground=self.foreground))
        while self.due(progress):
            self.passes_done += 1
        return {"pass": float(self.passes_done), "kept": float(kept.float().mean()), "changed": changed,
                "volumes_found": float(found), "volumes": float(len(self.data.names))}

    def draw(self, rows: torch.Tensor, total: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """For the batch's ``rows`` of ``total`` draws: unlabelled slice indices and crop centres (see
        :meth:`CropSampler.draw`)."""
        assert self.sampler is not None, "label() first"
        picks = torch.randint(0, len(self.data), (total,), generator=generator, device=generator.device)
        return self.sampler.draw(picks.to(rows.device)[rows], generator, rows, total)
