r"""Visual Feature Entropy (VFE): how scrambled the arrangement of each region is.

Images are split into square regions of side :math:`r`. For image :math:`b`, channel
:math:`c` and region :math:`R`, with forward differences taken *inside the region only*
(no padding, no pairs that cross a region border):

.. math::

    \mathrm{VFE}_c(R) = \frac{S_c(R)}{P \cdot 2\,\sigma^2_c(R)}, \qquad
    S_c(R) = \sum_{(p,q)\ \text{adjacent in}\ R} (x_p - x_q)^2, \qquad P = 2r(r-1),

where the sum runs over the :math:`P` horizontally and vertically adjacent pixel pairs of
:math:`R` and :math:`\sigma^2_c(R)` is the *unbiased* variance of the region's values
(divisor :math:`r^2-1`). For a uniformly random arrangement of any fixed multiset of
values, :math:`\mathbb{E}[(x_p-x_q)^2] = 2\sigma^2` for every pair, so a fully shuffled
region scores 1 in expectation; a smooth region scores near 0. Shuffling inside a region
never changes :math:`\sigma^2_c(R)`, so VFE measures only the arrangement, and it does not
depend on brightness or contrast (it is invariant to :math:`x \mapsto a x + b`).

**Flat regions** (standard deviation below half a grey level, i.e.
:math:`\sigma^2 < 0.25` on the 0..255 scale) carry no arrangement at all: every shuffle of
them is the same picture. They are *excluded*: :func:`region_vfe` reports them as NaN and
the image VFE is the mean over the remaining (channel, region) pairs. An image that is flat
everywhere has nothing left to scramble and scores 1.0. Excluding (rather than counting them
as fully scrambled) keeps a mostly-empty image, such as a digit on a black background, from
reaching a target without its few informative regions being touched.

Images must tile exactly into regions; other sizes raise ``ValueError`` (see
:func:`~common.visualmixer._checks.check_region_size`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import as_batch, check_region_size

# Standard deviation below half a grey level counts as flat (on the 0..255 scale).
FLAT_VARIANCE_255 = 0.25


@dataclass(frozen=True)
class RegionStats:
    """Per (image, channel, region) statistics that VFE and the planner both need.

    Shapes use ``N = (H/r) * (W/r)`` regions in row-major order.
    """

    variance: torch.Tensor  # (B, C, N) unbiased variance of each region's values
    col_energy: torch.Tensor  # (B, C, N, r-1) squared horizontal differences, summed per column gap
    row_energy: torch.Tensor  # (B, C, N, r-1) squared vertical differences, summed per row gap
    valid: torch.Tensor  # (B, C, N) bool, False for flat regions
    region_size: int

    @property
    def pair_energy(self) -> torch.Tensor:
        """(B, C, N) sum of squared differences over all adjacent pairs inside each region."""
        return self.col_energy.sum(-1) + self.row_energy.sum(-1)


def _to_float(batch: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Float32 view of the pixels and the flat-variance threshold on that scale.

    uint8 stays on its 0..255 scale (VFE is scale-invariant), saving a division.
    """
    if batch.dtype == torch.uint8:
        return batch.float(), FLAT_VARIANCE_255
    return batch.float(), FLAT_VARIANCE_255 / 255.0**2


def region_stats(batch: torch.Tensor, region_size: int) -> RegionStats:
    """Compute :class:`RegionStats` for a validated (B, C, H, W) batch."""
    r = region_size
    x, flat_variance = _to_float(batch)
    b, c, h, w = x.shape
    nh, nw = h // r, w // r
    # (B, C, nh, r, nw, r): pixel (y, x) of region (i, j) sits at [..., i, y, j, x].
    tiles = x.view(b, c, nh, r, nw, r)
    dx = (tiles[..., 1:] - tiles[..., :-1]).square_()  # pairs (x, x+1) inside each region
    dy = (tiles[:, :, :, 1:] - tiles[:, :, :, :-1]).square_()  # pairs (y, y+1)
    col_energy = dx.sum(3)  # (B, C, nh, nw, r-1)
    row_energy = dy.sum(5).permute(0, 1, 2, 4, 3)  # (B, C, nh, nw, r-1)
    variance = torch.var(tiles, dim=(3, 5), correction=1)
    return RegionStats(
        variance=variance.reshape(b, c, nh * nw),
        col_energy=col_energy.reshape(b, c, nh * nw, r - 1),
        row_energy=row_energy.reshape(b, c, nh * nw, r - 1),
        valid=(variance >= flat_variance).reshape(b, c, nh * nw),
        region_size=r,
    )


def _vfe_from_stats(stats: RegionStats) -> torch.Tensor:
    """(B, C, N) per-region VFE, NaN where the region is flat."""
    r = stats.region_size
    pairs = 2 * r * (r - 1)
    vfe = stats.pair_energy / (pairs * 2.0 * stats.variance.clamp_min(1e-30))
    return vfe.masked_fill(~stats.valid, float("nan"))


def image_vfe_from_stats(stats: RegionStats) -> torch.Tensor:
    """(B,) mean VFE over non-flat (channel, region) pairs; 1.0 for an all-flat image."""
    vfe = _vfe_from_stats(stats)
    counts = stats.valid.sum((1, 2))
    total = torch.nan_to_num(vfe, nan=0.0).sum((1, 2))
    return torch.where(counts > 0, total / counts.clamp_min(1), torch.ones_like(total))


def region_vfe(images: torch.Tensor, region_size: int = 8) -> torch.Tensor:
    """VFE of every (channel, region): a float tensor (B, C, H/r, W/r), NaN for flat regions.

    ``images``: uint8 (0..255) or float (0..1), shaped (C, H, W) or (B, C, H, W), on any
    device; a single image gives a batch of one.
    """
    batch, _ = as_batch(images)
    check_region_size(region_size, batch.shape[-2], batch.shape[-1])
    vfe = _vfe_from_stats(region_stats(batch, region_size))
    b, c, h, w = batch.shape
    return vfe.view(b, c, h // region_size, w // region_size)


def visual_feature_entropy(images: torch.Tensor, region_size: int = 8) -> torch.Tensor:
    """Image VFE, a float tensor (B,): the mean of :func:`region_vfe` over non-flat entries.

    About 0 for smooth images, about 1 for images whose regions are random arrangements
    of their own values.
    """
    batch, _ = as_batch(images)
    check_region_size(region_size, batch.shape[-2], batch.shape[-1])
    return image_vfe_from_stats(region_stats(batch, region_size))
