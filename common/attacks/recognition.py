"""Attack 5: can a machine still recognise it?"""

from __future__ import annotations


import torch
from torch import nn

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
) -> nn.Module:
    """A classifier trained on clean public images of the same kind (uint8).

    Attacker knows: labelled public images from the victims' distribution, none of them
    the victims'. Its accuracy on a set of images (obfuscated, or an attack's
    reconstructions) is how well a machine recognises them; chance is 1/classes
    (McPherson et al., "Defeating image obfuscation with deep learning").
    """
    torch.manual_seed(seed)
    net = build_model(model, public_images.shape[1], num_classes).to(device)
    optimizer = make_optimizer("adam", net.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(seed)
    train_steps(net, public_images, public_labels, optimizer, steps, batch_size, device=device, generator=generator)
    return net.eval()


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


