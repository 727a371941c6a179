"""Data sets as in-memory uint8 tensors, and how they are split between clients.

Every loader returns an :class:`ImageSet`: uint8 images (N, C, H, W), int64 labels and the
class names. Raw uint8 is what an edge device holds and what VisualMixer shuffles; models
see ``images / 255``.

* ``shapes``: the embedded default (``common/shapes.py``), generated from a seed, offline.
* ``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``: torchvision's loaders, reading
  ``data_dir``; nothing is downloaded unless :func:`load_dataset` is called with
  ``download=True`` (runs never do: edge nodes and CI are often offline).
  MNIST-style 28x28 images are zero-padded to 32x32 so that 8-pixel regions tile them.
* ``folder``: any ``ImageFolder`` root with ``train/`` and ``test/`` class folders (your
  own or medical data), resized to ``image_size`` and centre-cropped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .shapes import CLASSES as SHAPE_CLASSES
from .shapes import generate_shapes



@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    classes: int | None  # None: known only from the files (``folder``)
    train_size: int | None = None  # images in the training split; None: known only from the files


SHAPES_SIZES = {"train": 10_000, "test": 2_000}
# The data sets by run-config name.
DATASETS: dict[str, DatasetInfo] = {
    "shapes": DatasetInfo(3, 10, SHAPES_SIZES["train"]),
    "cifar10": DatasetInfo(3, 10, 50_000),
    "cifar100": DatasetInfo(3, 100, 50_000),
    "mnist": DatasetInfo(1, 10, 60_000),
    "fashion-mnist": DatasetInfo(1, 10, 60_000),
    "folder": DatasetInfo(3, None),
}
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index], self.classes)


class DataError(ValueError):
    """A data set that cannot be found or read; the message says what was looked for."""


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | Path | None = None,
    download: bool = False,
    image_size: int = 32,
    seed: int = 0,
) -> ImageSet:
    """Load ``split`` of data set ``name`` (see :data:`DATASETS`)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if name == "shapes":
        # Different seeds per split so that test images are never training images.
        offset = 0 if split == "train" else 1_000_003
        images, labels = generate_shapes(SHAPES_SIZES[split], seed + offset)
        return ImageSet(images, labels, SHAPE_CLASSES)
    if data_dir is None or str(data_dir) == "":
        raise DataError(
            f"dataset {name!r} needs data-dir: the folder that holds it"
        )
    root = Path(data_dir).expanduser()
    if name == "folder":
        return _load_folder(str(root.resolve()), split, image_size)
    return _load_torchvision(name, root, split, download)


def _load_torchvision(name: str, root: Path, split: str, download: bool) -> ImageSet:
    from torchvision import datasets

    cls = {
        "cifar10": datasets.CIFAR10,
        "cifar100": datasets.CIFAR100,
        "mnist": datasets.MNIST,
        "fashion-mnist": datasets.FashionMNIST,
    }[name]
    try:
        ds = cls(root=str(root), train=split == "train", download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted..."
        raise DataError(
            f"could not read {name} ({split}) under data-dir {str(root)!r}: {err} "
            f"Put torchvision's {cls.__name__} files there (as its own download lays them out)."
        ) from err
    data = torch.as_tensor(ds.data)
    if data.dim() == 3:  # (N, 28, 28) grey: pad to 32x32 so 8-pixel regions tile it
        data = torch.nn.functional.pad(data.unsqueeze(1), (2, 2, 2, 2))
    else:  # (N, 32, 32, 3)
        data = data.permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(ds.targets, dtype=torch.long)
    return ImageSet(data.to(torch.uint8), labels, tuple(ds.classes))


@functools.lru_cache(maxsize=4)
def _load_folder(root: str, split: str, image_size: int) -> ImageSet:
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import ImageFolder

    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(
            f"data-dir {root!r} has no {split}/ folder; expected an ImageFolder layout "
            f"{root}/{split}/<class>/<image>"
        )
    try:
        tree = ImageFolder(str(folder), allow_empty=False)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"could not read images under {str(folder)!r}: {err}") from err
    images = np.empty((len(tree.samples), image_size, image_size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(tree.samples):
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"could not decode image {path!r}: {err}") from err
        if rgb.size != (image_size, image_size):
            # Resize the short side, then centre-crop: the usual ImageFolder preprocessing.
            scale = image_size / min(rgb.size)
            w, h = max(image_size, round(rgb.width * scale)), max(image_size, round(rgb.height * scale))
            rgb = rgb.resize((w, h), Image.BILINEAR)
            left, top = (w - image_size) // 2, (h - image_size) // 2
            rgb = rgb.crop((left, top, left + image_size, top + image_size))
        images[i] = np.asarray(rgb)
    labels = torch.tensor([label for _, label in tree.samples], dtype=torch.long)
    return ImageSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, tuple(tree.classes))


def partition_indices(
    labels: torch.Tensor,
    num_partitions: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Split sample indices between ``num_partitions`` clients.

    ``iid``: a seeded shuffle cut into near-equal parts. ``dirichlet``: per class, the
    class's samples are shared out with proportions drawn from Dirichlet(alpha) (smaller
    alpha = more skew), the usual non-IID benchmark split.
    """
    if num_partitions < 1:
        raise ValueError(f"num-partitions must be >= 1, got {num_partitions}")
    g = torch.Generator().manual_seed(seed)
    if scheme == "iid":
        return list(torch.randperm(len(labels), generator=g).tensor_split(num_partitions))
    if scheme != "dirichlet":
        raise ValueError(f"partitioning must be 'iid' or 'dirichlet'; got {scheme!r}")
    if not alpha > 0:
        raise ValueError(f"dirichlet-alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in range(num_partitions)]
    for cls in labels.unique():
        members = (labels == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        shares = torch.from_numpy(rng.dirichlet([float(alpha)] * num_partitions))
        cuts = (shares.cumsum(0) * len(members)).round().long()[:-1]
        for part, chunk in zip(parts, members.tensor_split(cuts)):
            part.append(chunk)
    return [torch.cat(p)[torch.randperm(sum(len(c) for c in p), generator=g)] for p in parts]


HOLDOUT_FRACTION = 0.1


@functools.lru_cache(maxsize=8)
def cached_dataset(name: str, split: str, data_dir: str | None, seed: int) -> ImageSet:
    """:func:`load_dataset` once per process (simulated clients share a worker process)."""
    return load_dataset(name, split, data_dir or None, seed=seed)


def client_partition(
    name: str,
    data_dir: str | None,
    partition_id: int,
    num_partitions: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> tuple[ImageSet, ImageSet]:
    """(local training set, held-out set) of one client: its partition, 10% held out."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"node-config partition-id={partition_id} must be in [0, num-partitions={num_partitions})"
        )
    train = cached_dataset(name, "train", data_dir, seed)
    part = partition_indices(train.labels, num_partitions, scheme, alpha, seed)[partition_id]
    if len(part) < 2:
        raise DataError(
            f"partition {partition_id} of {num_partitions} holds {len(part)} images; "
            "use fewer partitions or a larger dirichlet-alpha"
        )
    held = max(1, int(len(part) * HOLDOUT_FRACTION))
    return train.subset(part[held:]), train.subset(part[:held])
