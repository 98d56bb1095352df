"""The multi-level contrastive (MLC) loss: L = l1 * L_g + l2 * L_d + l3 * L_ER.

Notation: a batch of N slices gives 2N augmented samples (two views per slice). Sample i has a dominant
projection z_i and an auxiliary projection z~_i. Anchors are the dominant projections, keys the auxiliary
ones; anchor i is contrasted with every key k != i (its own auxiliary projection, of the very same
augmented image, is left out, as in the paper's Eq. 10).

* Positives (PCL's position rule): j != i is a positive of i when |p_i - p_j| < t, slices from any
  volume; the other view of the same slice is always positive. The "views" rule keeps only the other view
  (SimCLR-like).
* L_g = mean over anchors i of  -1/|P(i)| sum_{j in P(i)} log( exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau) ),
  s = cosine similarity of instance projections.
* L_d: the same for every location s of the S x S pixel maps (location s contrasted with location s of
  the other samples), averaged over the S^2 locations; computed as one batched matrix product.
* L_ER = mean |y - down(y~)| over elements (the paper writes an L1 norm; we take the mean so the term does
  not scale with feature-map size).

Choices:
* Anchors are averaged (the paper sums over i): the loss then does not grow with the batch, so one
  learning rate serves any batch size and number of processes.
* No tau / 0.07 factor (public SupCon code multiplies by it): it only rescales L_g and L_d by a constant,
  i.e. changes the effective lambdas and learning rate; the paper's formula has no such factor.
* Everything is computed in float32 with log-sum-exp, whatever the autocast precision of the network.
* Across processes, keys (projections, positions, slice ids) are gathered with gradients, so a run on P
  processes computes exactly the loss of a single process on the global batch (negatives from all GPUs:
  the paper's effective batch of 2 x 16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..runtime.processes import gather_with_grad, is_distributed
from ..errors import ConfigError

POSITIVE_RULES = ("position", "views")


@dataclass(frozen=True)
class MLCLossConfig:
    """Weights (lambda_1, lambda_2, lambda_3) of L_g, L_d and L_ER; temperature; positive rule and threshold."""

    lambdas: Tuple[float, float, float] = (1.0, 0.5, 1.0)
    temperature: float = 0.1
    threshold: float = 0.1
    positives: str = "position"

    def __post_init__(self) -> None:
        if len(self.lambdas) != 3 or min(self.lambdas) < 0 or max(self.lambdas) == 0:
            raise ConfigError("lambdas", f"needs three non-negative weights, not all zero; got {self.lambdas}")
        if self.temperature <= 0:
            raise ConfigError("temperature", f"must be > 0, got {self.temperature}")
        if self.positives not in POSITIVE_RULES:
            raise ConfigError("positives", f"must be one of {POSITIVE_RULES}, got {self.positives!r}")
        if not 0 <= self.threshold <= 1:
            raise ConfigError("threshold", f"must be in [0, 1], got {self.threshold}")


def positive_mask(anchor_positions: torch.Tensor, anchor_ids: torch.Tensor, key_positions: torch.Tensor,
                  key_ids: torch.Tensor, self_mask: torch.Tensor, rule: str, threshold: float) -> torch.Tensor:
    """(M, K) boolean: key k is a positive of anchor m (never the anchor's own key)."""
    same_slice = anchor_ids[:, None] == key_ids[None, :]
    if rule == "views":
        positives = same_slice
    else:
        positives = same_slice | ((anchor_positions[:, None] - key_positions[None, :]).abs() < threshold)
    return positives & ~self_mask


def contrastive_term(similarity: torch.Tensor, positives: torch.Tensor, self_mask: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """Multi-positive InfoNCE averaged over anchors (and over any leading batch dimensions).

    Args:
        similarity: (..., M, K) cosine similarities of anchors and keys.
        positives: (M, K) positive pairs; self_mask: (M, K) pairs left out of the denominator.
    """
    logits = (similarity.float() / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    # Every anchor has a positive (the other view of its slice); the clamp only guards the division.
    count = positives.sum(-1).clamp(min=1)
    mean_log_prob = log_prob.masked_fill(~positives, 0.0).sum(-1) / count
    return -mean_log_prob.mean()


def mlc_loss(outputs: Dict[str, torch.Tensor], positions: torch.Tensor, slice_ids: torch.Tensor,
             config: MLCLossConfig, scale: int) -> Dict[str, torch.Tensor]:
    """The MLC loss of one (local) batch of 2N samples.

    Args:
        outputs: :class:`MACLNet` outputs for this process's samples.
        positions: (2N,) slice positions; slice_ids: (2N,) ids equal for the two views of a slice and
            unique across all processes.
        scale: the dominant branch's downsampling factor (for L_ER's down()).

    Returns:
        ``loss`` (weighted total) and the terms ``global``, ``dense``, ``er`` (float32 scalars).
    """
    l_global, l_dense, l_er = config.lambdas
    local = positions.shape[0]
    rank = dist.get_rank() if is_distributed() else 0
    key_positions, key_ids = gather_with_grad(positions.float()), gather_with_grad(slice_ids)
    self_mask = torch.zeros(local, key_ids.shape[0], dtype=torch.bool, device=positions.device)
    rows = torch.arange(local, device=positions.device)
    self_mask[rows, rank * local + rows] = True
    positives = positive_mask(positions.float(), slice_ids, key_positions, key_ids, self_mask,
                              config.positives, config.threshold)
    zero = torch.zeros((), device=positions.device)
    terms = {"global": zero, "dense": zero, "er": zero}
    if l_global:
        anchors = F.normalize(outputs["z_g"].float(), dim=1)
        keys = F.normalize(gather_with_grad(outputs["zt_g"].float()), dim=1)
        terms["global"] = contrastive_term(anchors @ keys.T, positives, self_mask, config.temperature)
    if l_dense:
        # (2N, D, S, S) -> (S*S, 2N, D): one batched product over all locations, no Python loop.
        anchors = F.normalize(outputs["z_l"].float(), dim=1).flatten(2).permute(2, 0, 1)
        keys = F.normalize(gather_with_grad(outputs["zt_l"].float()), dim=1).flatten(2).permute(2, 0, 1)
        terms["dense"] = contrastive_term(torch.bmm(anchors, keys.transpose(1, 2)), positives, self_mask,
                                          config.temperature)
    if l_er:
        target = F.avg_pool2d(outputs["y_aux"].float(), scale) if scale > 1 else outputs["y_aux"].float()
        terms["er"] = (outputs["y"].float() - target).abs().mean()
    terms["loss"] = l_global * terms["global"] + l_dense * terms["dense"] + l_er * terms["er"]
    return terms
