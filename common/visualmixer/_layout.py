"""Region layout: images (B, C, H, W) <-> contiguous regions (B, C, N, r, r), moved as words."""

from __future__ import annotations

import torch

from ._scratch import scratch

_WORDS = ((8, torch.int64), (4, torch.int32), (2, torch.int16))


def as_words(tensor: torch.Tensor, run: int) -> tuple[torch.Tensor, int]:
    """View a contiguous tensor whose last dim holds runs of ``run`` elements as machine words.

    Tiling moves whole region rows (``r`` contiguous values); copying them as one int64
    instead of eight uint8 makes the strided copy about seven times faster.
    Returns the view and how many words one run takes.
    """
    run_bytes = run * tensor.element_size()
    for size, dtype in _WORDS:
        if run_bytes % size == 0 and tensor.element_size() < size:
            try:
                return tensor.view(dtype), run_bytes // size
            except RuntimeError:  # misaligned storage offset: try a narrower word
                continue
    return tensor, run


def to_regions(batch: torch.Tensor, region_size: int) -> torch.Tensor:
    """(B, C, H, W) -> contiguous (B, C, N, r, r), regions in row-major order.

    The result is a scratch tensor (see ``_scratch.py``): valid until the next call.
    """
    b, c, h, w = batch.shape
    r = region_size
    out = scratch("regions", (b, c, (h // r) * (w // r), r, r), batch.dtype, batch.device)
    source, k = as_words(batch.contiguous(), r)
    target, _ = as_words(out, r)
    target.view(b, c, h // r, w // r, r, k).copy_(
        source.view(b, c, h // r, r, w // r, k).permute(0, 1, 2, 4, 3, 5)
    )
    return out


def from_regions(regions: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`to_regions`, always into a new tensor (never a view of a scratch)."""
    b, c, _, r, _ = regions.shape
    out = torch.empty((b, c, height, width), dtype=regions.dtype, device=regions.device)
    source, k = as_words(regions.contiguous(), r)
    target, _ = as_words(out, r)
    target.view(b, c, height // r, r, width // r, k).copy_(
        source.view(b, c, height // r, width // r, r, k).permute(0, 1, 2, 4, 3, 5)
    )
    return out
