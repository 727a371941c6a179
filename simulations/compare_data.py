"""The data of :mod:`simulations.compare`: the victims' images written once as an
ImageFolder tree (clients' training data and the test split), and a disjoint public set
for the attacker; a comparison folder refuses another setup."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from PIL import Image

from common.data import ImageSet, load_dataset
from simulations.compare_presets import Preset


def write_folder(images: ImageSet, folder: Path) -> None:
    """An ImageFolder tree of PNGs; class folders numbered so their sorted order is the label."""
    for i, name in enumerate(images.classes):
        (folder / f"{i:03d}-{name}").mkdir(parents=True, exist_ok=True)
    names = [f"{i:03d}-{n}" for i, n in enumerate(images.classes)]
    for k, (image, label) in enumerate(zip(images.images, images.labels.tolist(), strict=True)):
        Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).save(folder / names[label] / f"{k:06d}.png")


def _split(train_size: int, preset: Preset, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(public indices, victim indices) of the training split, disjoint."""
    order = torch.randperm(train_size, generator=torch.Generator().manual_seed(seed))
    if preset.public >= train_size:
        raise SystemExit(f"the preset needs {preset.public} public images; the training split has {train_size}")
    victims = order[preset.public :]
    return order[: preset.public], victims[: preset.victim_train] if preset.victim_train else victims


def _link_folder(files: list[tuple[str, int]], classes: list[str], folder: Path) -> None:
    """An ImageFolder tree of symlinks to the chosen files (no decoding, no copies)."""
    for k, (path, label) in enumerate(files):
        target = folder / f"{label:03d}-{classes[label]}"
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{k:06d}{Path(path).suffix}").symlink_to(Path(path).resolve())


def prepare_data(dataset: str, data_dir: str | None, preset: Preset, out: Path, seed: int) -> tuple[Path, ImageSet]:
    """Write the victims' data to ``out/data``; return its path and the attacker's public set.

    An ImageFolder source is linked file by file, so only the images used are ever decoded;
    other data sets are loaded and written out as PNGs.
    """
    folder, public_dir = out / "data", out / "data-public"
    if not (folder / "done").exists():
        for stale in (folder, public_dir):
            if stale.exists():
                shutil.rmtree(stale)
        if dataset == "folder":
            from torchvision.datasets import ImageFolder

            root = Path(data_dir).expanduser()
            try:
                train, test = ImageFolder(str(root / "train")), ImageFolder(str(root / "test"))
            except (FileNotFoundError, RuntimeError) as err:
                raise SystemExit(f"--data-dir {str(root)!r}: need an ImageFolder tree with train/ and test/ ({err})") from err
            public, victims = _split(len(train.samples), preset, seed)
            test_order = torch.randperm(len(test.samples), generator=torch.Generator().manual_seed(seed + 1))
            test_pick = test_order[: preset.test] if preset.test else test_order
            _link_folder([train.samples[i] for i in victims.tolist()], train.classes, folder / "train")
            _link_folder([test.samples[i] for i in test_pick.tolist()], test.classes, folder / "test")
            _link_folder([train.samples[i] for i in public.tolist()], train.classes, public_dir / "train")
        else:
            train = load_dataset(dataset, "train", data_dir or None, image_size=preset.image_size, seed=seed)
            test = load_dataset(dataset, "test", data_dir or None, image_size=preset.image_size, seed=seed)
            public, victims = _split(len(train), preset, seed)
            test_order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed + 1))
            write_folder(train.subset(victims), folder / "train")
            write_folder(test.subset(test_order[: preset.test] if preset.test else test_order), folder / "test")
            write_folder(train.subset(public), public_dir / "train")
        (folder / "done").write_text("ok\n")
    return folder, load_dataset("folder", "train", public_dir, image_size=preset.image_size)


def check_same_setup(out: Path, setup: dict) -> None:
    """Completed arms and prepared data in ``out`` are reused: refuse a different data set,
    model or image size there, which would mix runs that cannot be compared."""
    path = out / "setup.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = {k: (before.get(k), v) for k, v in setup.items() if before.get(k, v) != v}
        if changed:
            detail = ", ".join(f"{k} {old!r} there, {new!r} now" for k, (old, new) in changed.items())
            raise SystemExit(f"--out {str(out)!r} holds a compare with another setup ({detail}): use another --out")
    path.write_text(json.dumps(setup) + "\n")
