"""One pass of a segmentation model over a volume: its uncertainty and its embedding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.preprocessing import PreparedVolume, pad_slices, padded_size, stack_slices
from ..inference.predict import SegmentationModel
from ..runtime.device import autocast, map_in_batches
from .embedding import feature_mask, masked_mean_features
from .uncertainty import area_per_slice, ensemble_entropies, turn_angles, turned

MM2_PER_CM2 = 100.0


@dataclass
class VolumeAnalysis:
    """What the model makes of one volume.

    Attributes:
        name: the case name.
        uncertainty: mean over slices of the uncertain area (cm^2; see :mod:`maclcore.active.uncertainty`).
        disagreement: the part of ``uncertainty`` due to the rotated copies disagreeing (cm^2 per slice).
        embedding: (D,) mean centre features of the encoder (see :mod:`maclcore.active.embedding`).
        slices: number of slices.
    """

    name: str
    uncertainty: float
    disagreement: float
    embedding: np.ndarray
    slices: int


@torch.no_grad()
def analyse_volume(model: SegmentationModel, prepared: PreparedVolume, turns: int = 4,
                   batch_size: int = 16) -> VolumeAnalysis:
    """Uncertainty under ``turns`` test-time rotations and the encoder embedding of a preprocessed volume."""
    network, device = model.network.eval(), model.device
    angles = turn_angles(turns)
    shape = tuple(prepared.image.shape[-2:])
    size = padded_size(shape, model.preprocessing)
    images = stack_slices([prepared.image], size)
    mask = torch.from_numpy(pad_slices(np.ones(shape, np.float32), size)).to(device)
    pixel_area = model.preprocessing.spacing ** 2 / MM2_PER_CM2

    def run(start: int, stop: int) -> tuple:
        batch = images[start:stop].to(device)
        members, embedding = [], None
        for quarter in angles:
            with autocast(device, True):
                centre, skips = network.encoder(turned(batch, quarter))
                logits = network.head(network.decoder(centre, skips))
            members.append(turned(logits.float().softmax(1), -quarter))
            if quarter == 0:
                embedding = masked_mean_features(centre.float(), feature_mask(mask, centre.shape[-1]))
        total, disagreement = ensemble_entropies(torch.stack(members))
        return (area_per_slice(total, mask, pixel_area).cpu(), area_per_slice(disagreement, mask, pixel_area).cpu(),
                embedding.cpu())

    parts = map_in_batches(run, images.shape[0], batch_size, device=device)
    total = torch.cat([p[0] for p in parts])
    disagreement = torch.cat([p[1] for p in parts])
    embedding = torch.cat([p[2] for p in parts]).mean(0)
    return VolumeAnalysis(name=prepared.name, uncertainty=float(total.mean()), disagreement=float(disagreement.mean()),
                          embedding=embedding.double().numpy(), slices=int(images.shape[0]))
