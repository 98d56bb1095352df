"""The 2D U-Net of the paper (METHOD.md), built from separately addressable parts.

``UNet.encoder`` (four blocks, each followed by 2x2 max-pooling, and a centre block), ``UNet.decoder``
(four up-blocks: 2x transposed convolution, skip concatenation, two conv units) and ``UNet.head`` (1x1
conv to K+1 classes). Pretraining uses the encoder and the first ``depth`` decoder blocks; weight
transfer copies exactly those parameter names (``encoder.*``, ``decoder.blocks.{0..depth-1}.*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError

# Half the widths we first chose (32-512): on ACDC at 2.5 mm the narrower network reached 0.84 mean Dice
# from 4 patients in 6 CPU minutes, and the wider one at full resolution bought nothing over it at equal
# steps while costing 2-4x per step (issue 16; benchmarks/results/recipe_cpu, cpu_precision_cpu.json).
DEFAULT_CHANNELS = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the segmentation U-Net.

    Args:
        in_channels: image channels (1 for MRI/CT).
        num_classes: output classes including background (K + 1).
        channels: widths of the four encoder blocks and the centre block. The paper's widths are in its
            supplement, which we do not have; :data:`DEFAULT_CHANNELS` is our choice.
    """

    in_channels: int = 1
    num_classes: int = 4
    channels: Tuple[int, ...] = DEFAULT_CHANNELS

    def __post_init__(self) -> None:
        if len(self.channels) != 5 or min(self.channels) < 1:
            raise ConfigError("channels", f"needs five positive widths (4 encoder blocks + centre), got {self.channels}")
        if self.num_classes < 2:
            raise ConfigError("num_classes", f"must be >= 2 (background + at least one label), got {self.num_classes}")


def conv_unit(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv3x3 (pad 1) -> BatchNorm -> LeakyReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.01, inplace=True))


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv_unit(in_channels, out_channels), conv_unit(out_channels, out_channels))


class Encoder(nn.Module):
    """Four conv blocks with 2x2 max-pooling after each, then the centre block (output at 1/16 size)."""

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        widths = [in_channels] + list(channels[:4])
        self.blocks = nn.ModuleList(double_conv(widths[i], widths[i + 1]) for i in range(4))
        self.pool = nn.MaxPool2d(2)
        self.centre = double_conv(channels[3], channels[4])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Returns the centre features and the four skip features (full size first)."""
        skips = []
        for block in self.blocks:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        return self.centre(x), skips


class UpBlock(nn.Module):
    """2x transposed convolution, concatenation with the skip, two conv units."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = double_conv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class Decoder(nn.Module):
    """Up-blocks; block ``i`` joins the skip of encoder block ``3 - i``. The U-Net has all four; the
    pretraining model builds only the first ``depth`` (same parameter names, so weights transfer)."""

    def __init__(self, channels: Sequence[int], depth: int = 4) -> None:
        super().__init__()
        if not 0 <= depth <= 4:
            raise ConfigError("decoder_depth", f"must be 0..4, got {depth}")
        self.blocks = nn.ModuleList(UpBlock(channels[4 - i], channels[3 - i]) for i in range(depth))

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, skips[3 - i])
        return x

    @staticmethod
    def out_channels(channels: Sequence[int], depth: int) -> int:
        """Channels of the features after ``depth`` blocks (``channels[4]`` when depth is 0)."""
        return channels[4 - depth]


class UNet(nn.Module):
    """Encoder + decoder + 1x1 head. Input sizes must be multiples of 16."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.in_channels, config.channels)
        self.decoder = Decoder(config.channels)
        self.head = nn.Conv2d(config.channels[0], config.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"U-Net input size must be a multiple of 16, got {tuple(x.shape[-2:])}")
        centre, skips = self.encoder(x)
        return self.head(self.decoder(centre, skips))


def transferable_prefixes(depth: int) -> Tuple[str, ...]:
    """Parameter-name prefixes a pretrained model with a ``depth``-block decoder provides."""
    return ("encoder.",) + tuple(f"decoder.blocks.{i}." for i in range(depth))
