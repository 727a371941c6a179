"""Reconstruction metrics, all on float images in [0, 1] (data range 1), per image.

* PSNR = 10 log10(1 / MSE).
* SSIM: ``pytorch_msssim.ssim`` with ``data_range=1`` set explicitly (11x11 Gaussian window,
  sigma 1.5, valid on 32x32). Offline: no weights.
* VFE of the reconstruction at the defence's region size (how scrambled it still looks).
LPIPS is not computed: every implementation downloads an ImageNet backbone at run time.
"""

from __future__ import annotations

import torch
from pytorch_msssim import ssim as _ssim

from ..training import to_model_input
from ..visualmixer import visual_feature_entropy


def as_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 or float 0..1 -> float 0..1 (clamped)."""
    return to_model_input(images).clamp(0.0, 1.0)


def psnr(reconstruction: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (data range 1)."""
    x, y = as_unit(reconstruction), as_unit(original)
    mse = (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def ssim(reconstruction: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (data range 1)."""
    return _ssim(as_unit(reconstruction), as_unit(original), data_range=1.0, size_average=False)


def score(reconstruction: torch.Tensor, original: torch.Tensor, region_size: int | None = None) -> dict[str, float]:
    """Mean PSNR, SSIM and VFE of a batch of reconstructions against the originals."""
    return {
        "psnr": float(psnr(reconstruction, original).mean()),
        "ssim": float(ssim(reconstruction, original).mean()),
        "vfe": float(visual_feature_entropy(as_unit(reconstruction), region_size).mean()),
    }
