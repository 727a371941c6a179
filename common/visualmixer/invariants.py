"""What every VisualMixer shuffle keeps: per-region multisets of values, as features.

A shuffle permutes values inside a region (per channel, and with ``chromatic`` also the
channel order of the region) and adds no noise, so each region keeps its multiset of
values. :func:`region_statistics` reads exactly that multiset: per region and channel a
few order statistics (quantiles of the sorted values), the mean and the spread, with the
channels of a region taken as a set (ordered by :func:`_sort_key`) when the shuffle is
chromatic. Any in-region shuffle leaves these features bit for bit the same; moving regions
(``region_scope`` != 1) changes only where they sit, and :func:`group_invariant` removes
that too. Attacks read them as a fingerprint; a region-invariant model learns from them.
"""

from __future__ import annotations

import torch

from ..defaults import default_region_size


def _unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255 if images.dtype == torch.uint8 else images


QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def region_statistics(
    images: torch.Tensor, region_size: int | None = None, chromatic: bool = True, quantiles: tuple[float, ...] = QUANTILES
) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/r, W/r, C * (len(quantiles) + 2)) region descriptors.

    For region R and channel c: ``sorted(R_c)`` at the given quantiles (nearest rank),
    then mean(R_c) and std(R_c). With ``chromatic`` the C channel descriptors of a region
    are put in a canonical order (:func:`_sort_key`), a set over channels, since the
    shuffle may have swapped them.
    """
    x = _unit(images)
    b, c, h, w = x.shape
    r = region_size or default_region_size(h, w)
    # (B, C, gh, gw, r*r): every region's values, then sorted: the multiset itself.
    values = x.unfold(2, r, r).unfold(3, r, r).reshape(b, c, h // r, w // r, r * r).sort(-1).values
    index = torch.tensor([round(q * (r * r - 1)) for q in quantiles], device=x.device)
    described = torch.cat(
        [values.index_select(-1, index), values.mean(-1, keepdim=True), values.std(-1, keepdim=True)], -1
    )  # (B, C, gh, gw, D)
    described = described.permute(0, 2, 3, 1, 4)  # (B, gh, gw, C, D)
    if chromatic:
        order = _sort_key(described).argsort(dim=-1, stable=True)
        described = described.gather(3, order[..., None].expand_as(described))
    return described.flatten(3)


def group_invariant(features: torch.Tensor, region_scope: int) -> torch.Tensor:
    """Region descriptors (B, gh, gw, D) made blind to moves inside ``region_scope`` groups.

    Scope 1: unchanged. Scope k: inside every k x k group of regions (aligned as the
    transform groups them) the descriptors are put in a canonical order (:func:`_sort_key`),
    so any permutation of regions within a group gives the
    same features. Scope 0: one group, the whole grid. -> (B, F).
    """
    b, gh, gw, d = features.shape
    if region_scope == 1:
        return features.flatten(1)
    if region_scope == 0:
        groups = features.reshape(b, 1, gh * gw, d)
    else:
        k = region_scope
        groups = features.reshape(b, gh // k, k, gw // k, k, d).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, k * k, d)
    order = _sort_key(groups).argsort(dim=-1, stable=True)
    return groups.gather(2, order[..., None].expand_as(groups)).flatten(1)


def _sort_key(descriptors: torch.Tensor) -> torch.Tensor:
    """One number per descriptor (last dim) to order a set of them canonically: a fixed
    weighted sum of all its components, so two descriptors tie only when they are equal
    (then their order does not matter), not merely when their means do."""
    weights = 1.0 + torch.arange(descriptors.shape[-1], device=descriptors.device, dtype=descriptors.dtype) * 0.7071
    return (descriptors * weights).sum(-1)


