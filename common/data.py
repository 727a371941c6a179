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
  own or medical data).

Every data set comes at ``image_size`` x ``image_size`` (default 32). Files in a folder are
decoded, their short side resized to ``image_size`` (bilinear, antialiased) and the centre
cropped square, the usual ImageFolder preprocessing; the 32x32 data sets (shapes, CIFAR,
padded MNIST) are resized the same way when another size is asked for, which adds pixels
but no detail.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .shapes import CLASSES as SHAPE_CLASSES
from .shapes import generate_shapes

log = logging.getLogger("flwr")  # a node's lines land in Flower's log



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
    bad_images: str = "skip",
) -> ImageSet:
    """Load ``split`` of data set ``name`` (see :data:`DATASETS`); ``bad_images``: what an
    unreadable file in a ``folder`` data set does (``skip`` it, or ``fail`` the load)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    check_image_size(image_size)
    if name == "shapes":
        # Different seeds per split so that test images are never training images.
        offset = 0 if split == "train" else 1_000_003

        def generate() -> ImageSet:
            images, labels = generate_shapes(SHAPES_SIZES[split], seed + offset)
            return ImageSet(resize_images(images, image_size), labels, SHAPE_CLASSES)

        return cached_on_disk(f"shapes-{shapes_version()}-{split}-{seed}-{image_size}", generate)
    if data_dir is None or str(data_dir) == "":
        raise DataError(
            f"dataset {name!r} needs data-dir: the folder that holds it"
        )
    root = Path(data_dir).expanduser()
    if name == "folder":
        return _load_folder(str(root.resolve()), split, image_size, bad_images)
    data = _load_torchvision(name, root, split, download)
    return ImageSet(resize_images(data.images, image_size), data.labels, data.classes)


MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 512


def check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image-size must be a whole number in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]; got {image_size!r}")
    return image_size


def resize_images(images: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) to ``side`` x ``side``: short side resized (bilinear,
    antialiased), centre cropped; as they are when already that size."""
    if images.shape[-2:] == (side, side):
        return images
    from torchvision.transforms.v2 import functional as TF

    out = []
    for start in range(0, len(images), 1024):  # bounded scratch memory for large sizes
        chunk = TF.resize(images[start : start + 1024], side, antialias=True)
        out.append(TF.center_crop(chunk, [side, side]))
    return torch.cat(out) if out else images.new_empty((0, images.shape[1], side, side))


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


BAD_IMAGES = ("skip", "fail")
# Decoding a folder of JPEGs is the slow part of a deployed node's message (a new process
# each time): the decoded tensors are kept on disk, keyed by the files' names, sizes and
# modification times, so a changed folder is decoded again.
CACHE_ENV = "VISUALMIXER_CACHE_DIR"
PROGRESS_SECONDS = 5.0


def cache_dir() -> Path:
    """``$VISUALMIXER_CACHE_DIR``, else ``$XDG_CACHE_HOME/visualmixer`` (``~/.cache/visualmixer``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "visualmixer"


@functools.lru_cache(maxsize=1)
def shapes_version() -> str:
    """A digest of the generator's source: a changed generator makes new cache files."""
    return hashlib.sha256(Path(generate_shapes.__code__.co_filename).read_bytes()).hexdigest()[:12]


def cached_on_disk(name: str, make: Callable[[], ImageSet]) -> ImageSet:
    """``make()``, kept in ``cache_dir()/<name>.pt`` and memory-mapped from there by later
    processes (a deployed node starts one per message: opening takes milliseconds)."""
    path = cache_dir() / f"{name}.pt"
    if path.exists():
        try:
            data = torch.load(path, weights_only=True, mmap=True)
            return ImageSet(data["images"], data["labels"], tuple(data["classes"]))
        except (OSError, RuntimeError, KeyError, EOFError):
            pass  # unreadable: make it again and rewrite it
    result = make()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"images": result.images, "labels": result.labels, "classes": list(result.classes)}, tmp)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("Could not cache %s in %s (%s); set %s", name, path.parent, err, CACHE_ENV)
    return result


def _folder_key(samples: list[tuple[str, int]], image_size: int, bad_images: str) -> str:
    digest = hashlib.sha256(f"{image_size} {bad_images}".encode())
    for path, label in samples:
        stat = os.stat(path)
        digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _load_folder(root: str, split: str, image_size: int, bad_images: str = "skip") -> ImageSet:
    """``root/split`` as an ImageSet (see :func:`read_folder`)."""
    return read_folder(root, split, image_size, bad_images)[0]


