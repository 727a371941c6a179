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

**Flat regions** (standard deviation below half a grey level, :math:`\sigma^2 < 0.25` on
the 0..255 scale) carry no arrangement: :func:`region_vfe` reports them as NaN and the image
VFE is the mean over the other (channel, region) pairs (an image flat everywhere scores 1.0),
so a mostly empty image cannot reach a target without its informative regions touched.

Images must tile exactly into regions; other sizes raise ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..defaults import default_region_size
from ._checks import as_batch, check_region_size
from ._layout import to_regions
from ._scratch import scratch

# Standard deviation below half a grey level counts as flat (on the 0..255 scale).
FLAT_VARIANCE_255 = 0.25


@dataclass(frozen=True)
class RegionStats:
    """Per (image, channel, region) statistics that VFE and the planner both need.

    Shapes use ``N = (H/r) * (W/r)`` regions in row-major order.
    """

    variance: torch.Tensor  # (B, C, N) unbiased variance of each region's values
    # (B, C, N, r-1) squared differences of the pairs across gap g: horizontal pairs
    # (x = g, g+1) in every row plus vertical pairs (y = g, g+1) in every column
    gap_energy: torch.Tensor
    valid: torch.Tensor  # (B, C, N) bool, False for flat regions
    region_size: int

    def select(self, index: torch.Tensor) -> "RegionStats":
        """The stats of the images ``index`` of the batch."""
        return RegionStats(
            **{f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "region_size"},
            region_size=self.region_size,
        )

    @property
    def pair_energy(self) -> torch.Tensor:
        """(B, C, N) sum of squared differences over all adjacent pairs inside each region."""
        return self.gap_energy.sum(-1)


def region_energy(values: torch.Tensor, per_gap: bool = True) -> torch.Tensor:
    """Squared in-region differences of a float (B, C, N, r, r) tensor, summed per gap.

    Returns (B, C, N, r-1): gap g holds the horizontal pairs (x = g, g+1) of every row plus
    the vertical pairs (y = g, g+1) of every column; without ``per_gap``, (B, C, N, 1)
    totals. The differences are taken on the flat, contiguous tensor into one reused
    buffer; the sums then leave out the last column (horizontal pairs) or the last row
    (vertical pairs) of each region, so pairs that wrap across rows or regions never count.

    The sums are plain reductions, not matrix products: a training script that lowers
    float32 matmul precision (TF32 on CUDA, bfloat16 on some CPUs) would otherwise round
    their inputs, and for uint8 images they are exact integers below 2**24 in float32.
    """
    b, c, n, r, _ = values.shape
    flat = values.reshape(-1)
    diff = scratch("diff", flat.shape, flat.dtype, flat.device)
    squares = diff.view(-1, r, r)
    _squared_difference(flat[1:], flat[:-1], out=diff[:-1])
    diff[-1:] = 0
    across = squares[:, :, :-1]  # horizontal pairs, gap g = x
    energy = across.sum(1) if per_gap else across.sum((1, 2)).unsqueeze(-1)
    _squared_difference(flat[r:], flat[:-r], out=diff[:-r])
    diff[-r:] = 0
    down = squares[:, :-1, :]  # vertical pairs, gap g = y
    energy += down.sum(2) if per_gap else down.sum((1, 2)).unsqueeze(-1)
    return energy.view(b, c, n, -1)


