"""``pixelate``: each ``region-size`` square replaced by its mean colour, the mosaic that
VisualMixer's in-region shuffle leaves for anyone to compute. The server checks that
every region it receives is flat."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from .base import ImageDefense, ImageTransform

if TYPE_CHECKING:
    from common.run_config import RunConfig


def pixelate(images: torch.Tensor, region_size: int) -> torch.Tensor:
    """uint8 (B, C, H, W) with every ``region_size`` square set to its rounded mean."""
    means = F.avg_pool2d(images.float(), region_size).round().to(images.dtype)
    return means.repeat_interleave(region_size, -2).repeat_interleave(region_size, -1)


class Pixelate(ImageDefense):
    name = "pixelate"
    summary = "each region replaced by its mean colour"
    abbreviation = "pix"
    keys = ("region-size",)

    def image_transform(self, config: RunConfig, seed: int | None = None) -> ImageTransform:
        return ImageTransform(lambda images: pixelate(images, config.region_size))

    def commuting_shift(self, config: RunConfig, clean_shift: int) -> tuple[int, int]:
        return config.region_size, config.region_size  # whole regions keep the grid

    def guard(self, images: torch.Tensor, config: RunConfig) -> list[str | None]:
        return unflat_regions(images, config.region_size)


def unflat_regions(images: torch.Tensor, region_size: int) -> list[str | None]:
    """Per image, why it is not pixelated (a region whose values differ), or None."""
    x = images.float()
    spread = F.max_pool2d(x, region_size) + F.max_pool2d(-x, region_size)  # max - min per region and channel
    busy = (spread > 0).flatten(1).float().mean(1)
    return [None if share == 0 else f"{share:.0%} of regions are not flat: not pixelated" for share in busy.tolist()]
