"""Which uploads the server's privacy guard keeps: honest obfuscations and hostile payloads.

    python -m simulations.bench.guard_payloads [--images 1024] [--cifar DIR]

For each image set (the embedded shapes, and CIFAR-10 test images from an ImageFolder copy
with ``--cifar``), prints one JSON line per payload with how many of ``--images`` images
``common.defenses.visualmixer.guard_failures`` keeps at the default target 0.8 (the honest
arms at the target and region size they name) and the first reason it gives for the others:

* ``honest-T-rR[-mono]``: VisualMixer at target T, R-px regions (``-mono``: chromatic off);
* ``originals``; ``blue-checkerboard``: originals whose blue channel is a 0/255 checkerboard;
* ``checker-noise-A``: originals plus a +-A checkerboard; ``uniform-noise-A``: originals plus
  independent uniform noise in [-A, A] per value.
"""

from __future__ import annotations

import argparse
import json

import torch

from common.defenses.visualmixer import guard_failures
from common.shapes import generate_shapes
from common.visualmixer import VisualMixer

TOLERANCE = 0.05  # the run config's default vfe-tolerance
HONEST = ((0.8, 8, True), (0.8, 8, False), (0.5, 8, True), (0.5, 8, False), (1.0, 4, True))


def checkerboard(side: int) -> torch.Tensor:
    """(side, side) int16 of 0 and 1, alternating along rows and columns."""
    index = torch.arange(side)
    return ((index.view(-1, 1) + index.view(1, -1)) % 2).to(torch.int16)


def blue_checkerboard(images: torch.Tensor) -> torch.Tensor:
    out = images.clone()
    out[:, 2] = (checkerboard(images.shape[-1]) * 255).to(torch.uint8)
    return out


def checker_noise(images: torch.Tensor, amplitude: int) -> torch.Tensor:
    pattern = amplitude * (2 * checkerboard(images.shape[-1]) - 1)
    return (images.to(torch.int16) + pattern).clamp(0, 255).to(torch.uint8)


def uniform_noise(images: torch.Tensor, amplitude: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(-amplitude, amplitude + 1, images.shape, generator=g, dtype=torch.int16)
    return (images.to(torch.int16) + noise).clamp(0, 255).to(torch.uint8)


def payloads(images: torch.Tensor):
    """(name, images, region size, target) of every payload."""
    for target, region, chromatic in HONEST:
        mixed = VisualMixer(target, region_size=region, chromatic=chromatic, seed=2)(images)
        yield f"honest-{target}-r{region}{'' if chromatic else '-mono'}", mixed, region, target
    yield "originals", images, 8, 0.8
    yield "blue-checkerboard", blue_checkerboard(images), 8, 0.8
    for amplitude in (6, 12, 30):
        yield f"checker-noise-{amplitude}", checker_noise(images, amplitude), 8, 0.8
    for amplitude in (12, 30, 60):
        yield f"uniform-noise-{amplitude}", uniform_noise(images, amplitude), 8, 0.8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--cifar", default=None, help="an ImageFolder copy of CIFAR-10 (its test split is used)")
    args = parser.parse_args(argv)
    sets = {"shapes": generate_shapes(args.images, seed=5)[0]}
    if args.cifar:
        from common.data import load_dataset

        sets["cifar10"] = load_dataset("folder", "test", args.cifar).images[: args.images]
    for name, images in sets.items():
        for payload, uploads, region, target in payloads(images):
            reasons = guard_failures(uploads, region, target - TOLERANCE)
            failing = [r for r in reasons if r is not None]
            print(json.dumps({"images": name, "payload": payload, "kept": len(reasons) - len(failing),
                              "of": len(reasons), "first-reason": failing[0] if failing else None}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