@functools.lru_cache(maxsize=4)
def read_folder(root: str, split: str, image_size: int, bad_images: str = "skip") -> tuple[ImageSet, tuple[str, ...]]:
    """(``root/split`` as an ImageSet, the paths of the files that could not be decoded).

    Unreadable files are skipped with one warning naming the count and the first few
    (``bad_images="skip"``), or fail the load (``"fail"``); a folder with no readable image
    fails either way. The decoded tensors are cached (see :data:`CACHE_ENV`)."""
    from torchvision.datasets import ImageFolder

    if bad_images not in BAD_IMAGES:
        raise ValueError(f"bad-images must be one of {', '.join(BAD_IMAGES)}; got {bad_images!r}")
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
    cached = cache_dir() / f"folder-{_folder_key(tree.samples, image_size, bad_images)}.pt"
    if cached.exists():
        try:
            data = torch.load(cached, weights_only=True, mmap=True)
            failed = tuple(data.get("failed", ()))
            return ImageSet(data["images"], data["labels"], tuple(tree.classes)), failed
        except (OSError, RuntimeError, KeyError, EOFError):
            pass  # unreadable cache: decode again and rewrite it
    images, keep, failed = _decode(tree.samples, image_size, bad_images, folder)
    labels = torch.tensor([tree.samples[i][1] for i in keep], dtype=torch.long)
    result = ImageSet(torch.from_numpy(images[keep]).permute(0, 3, 1, 2).contiguous(), labels, tuple(tree.classes))
    if failed:
        log.warning(
            "Skipped %d unreadable image(s) of %d in %s (bad-images=skip): %s%s",
            len(failed), len(tree.samples), folder, ", ".join(failed[:3]), ", ..." if len(failed) > 3 else "",
        )
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"images": result.images, "labels": result.labels, "failed": list(failed)}, tmp)
        os.replace(tmp, cached)
    except OSError as err:  # a read-only home: every process decodes again, and says why
        log.warning("Could not cache decoded images in %s (%s); set %s", cached.parent, err, CACHE_ENV)
    return result, tuple(failed)


def _decode(samples: list[tuple[str, int]], image_size: int, bad_images: str, folder: Path):
    """(uint8 array (N, size, size, 3), indices decoded, paths that failed)."""
    from PIL import Image, UnidentifiedImageError

    images = np.empty((len(samples), image_size, image_size, 3), dtype=np.uint8)
    keep, failed = [], []
    last = time.monotonic()
    for i, (path, _) in enumerate(samples):
        if time.monotonic() - last > PROGRESS_SECONDS:
            log.info("Decoding %s: %d of %d images", folder, i, len(samples))
            last = time.monotonic()
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as err:
            if bad_images == "fail":
                raise DataError(f"could not decode image {path!r} (bad-images=fail): {err}") from err
            failed.append(path)
            continue
        if rgb.size != (image_size, image_size):
            # Resize the short side, then centre-crop: the usual ImageFolder preprocessing.
            scale = image_size / min(rgb.size)
            w, h = max(image_size, round(rgb.width * scale)), max(image_size, round(rgb.height * scale))
            rgb = rgb.resize((w, h), Image.BILINEAR)
            left, top = (w - image_size) // 2, (h - image_size) // 2
            rgb = rgb.crop((left, top, left + image_size, top + image_size))
        images[i] = np.asarray(rgb)
        keep.append(i)
    if not keep:
        raise DataError(
            f"none of the {len(samples)} files under {str(folder)!r} could be decoded as an image "
            f"(first: {failed[0] if failed else '-'})"
        )
    return images, keep, failed


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
def cached_dataset(
    name: str, split: str, data_dir: str | None, seed: int, bad_images: str = "skip", image_size: int = 32
) -> ImageSet:
    """:func:`load_dataset` once per process (simulated clients share a worker process)."""
    return load_dataset(name, split, data_dir or None, image_size=image_size, seed=seed, bad_images=bad_images)


def client_partition(
    name: str,
    data_dir: str | None,
    partition_id: int,
    num_partitions: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    bad_images: str = "skip",
    image_size: int = 32,
) -> tuple[ImageSet, ImageSet]:
    """(local training set, held-out set) of one client: its partition, 10% held out."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"node-config partition-id={partition_id} must be in [0, num-partitions={num_partitions})"
        )
    train = cached_dataset(name, "train", data_dir, seed, bad_images, image_size)
    part = partition_indices(train.labels, num_partitions, scheme, alpha, seed)[partition_id]
    if len(part) < 2:
        raise DataError(
            f"partition {partition_id} of {num_partitions} holds {len(part)} images; "
            "use fewer partitions or a larger dirichlet-alpha"
        )
    held = max(1, int(len(part) * HOLDOUT_FRACTION))
    return train.subset(part[held:]), train.subset(part[:held])
