"""Image folders that are hard in the ways users' own data often is, written offline.

The class is decided by a small object on a large, bright, low-contrast textured
background (as in microscopy or inspection photos), and the files are non-square JPEGs
larger than the run's ``image-size``, so the app's resize and centre crop apply.

* ``shapes-small``: the embedded ``shapes`` objects (10 classes); needs nothing.
* ``cifar-small``: CIFAR-10 objects (10 classes) from an ImageFolder copy (``--cifar DIR``).

    python -m simulations.hard_folders shapes-small --out /tmp/hard/shapes-small
    python -m simulations.hard_folders cifar-small --cifar /data/cifar10-jpg --out /tmp/hard/cifar-small

Each folder has ``train/<class>/`` and ``test/<class>/``; a run reads it with
``dataset='folder' data-dir=OUT image-size=64`` (or 128).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.data import load_dataset
from common.shapes import CLASSES as SHAPE_CLASSES
from common.shapes import generate_shapes

KINDS = ("shapes-small", "cifar-small")
WIDTH, HEIGHT = 192, 144  # 4:3 files; the app crops the centre 144x144 before resizing
OBJECT_SIDE = 40  # px of the object in the file: about a quarter of the cropped side
BACKGROUND_LEVEL, BACKGROUND_SWING = 0.70, 0.12  # bright, low-contrast texture (values in 0..1)
OBJECT_CONTRAST = 0.45  # the object's deviations from mid-grey, scaled onto the background


def textured_backgrounds(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, HEIGHT, WIDTH) floats in [0, 1]: smooth blotches plus oriented stripes around
    a bright grey, slightly tinted per image."""
    coarse = torch.rand(n, 1, HEIGHT // 12, WIDTH // 12, generator=generator)
    blotches = torch.nn.functional.interpolate(coarse, size=(HEIGHT, WIDTH), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(HEIGHT, dtype=torch.float32), torch.arange(WIDTH, dtype=torch.float32), indexing="ij")
    angle = torch.rand(n, 1, 1, generator=generator) * math.pi
    freq = 0.15 + 0.35 * torch.rand(n, 1, 1, generator=generator)
    stripes = torch.sin(freq * (torch.cos(angle) * xx + torch.sin(angle) * yy)).unsqueeze(1)
    tint = 0.04 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
    texture = 0.6 * (blotches - 0.5) + 0.4 * stripes * 0.5
    noise = 0.03 * torch.randn(n, 3, HEIGHT, WIDTH, generator=generator)
    return (BACKGROUND_LEVEL + tint + BACKGROUND_SWING * texture + noise).clamp(0, 1)


def paste_small(objects: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 objects (n, 3, h, w) -> uint8 (n, 3, HEIGHT, WIDTH): each resized to
    OBJECT_SIDE, its contrast reduced, laid on a textured background at a random place
    inside the centre square the app keeps."""
    n = len(objects)
    background = textured_backgrounds(n, generator)
    small = torch.nn.functional.interpolate(
        objects.float() / 255, size=(OBJECT_SIDE, OBJECT_SIDE), mode="bilinear", antialias=True
    )
    left0 = (WIDTH - HEIGHT) // 2
    for i in range(n):
        top = int(torch.randint(0, HEIGHT - OBJECT_SIDE + 1, (1,), generator=generator))
        left = left0 + int(torch.randint(0, HEIGHT - OBJECT_SIDE + 1, (1,), generator=generator))
        patch = background[i, :, top : top + OBJECT_SIDE, left : left + OBJECT_SIDE]
        background[i, :, top : top + OBJECT_SIDE, left : left + OBJECT_SIDE] = (
            patch + OBJECT_CONTRAST * (small[i] - 0.5)
        ).clamp(0, 1)
    return (background * 255).round().to(torch.uint8)


def sources(
    kind: str, split: str, count: int, seed: int, cifar: str | None
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """(uint8 objects, labels, class names) for ``split``."""
    if kind == "shapes-small":
        images, labels = generate_shapes(count, seed + (0 if split == "train" else 7_919))
        return images, labels, SHAPE_CLASSES
    if not cifar:
        raise SystemExit("cifar-small needs --cifar DIR (an ImageFolder copy of CIFAR-10 with train/ and test/)")
    data = load_dataset("folder", split, cifar)
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count]
    return data.images[pick], data.labels[pick], data.classes


def write_folder(kind: str, out: Path, train: int, test: int, seed: int = 0, cifar: str | None = None) -> Path:
    """Write ``out/train`` and ``out/test`` as JPEG class folders; returns ``out``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    generator = torch.Generator().manual_seed(seed)
    for split, count in (("train", train), ("test", test)):
        objects, labels, classes = sources(kind, split, count, seed, cifar)
        for name in classes:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for start in range(0, len(objects), 500):
            images = paste_small(objects[start : start + 500], generator)
            for offset, (image, label) in enumerate(zip(images, labels[start : start + 500])):
                path = out / split / classes[int(label)] / f"{start + offset:06d}.jpg"
                Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).save(path, quality=90)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--train", type=int, default=10_000, help="training images")
    parser.add_argument("--test", type=int, default=2_000, help="test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cifar", help="cifar-small: an ImageFolder copy of CIFAR-10")
    args = parser.parse_args(argv)
    write_folder(args.kind, args.out, args.train, args.test, args.seed, args.cifar)
    print(f"wrote {args.out} ({args.train} train, {args.test} test)")


if __name__ == "__main__":
    main()
