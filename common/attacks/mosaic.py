"""Attack 1: the region-mean (mosaic) attack."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from common.defaults import default_region_size

from .metrics import as_unit


def mosaic_attack(obfuscated: torch.Tensor, region_size: int | None = None, chromatic: bool = True) -> torch.Tensor:
    """Average every ``region_size`` square and paint it back: a pixelated copy of the original.

    Attacker knows: the obfuscated images and the public settings (region size, whether
    the shuffle was chromatic). Shuffling inside a region keeps each channel's multiset of
    values, so every channel's region mean survives exactly. The chromatic shuffle also
    permutes the channel order per region, which hides *which* channel a mean belongs to
    but not the mean over channels, so then the attack returns that grey mosaic in every
    channel. It costs nothing and is the floor every other attack must beat.
    (B, C, H, W) uint8 or float -> float in [0, 1].
    """
    x = as_unit(obfuscated)
    region_size = region_size or default_region_size(*x.shape[-2:])
    if chromatic:
        x = x.mean(1, keepdim=True).expand_as(x)
    means = F.avg_pool2d(x, region_size)
    return F.interpolate(means, scale_factor=region_size, mode="nearest")