def _squared_difference(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``(a - b) ** 2`` into ``out`` in one pass over memory instead of two (sub, then
    square): ATen's element-wise ``mse_loss`` (reduction 0 = none), whose Python API has no
    ``out=``."""
    return torch.ops.aten.mse_loss.out(a, b, 0, out=out)


def region_variance(values: torch.Tensor, exact_integers: bool) -> torch.Tensor:
    """(B, C, N) unbiased variance of each region of a float (B, C, N, r, r) tensor.

    With ``exact_integers`` (uint8 input, r <= 16) the float32 sums of x and x**2 are exact
    integers below 2**24 and n * sum(x**2) - sum(x)**2 is formed in float64, so there is no
    cancellation; other inputs take the two-pass route.
    """
    b, c, n, r, _ = values.shape
    x = values.reshape(b, c, n, r * r)
    count = r * r
    if exact_integers:
        total = x.sum(-1).double()
        squares = scratch("diff", x.shape, x.dtype, x.device)
        squares = torch.mul(x, x, out=squares).sum(-1).double()
        return ((count * squares - total.square()) / (count * (count - 1))).float()
    centred = x - x.mean(-1, keepdim=True)
    return centred.square_().sum(-1) / (count - 1)


def flat_threshold(dtype: torch.dtype) -> float:
    """Variance below which a region counts as flat, on the scale of ``dtype``."""
    return FLAT_VARIANCE_255 if dtype == torch.uint8 else FLAT_VARIANCE_255 / 255.0**2


def region_stats(batch: torch.Tensor, region_size: int) -> RegionStats:
    """Compute :class:`RegionStats` for a validated (B, C, H, W) batch."""
    return stats_of_regions(to_regions(batch, region_size))


def stats_of_regions(regions: torch.Tensor) -> RegionStats:
    """:class:`RegionStats` of a (B, C, N, r, r) tensor."""
    values = scratch("values", regions.shape, torch.float32, regions.device).copy_(regions)
    exact = regions.dtype == torch.uint8 and regions.shape[-1] <= 16
    variance = region_variance(values, exact)
    return RegionStats(
        variance=variance,
        gap_energy=region_energy(values),
        valid=variance >= flat_threshold(regions.dtype),
        region_size=regions.shape[-1],
    )


def _vfe(pair_energy: torch.Tensor, variance: torch.Tensor, valid: torch.Tensor, r: int) -> torch.Tensor:
    """(B, C, N) per-region VFE, NaN where the region is flat."""
    pairs = 2 * r * (r - 1)
    vfe = pair_energy / (pairs * 2.0 * variance.clamp_min(1e-30))
    return vfe.masked_fill(~valid, float("nan"))


def _vfe_from_stats(stats: RegionStats) -> torch.Tensor:
    return _vfe(stats.pair_energy, stats.variance, stats.valid, stats.region_size)


def _image_mean(vfe: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B,) mean VFE over non-flat (channel, region) pairs; 1.0 for an all-flat image."""
    counts = valid.sum((1, 2))
    total = torch.nan_to_num(vfe, nan=0.0).sum((1, 2))
    return torch.where(counts > 0, total / counts.clamp_min(1), torch.ones_like(total))


def image_vfe_from_stats(stats: RegionStats) -> torch.Tensor:
    """(B,) image VFE from the stats of its regions."""
    return _image_mean(_vfe_from_stats(stats), stats.valid)


def shuffled_image_vfe(shuffled: torch.Tensor, variance: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B,) image VFE of shuffled (B, C, N, r, r) regions whose variance is already known.

    A shuffle moves values but never changes a region's variance, so only the pair energy
    is measured, and only its total per region.
    """
    values = scratch("values", shuffled.shape, torch.float32, shuffled.device).copy_(shuffled)
    energy = region_energy(values, per_gap=False).squeeze(-1)
    return _image_mean(_vfe(energy, variance, valid, shuffled.shape[-1]), valid)


def region_vfe(images: torch.Tensor, region_size: int | None = None) -> torch.Tensor:
    """VFE of every (channel, region): a float tensor (B, C, H/r, W/r), NaN for flat regions.

    ``images``: uint8 (0..255) or float (0..1), shaped (C, H, W) or (B, C, H, W), on any
    device; a single image gives a batch of one.
    """
    batch, _ = as_batch(images)
    region_size = region_size or default_region_size(*batch.shape[-2:])
    check_region_size(region_size, batch.shape[-2], batch.shape[-1])
    vfe = _vfe_from_stats(region_stats(batch, region_size))
    b, c, h, w = batch.shape
    return vfe.view(b, c, h // region_size, w // region_size)


def visual_feature_entropy(images: torch.Tensor, region_size: int | None = None) -> torch.Tensor:
    """Image VFE, a float tensor (B,): the mean of :func:`region_vfe` over non-flat entries.

    About 0 for smooth images, about 1 for images whose regions are random arrangements
    of their own values.
    """
    batch, _ = as_batch(images)
    region_size = region_size or default_region_size(*batch.shape[-2:])
    check_region_size(region_size, batch.shape[-2], batch.shape[-1])
    return image_vfe_from_stats(region_stats(batch, region_size))
