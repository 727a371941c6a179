"""``visualmixer``: obfuscate image files, print their VFE, or check a folder of images.

    visualmixer obfuscate IMAGE... --out DIR [--target-vfe X] [--region-size N] [--seed S]
    visualmixer vfe IMAGE... [--region-size N]
    visualmixer check DIR [--image-size N] [--defense D] [--seconds S] [--out DIR] [--json]

The operator console is the server side's: ``visualmixer-console`` (:mod:`server.console.cli`).

Any file PIL opens works. An unreadable file is reported on stderr and skipped; the exit
status is 1 when any file failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .defaults import DEFAULT_TARGET_VFE, region_size_to_crop

# torch, PIL and the transform are imported by the commands that use them, so that
# `visualmixer --help` answers at once.
if TYPE_CHECKING:
    import torch


def _read(path: str) -> torch.Tensor:
    """uint8 (3, H, W) RGB tensor of an image file."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


def _load_all(paths: list[str]) -> tuple[list[tuple[str, torch.Tensor]], int]:
    from PIL import UnidentifiedImageError

    loaded, failures = [], 0
    for path in paths:
        try:
            loaded.append((path, _read(path)))
        except (OSError, UnidentifiedImageError, ValueError) as err:
            print(f"error: cannot read {path}: {err}", file=sys.stderr)
            failures += 1
    return loaded, failures


def _crop_to_regions(image: torch.Tensor, region_size: int | None) -> tuple[torch.Tensor, int]:
    """The image cropped at the bottom/right so that regions tile it, and the region side
    (``region_size``, or a quarter of the shorter side as a power of two)."""
    h, w = image.shape[-2:]
    region_size = region_size or region_size_to_crop(h, w)
    return image[:, : h - h % region_size, : w - w % region_size], region_size


def _save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def _comparison(originals: list[torch.Tensor], mixed: list[torch.Tensor]) -> torch.Tensor:
    """Originals in the top row, obfuscated below, padded to a common cell size."""
    import torch

    h = max(i.shape[1] for i in originals)
    w = max(i.shape[2] for i in originals)
    pad = 4
    sheet = torch.full((3, 2 * h + 3 * pad, len(originals) * (w + pad) + pad), 255, dtype=torch.uint8)
    for k, (a, b) in enumerate(zip(originals, mixed)):
        x = pad + k * (w + pad)
        sheet[:, pad : pad + a.shape[1], x : x + a.shape[2]] = a
        sheet[:, 2 * pad + h : 2 * pad + h + b.shape[1], x : x + b.shape[2]] = b
    return sheet


def cmd_obfuscate(args: argparse.Namespace) -> int:
    from .visualmixer import VisualMixer

    VisualMixer(args.target_vfe, region_size=args.region_size, seed=args.seed)  # bad settings: exit 2 at once
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded, failures = _load_all(args.images)
    originals, mixed = [], []
    for path, image in loaded:
        try:
            image, region_size = _crop_to_regions(image, args.region_size)
            result = VisualMixer(args.target_vfe, region_size=region_size, seed=args.seed).obfuscate(image)
        except ValueError as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            failures += 1
            continue
        target = out / f"{Path(path).stem}.png"
        _save_png(result.images, target)
        originals.append(image)
        mixed.append(result.images)
        note = "" if bool(result.met_target[0]) else " (target out of reach: highest reached)"
        print(f"{path}\tVFE {result.vfe[0].item():.3f}\t-> {target}{note}")
    if originals:
        _save_png(_comparison(originals, mixed), out / "comparison.png")
    return 1 if failures else 0


def cmd_vfe(args: argparse.Namespace) -> int:
    from .visualmixer import visual_feature_entropy

    loaded, failures = _load_all(args.images)
    for path, image in loaded:
        try:
            value = visual_feature_entropy(*_crop_to_regions(image, args.region_size))
        except ValueError as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            failures += 1
            continue
        print(f"{path}\t{value.item():.4f}")
    return 1 if failures else 0


# check's options: run-config keys (None = the app's default), with their types.
CHECK_KEYS = {
    "image-size": int, "defense": str, "model": str, "input-norm": str, "target-vfe": float,
    "region-size": int, "region-scope": int, "learning-rate": float, "batch-size": int, "bad-images": str, "seed": int,
}


def cmd_check(args: argparse.Namespace) -> int:
    import json

    from .data import DataError
    from .data_check import run_check
    from .run_config import ConfigError

    overrides = {key: getattr(args, key.replace("-", "_")) for key in CHECK_KEYS}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    sheet = Path(args.out) / f"{Path(args.dir).resolve().name}-sheet.png"
    try:
        report = run_check(args.dir, overrides, seconds=args.seconds, sheet=sheet, max_steps=args.steps)
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else "\n".join(report.lines()))
    return {"not-learning": 1, "undecided": 3}.get(report.outcome, 0) if report.steps else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visualmixer", description="Obfuscate image files with VisualMixer, or print their VFE.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    region = {"type": int, "default": None,
              "help": "side of the square regions, in pixels (default: a quarter of the shorter side, "
                      "rounded down to a power of two that divides both sides, as runs of the app use)"}
    obf = sub.add_parser(
        "obfuscate", help="write obfuscated PNGs and comparison.png",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    obf.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    obf.add_argument("--out", required=True, help="output folder (created if missing)")
    obf.add_argument("--target-vfe", type=float, default=DEFAULT_TARGET_VFE,
                     help="Visual Feature Entropy every image must reach, in [0, 1.2]")
    obf.add_argument("--region-size", **region)
    obf.add_argument("--seed", type=int, default=None, help="makes the output reproducible (none: fresh randomness)")
    obf.set_defaults(run=cmd_obfuscate)
    vfe = sub.add_parser("vfe", help="print the VFE of each image", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    vfe.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    vfe.add_argument("--region-size", **region)
    vfe.set_defaults(run=cmd_vfe)
    check = sub.add_parser(
        "check", help="will a run learn on this ImageFolder? counts, unreadable files, a sheet, a 1-minute training",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    check.add_argument("dir", metavar="DIR", help="an ImageFolder root with train/ and test/ class folders")
    for key, kind in CHECK_KEYS.items():
        check.add_argument(f"--{key}", type=kind, default=None, help="run-config key (default: the app's)")
    check.add_argument("--seconds", type=float, default=45.0, help="central training time (0: no training)")
    check.add_argument("--steps", type=int, default=None, help="stop after this many steps if sooner")
    check.add_argument("--out", default="outputs/check", help="where the sheet of images goes")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:  # bad --target-vfe / --region-size
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
