"""VisualMixer: privacy by pixel shuffling inside image regions, driven by a target VFE.

Public API::

    visual_feature_entropy(images, region_size) -> Tensor[B]
    region_vfe(images, region_size)             -> Tensor[B, C, H/r, W/r]
    obfuscate(images, target_vfe, ...)          -> Obfuscation
    VisualMixer(target_vfe=..., ...)            # torchvision-v2-style transform
"""

from typing import TYPE_CHECKING

from ..defaults import DEFAULT_TARGET_VFE
from .functional import Obfuscation, obfuscate
from .vfe import region_vfe, visual_feature_entropy

if TYPE_CHECKING:
    from .transform import VisualMixer


def __getattr__(name: str):
    # The torchvision-style class needs torchvision, whose import costs seconds (its models
    # and ops come with it); a node that calls obfuscate() never pays for it.
    if name == "VisualMixer":
        from .transform import VisualMixer

        return VisualMixer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DEFAULT_TARGET_VFE",
    "Obfuscation",
    "VisualMixer",
    "obfuscate",
    "region_vfe",
    "visual_feature_entropy",
]
