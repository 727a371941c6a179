"""Obfuscation demo on the embedded ``shapes`` data (offline): the main job until the
Flower apps land.

    python -m simulations.demo --out outputs/demo [--target-vfe X] [--region-size N]

Writes ``comparison.png`` (originals above, obfuscated below) and prints, per image, the
VFE before and after and the block size chosen for each region.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from common.data import load_dataset
from common.defaults import default_region_size
from common.visualmixer import DEFAULT_TARGET_VFE, VisualMixer, visual_feature_entropy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--target-vfe", type=float, default=DEFAULT_TARGET_VFE)
    parser.add_argument("--region-size", type=int, default=None, help="default: image side / 4 (8 px here)")
    parser.add_argument("--num-images", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data = load_dataset("shapes", "test", seed=args.seed)
    # One image per class, in class order.
    index = torch.stack([(data.labels == k).nonzero()[0, 0] for k in range(data.num_classes)])
    images = data.images[index[: args.num_images]]
    region = args.region_size or default_region_size(*images.shape[-2:])
    mixer = VisualMixer(args.target_vfe, region_size=region, seed=args.seed)
    result = mixer.obfuscate(images)
    before = visual_feature_entropy(images, region)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = torch.cat([images, result.images]).float() / 255
    save_image(grid, out / "comparison.png", nrow=len(images), padding=2, pad_value=1.0)
    print(f"target VFE {args.target_vfe}, region size {region}")
    for k, i in enumerate(index[: args.num_images]):
        plan = result.block_size[k].flatten().tolist()
        print(
            f"{data.classes[data.labels[i]]:>10s}  VFE {before[k]:.3f} -> {result.vfe[k]:.3f}"
            f"  blocks per region {plan}"
        )
    print(f"wrote {out / 'comparison.png'}")


if __name__ == "__main__":
    main()
