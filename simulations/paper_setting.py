"""The paper's own setting beside the native one: accuracy loss and attacks for each.

    python -m simulations.paper_setting --data-dir DIR [--steps 1500] [--batch-size 128] [--out FILE]

VisualMixer's paper resizes images to 224x224 before shuffling, in a 14x14 grid of 16-pixel
regions, and reports an average accuracy loss of 2.35 points. On CIFAR-10 upsampled from
32x32, each source pixel covers about 7x7 pixels, so a 16-pixel region spans only about 2.3
source pixels per side: much of what is shuffled is interpolation, and the region-mean
mosaic that any in-region shuffle leaves behind is a 14x14 copy of the image. At native
resolution with 8-pixel regions the mosaic is 4x4. Both settings run here with the same
steps, data and seed, clean and obfuscated (target VFE ``--target-vfe``):

* ``native``: 32x32 images, this project's ResNet-18-GN, region size 8;
* ``paper``: images upsampled (bilinear) to 224x224 on the device before shuffling,
  torchvision's ResNet-18, region size 16.

Each obfuscated arm is then attacked on ``--attack-images`` test images, every result
scored at 32x32 against the originals (PSNR, SSIM) and by one recogniser trained on clean
32x32 public images (a split of the training set that no arm trains on): the obfuscated
images as observed (downsampled by area for ``paper``), the mosaic attack, and an inverse
network that the attacker trains on its own public images obfuscated with the published
settings. One JSON line per arm, then a summary line; lines are flushed as they come, so a
run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from common.attacks import mosaic_attack, psnr, recognition_accuracy, ssim, train_inverse_network, train_recogniser
from common.attacks.metrics import as_unit
from common.data import ImageSet, load_dataset
from common.models import build_model
from common.training import evaluate, make_optimizer, resolve_device, train_steps
from common.visualmixer import VisualMixer

PAPER_LOSS_POINTS = 2.35  # the paper's average accuracy loss (Li et al., NDSS 2024)
# setting -> (image side, region size, model)
SETTINGS = {"native": (32, 8, "resnet18-gn"), "paper": (224, 16, "torchvision-resnet18")}
Transform = Callable[[torch.Tensor], torch.Tensor]


def resize(images: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 images to ``side`` x ``side``: bilinear up, area down (an attacker's way back)."""
    if images.shape[-1] == side:
        return images
    mode = "bilinear" if side > images.shape[-1] else "area"
    extra = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(images.float(), size=(side, side), mode=mode, **extra).round().clamp(0, 255).to(torch.uint8)


def model_for(name: str, num_classes: int) -> torch.nn.Module:
    if name == "torchvision-resnet18":
        from torchvision.models import resnet18

        return resnet18(num_classes=num_classes)  # BatchNorm, 7x7 stem: the ImageNet model
    return build_model(name, 3, num_classes)


def pipeline(side: int, mixer: VisualMixer | None) -> Transform:
    """What the model sees of a uint8 32x32 batch on the device: resized, then obfuscated."""
    if mixer is None:
        return lambda x: resize(x, side)
    return lambda x: mixer(resize(x, side))


