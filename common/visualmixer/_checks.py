"""Input validation shared by the VFE functions and the transform.

Every check raises ``ValueError`` naming the argument and the offending value, so a
bad call fails at the door instead of deep inside a reshape.
"""

from __future__ import annotations

from typing import Any

import torch

from ..defaults import MAX_TARGET_VFE

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SUPPORTED_CHANNELS = (1, 3)


def as_batch(images: torch.Tensor, name: str = "images") -> tuple[torch.Tensor, bool]:
    """Return ``images`` as (B, C, H, W) and whether a single (C, H, W) image was given."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 and images.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name}.dtype must be torch.uint8 (0..255) or a float dtype (0..1), got {images.dtype}"
        )
    if images.dim() not in (3, 4):
        raise ValueError(
            f"{name} must have shape (C, H, W) or (B, C, H, W), got {tuple(images.shape)}"
        )
    single = images.dim() == 3
    batch = images.unsqueeze(0) if single else images
    if batch.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: shape {tuple(images.shape)}")
    channels = batch.shape[1]
    if channels not in SUPPORTED_CHANNELS:
        raise ValueError(
            f"{name} must have 1 (grey) or 3 (RGB) channels in dim -3, got {channels} "
            f"(shape {tuple(images.shape)})"
        )
    if batch.is_floating_point() and not bool(torch.isfinite(batch).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return batch, single


def check_region_side(region_size: int) -> int:
    """Region side must be a power of two >= 2 (r = 16 at most keeps uint8 sums exact)."""
    if isinstance(region_size, bool) or not isinstance(region_size, int):
        raise ValueError(f"region_size must be an int, got {region_size!r}")
    if region_size < 2 or region_size & (region_size - 1):
        raise ValueError(f"region_size must be a power of two >= 2, got {region_size}")
    return region_size


def check_region_size(region_size: int, height: int, width: int) -> None:
    """Region side must be a power of two >= 2 that tiles the image exactly."""
    check_region_side(region_size)
    if region_size > min(height, width):
        raise ValueError(
            f"region_size={region_size} is larger than the image ({height}x{width})"
        )
    if height % region_size or width % region_size:
        # Leaving a border strip unshuffled would leak it in the clear, and padding would
        # change what the receiver sees; make the caller resize or crop explicitly.
        raise ValueError(
            f"image size {height}x{width} is not divisible by region_size={region_size}; "
            "resize or crop the images (e.g. torchvision.transforms.v2.CenterCrop) first"
        )


def check_target_vfe(target_vfe: float) -> float:
    if isinstance(target_vfe, bool) or not isinstance(target_vfe, (int, float)):
        raise ValueError(f"target_vfe must be a number, got {target_vfe!r}")
    value = float(target_vfe)
    if not 0.0 <= value <= MAX_TARGET_VFE:
        raise ValueError(f"target_vfe must be in [0, {MAX_TARGET_VFE}], got {target_vfe}")
    return value


def check_block_sizes(block_sizes: tuple[int, ...] | None, region_size: int) -> tuple[int, ...]:
    """The ladder of block sizes, coarse to fine, starting with ``region_size`` (= untouched)."""
    if block_sizes is None:
        sizes = []
        size = region_size // 2
        while size >= 1:
            sizes.append(size)
            size //= 2
        return (region_size, *sizes)
    sizes = sorted({int(b) for b in block_sizes}, reverse=True)
    for size in sizes:
        if size < 1 or size >= region_size or region_size % size or size & (size - 1):
            raise ValueError(
                f"block_sizes must be powers of two smaller than region_size={region_size}, "
                f"got {tuple(block_sizes)}"
            )
    if not sizes:
        raise ValueError(f"block_sizes must not be empty, got {tuple(block_sizes)}")
    return (region_size, *sizes)


def check_region_scope(region_scope: Any, grid: tuple[int, int] | None = None) -> int:
    """0 (anywhere), 1 (regions stay) or k > 1 dividing the region grid (k x k groups)."""
    if isinstance(region_scope, bool) or not isinstance(region_scope, int) or region_scope < 0:
        raise ValueError(f"region_scope must be an int >= 0, got {region_scope!r}")
    if grid is not None and region_scope > 1 and (grid[0] % region_scope or grid[1] % region_scope):
        raise ValueError(
            f"region_scope={region_scope} does not divide the {grid[0]}x{grid[1]} region grid; "
            "use a divisor, 1 (regions stay) or 0 (anywhere in the image)"
        )
    return region_scope


def check_importance(importance: Any) -> None:
    if not isinstance(importance, torch.nn.Module) and importance != "gradient":
        raise ValueError(
            f"importance must be 'gradient' or a torch.nn.Module (saliency), got {importance!r}"
        )
