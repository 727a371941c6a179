"""``blur``: a Gaussian blur of standard deviation ``blur-sigma`` pixels (torchvision's
``gaussian_blur``, kernel 2 * ceil(3 sigma) + 1, at most the image side, reflected edges)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from common.config_values import number

from .base import ImageDefense, ImageTransform, Option

if TYPE_CHECKING:
    from common.run_config import RunConfig


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """uint8 (B, C, H, W) blurred with a Gaussian of ``sigma`` pixels."""
    from torchvision.transforms.v2 import functional as TF  # imported when a node blurs

    side = min(images.shape[-2:])
    kernel = min(2 * math.ceil(3 * sigma) + 1, side - 1 + side % 2)
    return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def _sigma(key: str, value: Any) -> float:
    return number(key, value, float, 0.0, 64.0, exclusive=True)  # pixels


class Blur(ImageDefense):
    name = "blur"
    summary = "a Gaussian blur of blur-sigma pixels"
    abbreviation = "blur"
    options = {"blur-sigma": Option(_sigma, "standard deviation of the blur in pixels", "sigma")}
    comparison_sweep = ({"blur-sigma": 1.5},)

    def image_transform(self, config: RunConfig, seed: int | None = None) -> ImageTransform:
        sigma = config.option("blur-sigma")
        return ImageTransform(lambda images: blur(images, sigma))
