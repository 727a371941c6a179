"""VisualMixer: privacy by pixel shuffling inside image regions, driven by a target VFE.

Public API::

    visual_feature_entropy(images, region_size) -> Tensor[B]
    region_vfe(images, region_size)             -> Tensor[B, C, H/r, W/r]
    obfuscate(images, target_vfe, ...)          -> Obfuscation
    VisualMixer(target_vfe=..., ...)            # torchvision-v2-style transform
"""

from .functional import Obfuscation, obfuscate
from .transform import DEFAULT_TARGET_VFE, VisualMixer
from .vfe import region_vfe, visual_feature_entropy

__all__ = [
    "DEFAULT_TARGET_VFE",
    "Obfuscation",
    "VisualMixer",
    "obfuscate",
    "region_vfe",
    "visual_feature_entropy",
]
