"""Attack 5: can a machine still recognise it?"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from torch import nn

from ..augment import flip_and_shift
from ..models import build_model
from ..training import make_optimizer, train_steps


def train_recogniser(
    public_images: torch.Tensor,
    public_labels: torch.Tensor,
    num_classes: int,
    steps: int = 1000,
    batch_size: int = 64,
    model: str = "small-cnn",
    device: torch.device | str = "cpu",
    seed: int = 0,
    augment: bool = False,
    learning_rate: float = 1e-3,
) -> nn.Module:
    """A classifier trained on clean public images of the same kind (uint8).

    ``augment``: each batch is flipped and shifted at random (:func:`flip_and_shift`), the
    usual CIFAR recipe; it takes a small CNN from about 0.4 to well above on CIFAR-10
    given enough steps, and an attack is only as telling as its recogniser.

    Attacker knows: labelled public images from the victims' distribution, none of them
    the victims'. Its accuracy on a set of images (obfuscated, or an attack's
    reconstructions) is how well a machine recognises them; chance is 1/classes
    (McPherson et al., "Defeating image obfuscation with deep learning").
    """
    torch.manual_seed(seed)
    net = build_model(model, public_images.shape[1], num_classes).to(device)
    optimizer = make_optimizer("adam", net.parameters(), learning_rate)
    generator = torch.Generator().manual_seed(seed)
    # Cosine decay to zero: the last steps settle instead of bouncing at the full rate.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(1, steps)))
    )
    augmenter = (lambda x: flip_and_shift(x, generator=generator)) if augment else None
    chunk = 200
    for start in range(0, steps, chunk):
        train_steps(net, public_images, public_labels, optimizer, min(chunk, steps - start), batch_size,
                    mixer=augmenter, device=device, generator=generator)
        for _ in range(min(chunk, steps - start)):
            schedule.step()
    return net.eval()


def cached_recogniser(
    cache_dir: Path, public_images: torch.Tensor, public_labels: torch.Tensor, num_classes: int, **settings
) -> tuple[nn.Module, bool]:
    """:func:`train_recogniser` once per (images, labels, settings): the weights are kept in
    ``cache_dir/recogniser-<hash>.pt`` and loaded when everything matches; (model, reused).
    A strong recogniser takes minutes on a CPU, and every comparison on the same public
    images and settings needs the same one."""
    digest = hashlib.sha256()
    digest.update(json.dumps({k: str(v) for k, v in sorted(settings.items()) if k != "device"}).encode())
    digest.update(str(num_classes).encode())
    for tensor in (public_images, public_labels):
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    path = Path(cache_dir) / f"recogniser-{digest.hexdigest()[:16]}.pt"
    net = build_model(settings.get("model", "small-cnn"), public_images.shape[1], num_classes)
    if path.exists():
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval(), True
    net = train_recogniser(public_images, public_labels, num_classes, **settings).cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    torch.save(net.state_dict(), partial)
    partial.replace(path)  # a crash mid-write leaves no half file under the real name
    return net.eval(), False


@torch.no_grad()
def recognition_accuracy(
    recogniser: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device | str = "cpu"
) -> float:
    """Fraction of ``images`` (uint8, or float in [0, 1]) the recogniser labels correctly."""
    from .metrics import as_unit

    correct = 0
    for start in range(0, len(images), 512):
        x = as_unit(images[start : start + 512]).to(device)
        correct += int((recogniser(x).argmax(1).cpu() == labels[start : start + 512]).sum())
    return correct / max(1, len(images))


