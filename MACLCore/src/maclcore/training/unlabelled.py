"""Unlabelled volumes in finetuning: the weight average's confident predictions as labels for the network.

A mean-teacher style self-training term. The teacher is the exponential moving average of the network's
weights (:class:`~maclcore.training.ema.ModelEMA`, the model that is kept; the network itself when there is
no average). Each step draws random crops of unlabelled slices, warped by the finetuning's own geometric
augmentation; the teacher labels the warped crop, the network sees the same crop with its intensity changed
as well (so the two views share one geometry and the pseudo-label needs no warping back), and pixels where
the teacher is at least ``confidence`` sure add their cross-entropy to the loss.

Our choices: the teacher is poor at the start, so the term has no weight for the first ``start`` of the
run and its weight then rises linearly over ``ramp`` of it (a share of the run, so it scales with a time
budget); it is computed from the first step all the same, so that the budget, which times the first steps,
sees what every step costs;
the unlabelled crops are as many as the labelled ones per step and go through the network in the same
forward pass (one batch, BatchNorm statistics over both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from ..data.augment import AugmentationConfig, adjust_intensity, draw_augmentation, warp
from ..data.dataset import SliceData
from ..data.sampling import crop_affines
from ..errors import ConfigError


@dataclass(frozen=True)
class UnlabelledConfig:
    """The self-training term: ``weight`` x masked cross-entropy against the teacher's confident labels."""

    weight: float = 1.0
    confidence: float = 0.9
    start: float = 0.1  # share of the steps before the term starts
    ramp: float = 0.3  # share of the steps over which its weight rises to ``weight``

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ConfigError("unlabelled_loss.weight", f"must be >= 0, got {self.weight}")
        if not 0 <= self.confidence < 1:
            raise ConfigError("unlabelled_loss.confidence", f"must be in [0, 1), got {self.confidence}")
        if not (0 <= self.start < 1 and self.ramp >= 0):
            raise ConfigError("unlabelled_loss.start", "start must be in [0, 1) and ramp >= 0")

    def weight_at(self, progress: float) -> float:
        """The term's weight at ``progress`` (steps done / total steps)."""
        if progress < self.start:
            return 0.0
        return self.weight * (min(1.0, (progress - self.start) / self.ramp) if self.ramp else 1.0)


class PseudoLabels:
    """Draws a step's unlabelled crops and scores the network's outputs on them against the teacher's."""

    def __init__(self, data: SliceData, config: UnlabelledConfig, augmentation: AugmentationConfig,
                 crop: Optional[int], teacher: Callable[[], torch.nn.Module]) -> None:
        self.data, self.config, self.augmentation, self.teacher = data, config, augmentation, teacher
        self.crop = crop or data.size

    def views(self, count: int, rows: torch.Tensor, total: int,
              generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """(network inputs, teacher inputs) for ``rows`` of ``total`` draws: the same random crops, the
        network's with the intensity augmentation too."""
        device = rows.device
        picks = torch.randint(0, len(self.data), (total,), generator=generator, device=generator.device)
        picks = picks.to(device)[rows]
        augmentation = draw_augmentation(total, rows, self.augmentation, generator, device)
        u = torch.rand(total, 2, generator=generator, device=generator.device).to(device)[rows]
        centres = (2 * u - 1) * (1 - self.crop / self.data.size)
        theta = crop_affines(augmentation.theta, centres, self.crop, self.data.size)
        plain = warp(self.data.images[picks], theta, "bilinear", (self.crop, self.crop))
        return adjust_intensity(plain, augmentation.intensity), plain

    @torch.no_grad()
    def labels(self, teacher_inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The teacher's labels of its inputs and the mask of the pixels it is confident about."""
        teacher = self.teacher()
        was_training = teacher.training
        teacher.eval()
        confidence, labels = teacher(teacher_inputs).float().softmax(1).max(1)
        teacher.train(was_training)
        return labels, confidence >= self.config.confidence

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the confident pixels, averaged over all pixels (so a timid teacher adds little)."""
        ce = F.cross_entropy(logits.float(), labels, reduction="none")
        return (ce * mask).sum() / mask.numel()