def split(data_dir: str, public: int, test_images: int, seed: int) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(training set, the attacker's public set, test set), all 32x32 uint8."""
    train = load_dataset("folder", "train", data_dir)
    test = load_dataset("folder", "test", data_dir)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    return train.subset(order[public:]), train.subset(order[:public]), test.subset(pick[:test_images])


def train_arm(setting: str, obfuscated: bool, data: tuple[ImageSet, ImageSet, ImageSet], args, device) -> dict:
    train, _, test = data
    side, region, model_name = SETTINGS[setting]
    mixer = VisualMixer(args.target_vfe, region_size=region) if obfuscated else None
    torch.manual_seed(args.seed)
    model = model_for(model_name, train.num_classes).to(device)
    optimizer = make_optimizer("adam", model.parameters(), args.learning_rate)
    see = pipeline(side, mixer)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    losses = train_steps(
        model, train.images, train.labels, optimizer, args.steps, args.batch_size, see, device, generator
    )
    seconds = time.perf_counter() - start
    accuracy, _ = evaluate(model, test.images, test.labels, see, batch_size=256, device=device)
    return {
        "setting": setting, "image_size": side, "region_size": region, "model": model_name,
        "data": "obfuscated" if obfuscated else "clean", "steps": args.steps, "batch_size": args.batch_size,
        "test_accuracy": round(accuracy, 4), "final_train_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "train_seconds": round(seconds, 1),
    }


def attack_arm(setting: str, data: tuple[ImageSet, ImageSet, ImageSet], recogniser, args, device) -> dict:
    """The attacks on ``setting``'s obfuscation, every result at 32x32."""
    _, public, test = data
    side, region, _ = SETTINGS[setting]
    victims, labels = test.images[: args.attack_images], test.labels[: args.attack_images]
    torch.manual_seed(args.seed)
    mixer = VisualMixer(args.target_vfe, region_size=region)
    results = [mixer.obfuscate(resize(x.to(device), side)) for x in victims.split(64)]
    obfuscated = torch.cat([r.images for r in results])
    observed = resize(obfuscated, 32)
    mosaic = resize((mosaic_attack(obfuscated, region) * 255).round().to(torch.uint8), 32)
    # The attacker obfuscates its own public images with fresh draws, as the victims' are.
    attacker_mixer = VisualMixer(args.target_vfe, region_size=region)
    inverse = train_inverse_network(
        public.images, lambda x: resize(attacker_mixer(resize(x, side)), 32),
        steps=args.inverse_steps, batch_size=64, device=device, seed=args.seed,
    )
    with torch.no_grad():
        reconstructed = torch.cat([inverse(as_unit(x.to(device))) for x in observed.split(256)])
    vfe = torch.cat([r.vfe for r in results])
    row = {"setting": setting, "attack_images": len(victims), "vfe": round(float(vfe.mean()), 4)}
    originals = victims.to(device)
    for name, images in (("observed", observed), ("mosaic", mosaic), ("inverse_network", reconstructed)):
        row[name] = {
            "psnr": round(float(psnr(images, originals).mean()), 2),
            "ssim": round(float(ssim(images, originals).mean()), 3),
            "recognised": round(recognition_accuracy(recogniser, images.cpu(), labels, device), 4),
        }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 as an ImageFolder tree (train/ and test/)")
    parser.add_argument("--settings", default="native,paper", help="comma-separated: native, paper")
    parser.add_argument("--steps", type=int, default=1500, help="training steps of every arm")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam")
    parser.add_argument("--target-vfe", type=float, default=0.8)
    parser.add_argument("--public-images", type=int, default=5000, help="the attacker's, held out of training")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--attack-images", type=int, default=256)
    parser.add_argument("--recogniser-steps", type=int, default=2000)
    parser.add_argument("--inverse-steps", type=int, default=500)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    settings = args.settings.split(",")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        parser.error(f"--settings {','.join(unknown)} unknown; choose from {','.join(SETTINGS)}")
    device = resolve_device(args.device)
    out = open(args.out, "a") if args.out else None

    def emit(row: dict) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if out is not None:
            out.write(line + "\n")
            out.flush()

    started = time.perf_counter()
    data = split(args.data_dir, args.public_images, args.test_images, args.seed)
    emit({"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
          "torch": torch.__version__, "train_images": len(data[0]), "load_seconds": round(time.perf_counter() - started, 1)})
    recogniser = train_recogniser(data[1].images, data[1].labels, data[1].num_classes,
                                  steps=args.recogniser_steps, batch_size=128, model="resnet18-gn", device=device)
    clean_recognised = recognition_accuracy(recogniser, data[2].images[: args.attack_images],
                                            data[2].labels[: args.attack_images], device)
    emit({"recogniser_clean_accuracy": round(clean_recognised, 4)})
    summary: dict = {"published_accuracy_loss_points": PAPER_LOSS_POINTS}
    for setting in settings:
        rows = {obf: train_arm(setting, obf, data, args, device) for obf in (False, True)}
        for row in rows.values():
            emit(row)
        emit(attack_arm(setting, data, recogniser, args, device))
        loss = 100 * (rows[False]["test_accuracy"] - rows[True]["test_accuracy"])
        summary[f"{setting}_accuracy_loss_points"] = round(loss, 2)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
