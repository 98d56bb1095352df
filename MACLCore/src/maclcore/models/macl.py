"""The MACL pretraining network: one shared encoder, a dominant and an auxiliary branch.

Dominant branch: augmented slice, downsampled by 0.5**depth -> encoder -> the first ``depth`` decoder
blocks of the U-Net (with their skips) -> instance projector g_ins and pixel projector g_pix.
Auxiliary branch: the same augmented slice at full size -> the same encoder -> its own projectors.
With depth blocks and scale 0.5**depth both pixel maps are S x S = 1/16 of the input.

Choices where the paper is silent (METHOD.md):
* Inputs of any size that is a multiple of 16 work: the batch is zero-padded (bottom/right) to a multiple
  of 16 * 2**depth first, which only adds background, so every branch's sizes divide exactly.
* Downsampling (of the input and, for L_ER, of the auxiliary features) is 2**depth x 2**depth average
  pooling: exact area averaging, no aliasing.
* Pixel projector: two 1x1 (Conv -> BN -> LeakyReLU) units, a per-pixel MLP as METHOD.md describes.
* ``depth == 0`` (the "no decoder" ablation) skips the downsampling; both branches then see the same
  input, so the encoder runs once and L_ER is zero by construction. ``symmetric`` (PCL-/SimCLR-like
  baselines) makes the auxiliary branch reuse the dominant projectors, i.e. one head as in those methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .unet import Decoder, Encoder, UNetConfig


@dataclass(frozen=True)
class MACLNetConfig:
    """Shape of the pretraining network beyond the U-Net's widths.

    Args:
        decoder_depth: decoder blocks in the dominant branch (0..4); the paper's default is 2.
        projection_dim: size of the instance and pixel projections (128 in the paper).
        hidden_dim: hidden width of the instance projector's MLP.
        symmetric: share the projectors between branches (single-head baselines).
        instance_head, pixel_head: build the instance / pixel projectors (a loss without L_g or L_d leaves
            them out, so that every parameter gets a gradient, as distributed training requires).
    """

    decoder_depth: int = 2
    projection_dim: int = 128
    hidden_dim: int = 512
    symmetric: bool = False
    instance_head: bool = True
    pixel_head: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.decoder_depth <= 4:
            raise ConfigError("decoder_depth", f"must be 0..4, got {self.decoder_depth}")
        if self.symmetric and self.decoder_depth:
            raise ConfigError("decoder_depth", f"must be 0 for symmetric (shared-projector) pretraining, got {self.decoder_depth}")


class InstanceProjector(nn.Module):
    """AdaptiveAvgPool -> Flatten -> Linear -> ReLU -> Linear: one vector per slice."""

    def __init__(self, in_channels: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PixelProjector(nn.Module):
    """(1x1 Conv -> BN -> LeakyReLU) x 2: one vector per location of the S x S map."""

    def __init__(self, in_channels: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, out, 1, bias=False), nn.BatchNorm2d(out),
                                 nn.LeakyReLU(0.01, inplace=True), nn.Conv2d(out, out, 1, bias=False),
                                 nn.BatchNorm2d(out), nn.LeakyReLU(0.01, inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MACLNet(nn.Module):
    """Dual-branch network; ``encoder.*`` and ``decoder.blocks.*`` carry the U-Net's parameter names."""

    def __init__(self, unet: UNetConfig, config: MACLNetConfig) -> None:
        super().__init__()
        self.unet_config, self.config = unet, config
        channels, depth, dim = unet.channels, config.decoder_depth, config.projection_dim
        self.encoder = Encoder(unet.in_channels, channels)
        self.decoder = Decoder(channels, depth)
        dominant = Decoder.out_channels(channels, depth)

        def heads(width: int) -> nn.ModuleDict:
            built = nn.ModuleDict()
            if config.instance_head:
                built["instance"] = InstanceProjector(width, config.hidden_dim, dim)
            if config.pixel_head:
                built["pixel"] = PixelProjector(width, dim)
            return built

        self.dominant = heads(dominant)
        # Symmetric baselines have one set of heads; registering it twice would duplicate its weights.
        self.auxiliary = None if config.symmetric else heads(channels[4])

    @property
    def scale(self) -> int:
        """Downsampling factor of the dominant branch's input (1 / 0.5**depth)."""
        return 2 ** self.config.decoder_depth

    def forward(self, views: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Both branches on a batch of augmented views (N, 1, H, W).

        Returns the dominant and auxiliary encoder outputs ``y`` and ``y_aux`` (feature level), instance
        projections ``z_g`` and ``zt_g`` (N, D) and pixel projections ``z_l`` and ``zt_l`` (N, D, S, S)
        (the projections of the heads that were built).
        """
        multiple = 16 * self.scale
        pad_h, pad_w = (-views.shape[-2]) % multiple, (-views.shape[-1]) % multiple
        if pad_h or pad_w:
            views = F.pad(views, (0, pad_w, 0, pad_h))
        small = F.avg_pool2d(views, self.scale) if self.scale > 1 else views
        y, skips = self.encoder(small)
        features = self.decoder(y, skips)
        y_aux = self.encoder(views)[0] if self.scale > 1 else y
        outputs = {"y": y, "y_aux": y_aux}
        for head, (mine, theirs) in {"instance": ("z_g", "zt_g"), "pixel": ("z_l", "zt_l")}.items():
            if head in self.dominant:
                outputs[mine] = self.dominant[head](features)
                outputs[theirs] = (self.auxiliary if self.auxiliary is not None else self.dominant)[head](y_aux)
        return outputs
