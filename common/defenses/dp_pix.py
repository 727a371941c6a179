"""``dp-pix``: differentially private pixelization (Fan, DBSec 2018). Each ``region-size``
square b x b of each channel is replaced by its mean plus Laplace noise of scale

    s = 255 * m / (b^2 * epsilon),

where ``dp-pix-m`` (m) is how many pixels may differ between two neighbouring images: a
change of m pixels moves a cell's mean by at most 255 m / b^2, so each released image is
epsilon-DP for m-pixel neighbourhoods (``dp-pix-epsilon``). Values are clamped to 0..255
and rounded. The server checks that every region it receives is flat, as for ``pixelate``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from common.config_values import number

from .base import ImageDefense, ImageTransform, Option
from .pixelate import unflat_regions

if TYPE_CHECKING:
    from common.run_config import RunConfig


def laplace_scale(region_size: int, epsilon: float, m: int) -> float:
    """The noise scale s = 255 m / (b^2 epsilon) of one cell mean."""
    return 255.0 * m / (region_size * region_size * epsilon)


def dp_pixelate(
    images: torch.Tensor, region_size: int, epsilon: float, m: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """uint8 (B, C, H, W) pixelated with Laplace noise on every cell mean (on the images'
    device; ``generator``: a CPU generator that makes the draw reproducible)."""
    means = F.avg_pool2d(images.float(), region_size)
    # Laplace by inversion: u ~ U(-1/2, 1/2), x = -s sign(u) ln(1 - 2|u|).
    u = torch.rand(means.shape, generator=generator).to(images.device) - 0.5
    noise = -laplace_scale(region_size, epsilon, m) * u.sign() * torch.log1p(-2 * u.abs())
    cells = (means + noise).clamp(0, 255).round().to(torch.uint8)
    return cells.repeat_interleave(region_size, -2).repeat_interleave(region_size, -1)


def _epsilon(key: str, value: Any) -> float:
    return number(key, value, float, 0.0, exclusive=True)


def _pixels(key: str, value: Any) -> int:
    return number(key, value, int, 1)


class DPPix(ImageDefense):
    name = "dp-pix"
    summary = "each region its mean plus Laplace noise: epsilon-DP for m-pixel neighbourhoods (Fan 2018)"
    abbreviation = "dppix"
    keys = ("region-size",)
    options = {
        "dp-pix-epsilon": Option(_epsilon, "DP-Pix's epsilon per released image", "eps"),
        "dp-pix-m": Option(_pixels, "DP-Pix's neighbourhood: pixels that may differ between neighbouring images", "m"),
    }
    headline = (("DP-Pix epsilon", "dp-pix-epsilon"),)
    comparison_sweep = ({"dp-pix-epsilon": 1.0}, {"dp-pix-epsilon": 8.0})

    def image_transform(self, config: RunConfig, seed: int | None = None) -> ImageTransform:
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        epsilon, m = config.option("dp-pix-epsilon"), config.option("dp-pix-m")
        return ImageTransform(lambda images: dp_pixelate(images, config.region_size, epsilon, m, generator))

    def commuting_shift(self, config: RunConfig, clean_shift: int) -> tuple[int, int]:
        return config.region_size, config.region_size

    def guard(self, images: torch.Tensor, config: RunConfig) -> list[str | None]:
        return unflat_regions(images, config.region_size)
