"""Adaptive recognisers: attackers who know VisualMixer and its settings (Kerckhoffs) and
train on what they will see, instead of on ordinary images.

* :func:`train_mosaic_recogniser`       learns on region-mean mosaics of clean public images
* :func:`train_obfuscation_recogniser`  learns on public images obfuscated with the
  published algorithm and settings (fresh seeds)

Each returns a module that takes the observed (obfuscated) images directly, like any
recogniser, so :func:`~common.attacks.recognition.recognition_accuracy` scores it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from common.defaults import default_region_size

from .mosaic import mosaic_attack
from .recognition import train_recogniser


class MosaicRecogniser(nn.Module):
    """Mosaic of the input (region means, grey when chromatic), then a classifier."""

    def __init__(self, classifier: nn.Module, region_size: int, chromatic: bool) -> None:
        super().__init__()
        self.classifier, self.region_size, self.chromatic = classifier, region_size, chromatic

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(mosaic_attack(images, self.region_size, self.chromatic))


def train_mosaic_recogniser(
    public_images: torch.Tensor,
    public_labels: torch.Tensor,
    num_classes: int,
    region_size: int | None = None,
    chromatic: bool = True,
    **train: object,
) -> MosaicRecogniser:
    """A recogniser trained on mosaics of clean public images, applied to the mosaics of
    obfuscated ones.

    Attacker knows: labelled public images of the victims' kind and the region size. A
    clean-trained recogniser sees a mosaic as an odd, blocky image; one trained on mosaics
    knows what classes look like at that resolution. Region moves (``region_scope``)
    scramble the mosaic it reads. ``train``: :func:`train_recogniser`'s settings.
    """
    region_size = region_size or default_region_size(*public_images.shape[-2:])
    mosaics = torch.cat([mosaic_attack(public_images[i : i + 1024], region_size, chromatic)
                         for i in range(0, len(public_images), 1024)])
    classifier = train_recogniser(mosaics, public_labels, num_classes, **train).cpu()
    return MosaicRecogniser(classifier, region_size, chromatic).eval()


def train_obfuscation_recogniser(
    public_images: torch.Tensor,
    public_labels: torch.Tensor,
    num_classes: int,
    obfuscate: Callable[[torch.Tensor, int], torch.Tensor],
    draws: int = 2,
    **train: object,
) -> nn.Module:
    """A recogniser trained on public images obfuscated as the victims' are.

    Attacker knows: labelled public images and the published algorithm and settings;
    ``obfuscate(images, seed)`` applies them with a seed of its own (``draws`` fresh
    obfuscations of every public image). For the labels of the task the defense is
    meant to allow, this is by construction about as good as the model the server trains:
    VisualMixer does not hide the task label from a machine that learns on obfuscated data.
    Augmentation is left off: a shift moves pixels across region borders, which no
    obfuscated image shows. ``train``: :func:`train_recogniser`'s settings.
    """
    train = {**train, "augment": False}
    images = torch.cat([obfuscate(public_images, 10_000 + draw) for draw in range(draws)])
    labels = public_labels.repeat(draws)
    return train_recogniser(images, labels, num_classes, **train).cpu()
