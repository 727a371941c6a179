"""``shapes``: the embedded default data set, generated offline from a seed.

32x32 RGB images in 10 classes of coloured shapes on textured backgrounds. Every image draws
its own position, scale, rotation, foreground and background colours, stripe texture and
pixel noise, so a small CNN has something to learn (it does not reach 100% in one epoch) and
the images have the edges and textures that VisualMixer has to hide. Generation is
vectorised over the batch and deterministic for a given seed.
"""

from __future__ import annotations

import math

import torch

CLASSES = (
    "circle", "square", "triangle", "cross", "ring",
    "star", "crescent", "half-disc", "bar", "frame",
)
IMAGE_SIZE = 32


def _polygon_radius(theta: torch.Tensor, sides: int) -> torch.Tensor:
    """Distance from centre to the edge of a unit-circumradius regular polygon at angle theta."""
    sector = 2 * math.pi / sides
    return math.cos(math.pi / sides) / torch.cos(torch.remainder(theta, sector) - sector / 2)


def _coverage(label: torch.Tensor, u: torch.Tensor, v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Soft (anti-aliased) coverage in [0, 1] of each class's shape, by signed pixel distance."""
    rho = torch.sqrt(u * u + v * v)
    theta = torch.atan2(v, u)
    d = torch.stack(
        [
            s - rho,  # circle
            s * _polygon_radius(theta, 4) - rho,  # square
            s * _polygon_radius(theta, 3) - rho,  # triangle
            torch.maximum(  # cross
                torch.minimum(0.3 * s - u.abs(), s - v.abs()),
                torch.minimum(0.3 * s - v.abs(), s - u.abs()),
            ),
            torch.minimum(s - rho, rho - 0.55 * s),  # ring
            s * (0.5 + 0.5 * (0.5 + 0.5 * torch.cos(5 * theta))) - rho,  # star
            torch.minimum(s - rho, torch.sqrt((u - 0.45 * s) ** 2 + v * v) - 0.8 * s),  # crescent
            torch.minimum(s - rho, v),  # half-disc
            torch.minimum(s - u.abs(), 0.35 * s - v.abs()),  # bar
            torch.minimum(  # frame: a hollow square
                s * _polygon_radius(theta, 4) - rho, rho - 0.55 * s * _polygon_radius(theta, 4)
            ),
        ]
    )
    picked = d.gather(0, label.view(1, -1, 1, 1).expand(1, *d.shape[1:]))[0]
    return (picked + 0.5).clamp(0, 1)


def generate_shapes(num_images: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_images`` uint8 images (N, 3, 32, 32) and int64 labels (N,), balanced classes."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    g = torch.Generator().manual_seed(seed)
    n = num_images
    label = torch.arange(n) % len(CLASSES)
    label = label[torch.randperm(n, generator=g)]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=g)

    grid = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    scale = uniform(7.0, 12.0).view(n, 1, 1)
    cx = uniform(0.0, 1.0).view(n, 1, 1) * (IMAGE_SIZE - 2 * scale) + scale
    cy = uniform(0.0, 1.0).view(n, 1, 1) * (IMAGE_SIZE - 2 * scale) + scale
    angle = uniform(0.0, 2 * math.pi).view(n, 1, 1)
    dx, dy = xx - cx, yy - cy
    u = torch.cos(angle) * dx + torch.sin(angle) * dy
    v = -torch.sin(angle) * dx + torch.cos(angle) * dy
    mask = _coverage(label, u, v, scale).unsqueeze(1)  # (N, 1, H, W)

    # Background: a base colour with oriented stripes of random frequency and contrast.
    base = uniform(0.1, 0.9, 3, 1, 1)
    freq = uniform(0.3, 1.2).view(n, 1, 1)
    orient = uniform(0.0, math.pi).view(n, 1, 1)
    stripes = torch.sin(freq * (torch.cos(orient) * xx + torch.sin(orient) * yy)
                        + uniform(0, 2 * math.pi).view(n, 1, 1)).unsqueeze(1)
    background = base + uniform(0.05, 0.2, 1, 1, 1) * stripes * uniform(-1, 1, 3, 1, 1)
    # Foreground: a colour pushed away from the background's so the shape stays visible.
    foreground = uniform(0.0, 1.0, 3, 1, 1)
    push = torch.sign(foreground - base) * 0.35
    foreground = (foreground + push).clamp(0, 1)
    image = background * (1 - mask) + foreground * mask
    image = image + 0.02 * torch.randn(image.shape, generator=g)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8), label
