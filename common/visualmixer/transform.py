"""``VisualMixer``: the torchvision-v2-style class wrapper around :func:`obfuscate`."""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..defaults import DEFAULT_TARGET_VFE
from ._checks import (
    check_block_sizes,
    check_importance,
    check_region_scope,
    check_region_side,
    check_target_vfe,
)
from .functional import Obfuscation, obfuscate


class VisualMixer(v2.Transform):
    """Hide what images show by shuffling pixels inside regions until a target VFE is met.

    Args:
        target_vfe: Visual Feature Entropy every returned image must reach, in [0, 1.2]
            (about 1 = every region a random arrangement of its own values).
        region_size: side ``r`` of the square regions (power of two dividing H and W);
            ``None``: a quarter of the image's shorter side, rounded down to such a power
            of two (``common.defaults.default_region_size``), as a run of the app uses.
        block_sizes: the ladder of block sides to choose from (default ``r/2, ..., 1``).
        chromatic: also permute the channel order per region (each channel always gets
            its own spatial permutation).
        region_scope: 1 = regions stay in place; k = regions are permuted within k x k
            groups of regions; 0 = anywhere in the image. Moves the region-mean mosaic that
            any in-region shuffle leaves behind.
        importance: ``"gradient"`` (regions dense in edges first) or a ``torch.nn.Module``
            whose input saliency ranks the regions.
        seed: makes every call reproducible; ``None`` draws fresh randomness per call.

    Works on (C, H, W) or (B, C, H, W) uint8 or float tensors on CPU or CUDA, alone, in a
    ``v2.Compose`` (after ``v2.PILToTensor()``), or inside a ``DataLoader``.
    """

    _transformed_types = (tv_tensors.Image, torch.Tensor)

    def __init__(
        self,
        target_vfe: float = DEFAULT_TARGET_VFE,
        region_size: int | None = None,
        block_sizes: tuple[int, ...] | None = None,
        chromatic: bool = True,
        region_scope: int = 1,
        importance: str | torch.nn.Module = "gradient",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.target_vfe = check_target_vfe(target_vfe)
        if region_size is not None:
            check_region_side(region_size)
        elif block_sizes is not None:
            raise ValueError("block_sizes needs region_size: the ladder is checked against the region side")
        self.block_sizes = None if block_sizes is None else check_block_sizes(
            block_sizes, region_size
        )[1:]
        self.region_size = region_size
        self.chromatic = bool(chromatic)
        self.region_scope = check_region_scope(region_scope)
        check_importance(importance)
        self.importance = importance
        self.seed = seed

    def obfuscate(self, images: torch.Tensor) -> Obfuscation:
        """Shuffle and return the images with the achieved VFE and the plan per image."""
        return obfuscate(
            images,
            target_vfe=self.target_vfe,
            region_size=self.region_size,
            block_sizes=self.block_sizes,
            chromatic=self.chromatic,
            region_scope=self.region_scope,
            importance=self.importance,
            seed=self.seed,
        )

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = self.obfuscate(inpt.as_subclass(torch.Tensor)).images
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out

    def extra_repr(self) -> str:
        return (
            f"target_vfe={self.target_vfe}, region_size={self.region_size}, "
            f"block_sizes={self.block_sizes}, chromatic={self.chromatic}, "
            f"region_scope={self.region_scope}, seed={self.seed}"
        )
