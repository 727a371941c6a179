"""Augmentations that commute with VisualMixer, for training on what clients upload.

A left-right flip maps the region grid onto itself, and a shift by whole regions moves
regions to regions, so an obfuscated image flipped or shifted so is distributed as the
flipped or shifted original obfuscated with the same settings: training on it teaches
nothing the shuffle would not allow. Shifts by fewer pixels than a region cut regions
apart, so under VisualMixer they are taken in whole regions; and when regions move
(``region-scope`` other than 1) a shift cuts moved regions at the image's edge unlike the
original's, so there only flips commute (the run config refuses ``flip-shift``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

AUGMENTATIONS = ("none", "flip", "flip-shift")
CLEAN_MAX_SHIFT = 4  # pixels each way: the usual CIFAR pad-and-crop


def flip_and_shift(
    images: torch.Tensor, max_shift: int = CLEAN_MAX_SHIFT, generator: torch.Generator | None = None, step: int = 1
) -> torch.Tensor:
    """Each image flipped left-right with probability 1/2 and shifted by up to ``max_shift``
    pixels each way in multiples of ``step`` (zero fill): the same code on CPU and GPU, per
    image in one gather. With ``step`` = the region size the shifts keep the region grid, so
    the augmentation commutes with VisualMixer (an obfuscated image flipped or shifted by
    whole regions is distributed as the flipped or shifted image obfuscated)."""
    b, _, h, w = images.shape
    flips = torch.rand(b, generator=generator) < 0.5
    out = torch.where(flips.to(images.device)[:, None, None, None], images.flip(-1), images)
    padded = nn.functional.pad(out, (max_shift,) * 4)
    moves = 2 * (max_shift // step) + 1
    dy = (step * torch.randint(0, moves, (b,), generator=generator) + max_shift % step).to(images.device)
    dx = (step * torch.randint(0, moves, (b,), generator=generator) + max_shift % step).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def augmenter(
    kind: str, shift: tuple[int, int] | None, generator: torch.Generator | None = None
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The batch transform for ``kind`` (see :data:`AUGMENTATIONS`), or ``None``.

    ``flip``: flips only. ``flip-shift``: flips and shifts of up to ``shift`` = (largest,
    step) pixels, what the run's defense says commutes with its transform
    (``Defense.commuting_shift``: 4 px on clean images, whole regions under VisualMixer);
    ``None`` there means no shift commutes, and the run config refuses ``flip-shift``.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augmentation {kind!r} is not one of: {', '.join(AUGMENTATIONS)}")
    if kind == "none":
        return None
    if kind == "flip" or shift is None:
        return lambda x: flip_and_shift(x, max_shift=0, generator=generator)
    largest, step = shift
    return lambda x: flip_and_shift(x, max_shift=largest, generator=generator, step=step)
