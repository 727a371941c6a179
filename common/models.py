"""Image classifiers, each a sequence of stages with a documented split-learning cut.

Every model is an ``nn.Sequential`` of stages, so the first ``cut`` stages can run on the
edge client and the rest on the server (:func:`split_model`). None uses BatchNorm, so Opacus
DP-SGD can train the same architecture: the small CNN and the region-invariant model have
no normalisation layer, ResNet-18 uses GroupNorm. Each model's first stage standardises every
image by its own mean and deviation (``input_norm``, :func:`standardize_images`).

* ``small-cnn``: 3 conv stages (32, 64, 128 channels, each conv-ReLU-maxpool, no normalisation)
  and a 2-layer head; ~0.4M parameters, trains well above chance within a minute on 2 CPU cores.
  Default cut 1: the client runs the first conv stage and sends (32, S/2, S/2) activations
  for S x S images. The head average-pools the last stage to 4x4 first, so the parameters
  are the same at every image size (at 32x32 that pooling does nothing).
* ``resnet18-gn``: ResNet-18 with GroupNorm; 11M parameters. Up to 64x64 it has the CIFAR
  stem (3x3 conv, no max-pool); above, the ImageNet stem (7x7 conv with stride 2, then a
  3x3 max-pool), as torchvision's ResNet-18. Default cut 1: the client runs the stem and
  sends (64, 32, 32) activations at 32x32, (64, 56, 56) at 224x224.
* ``region-invariant``: built for obfuscated images. Its stem reads, per region of the
  run's ``region-size``, only what no in-region shuffle changes (the region's sorted
  values per channel at 17 quantiles, mean and spread, channels as a set:
  :func:`~common.visualmixer.invariants.region_statistics`), then a 1x1 conv; two 3x3 conv
  stages work on the grid of regions and a 2-layer head classifies. An in-region shuffle
  changes neither its input nor its output (up to float rounding), so the shuffle costs it
  nothing; it cannot see the arrangement inside a region, on clean images either. ~0.8M
  parameters. Default cut 1: the client sends (128, S/r, S/r) activations.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn

from .defaults import default_region_size
from .visualmixer.invariants import region_statistics

# What a model does to its [0, 1] input before its first layer (the ``input-norm`` key):
# ``image`` standardises each image by the mean and deviation of all its values, channels
# together; ``none`` leaves it as it is.
INPUT_NORMS = ("image", "none")
DEFAULT_INPUT_NORM = "image"
STANDARDIZE_EPS = 1e-2  # added to the deviation: a flat image maps to zeros, not to noise


def standardize_images(x: torch.Tensor) -> torch.Tensor:
    r"""Per image, :math:`(x - \mu) / (\sigma + \epsilon)` with :math:`\mu, \sigma` the mean
    and deviation of all its C x H x W values.

    Both are the same for any permutation of an image's values, so the map commutes with
    every VisualMixer shuffle (in-region, chromatic, region moves): standardising an
    obfuscated image gives the obfuscation of the standardised image. It needs no data-set
    statistics, so nothing about a node's data is stored in the model or uploaded."""
    flat = x.flatten(1)
    mean = flat.mean(1)
    std = flat.std(1, correction=0)
    shape = (-1,) + (1,) * (x.dim() - 1)
    return (x - mean.view(shape)) / (std.view(shape) + STANDARDIZE_EPS)


class InputStage(nn.Sequential):
    """A model's first stage: its layers after the input normalisation (``input_norm``).
    Parameter-free, so the state dict is that of a plain ``nn.Sequential``."""

    def __init__(self, *layers: nn.Module, input_norm: str = DEFAULT_INPUT_NORM) -> None:
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input-norm must be one of {', '.join(INPUT_NORMS)}; got {input_norm!r}")
        super().__init__(*layers)
        self.input_norm = input_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(standardize_images(x) if self.input_norm == "image" else x)

    def extra_repr(self) -> str:
        return f"input_norm={self.input_norm!r}"


def _conv_stage(cin: int, cout: int) -> nn.Sequential:
    # ReLU not in place: Opacus' per-sample gradient hooks cannot follow in-place ops.
    # No normalisation layer: on obfuscated inputs GroupNorm kept the small CNN on its
    # initial loss plateau longer.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def small_cnn(
    in_channels: int = 3, num_classes: int = 10, image_size: int = 32, input_norm: str = DEFAULT_INPUT_NORM
) -> nn.Sequential:
    return nn.Sequential(
        InputStage(*_conv_stage(in_channels, 32), input_norm=input_norm),
        _conv_stage(32, 64),
        _conv_stage(64, 128),
        nn.Sequential(
            # One module for pool and flatten keeps the head's parameter names those of the
            # 32x32 model, where the pooling is an identity.
            nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten()),
            nn.Linear(128 * 4 * 4, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        ),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(32, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(32, cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(32, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


IMAGENET_STEM_ABOVE = 64  # image side above which ResNet-18 downsamples in its stem


def resnet18_gn(
    in_channels: int = 3, num_classes: int = 10, image_size: int = 32, input_norm: str = DEFAULT_INPUT_NORM
) -> nn.Sequential:
    def layer(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))

    if image_size > IMAGENET_STEM_ABOVE:
        # Full-resolution 3x3 stages at 224x224 would cost ~50x the compute of 32x32.
        stem = InputStage(
            nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.GroupNorm(32, 64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
            input_norm=input_norm,
        )
    else:
        stem = InputStage(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.GroupNorm(32, 64), nn.ReLU(), input_norm=input_norm
        )
    return nn.Sequential(
        stem,
        layer(64, 64, 1),
        layer(64, 128, 2),
        layer(128, 256, 2),
        layer(256, 512, 2),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)),
    )


INVARIANT_QUANTILES = tuple(i / 16 for i in range(17))


class RegionDescriptors(nn.Module):
    """(B, C, H, W) images -> (B, C * 19, H/r, W/r): each region's multiset of values per
    channel (17 quantiles, mean, std), channels as a set; parameter-free. Inputs are model
    inputs (floats in [0, 1])."""

    def __init__(self, region_size: int) -> None:
        super().__init__()
        self.region_size = region_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return region_statistics(x, self.region_size, True, INVARIANT_QUANTILES).permute(0, 3, 1, 2).contiguous()


def region_invariant(
    in_channels: int = 3, num_classes: int = 10, image_size: int = 32, region_size: int = 0,
    input_norm: str = DEFAULT_INPUT_NORM,
) -> nn.Sequential:
    region = region_size or default_region_size(image_size)
    features = in_channels * (len(INVARIANT_QUANTILES) + 2)
    return nn.Sequential(
        InputStage(RegionDescriptors(region), nn.Conv2d(features, 128, 1), nn.ReLU(), input_norm=input_norm),
        nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU()),
        nn.Sequential(
            nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten()),
            nn.Linear(128 * 4 * 4, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        ),
    )


# The models by run-config name.
MODELS: dict[str, Callable[..., nn.Sequential]] = {
    "small-cnn": small_cnn,
    "resnet18-gn": resnet18_gn,
    "region-invariant": region_invariant,
}


def build_model(
    name: str, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, region_size: int = 0,
    input_norm: str = DEFAULT_INPUT_NORM,
) -> nn.Sequential:
    """A fresh model by name (see :data:`MODELS`) for ``image_size`` x ``image_size`` inputs;
    ``region_size`` (0 = the default for the size) matters to ``region-invariant`` only;
    ``input_norm``: see :data:`INPUT_NORMS`."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
    if name == "region-invariant":
        return region_invariant(in_channels, num_classes, image_size, region_size, input_norm)
    return MODELS[name](in_channels, num_classes, image_size, input_norm)


def split_model(model: nn.Sequential, cut: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(client part, server part): the first ``cut`` stages and the rest, sharing parameters."""
    if not 1 <= cut < len(model):
        raise ValueError(f"cut must be in [1, {len(model) - 1}] for this model, got {cut}")
    return model[:cut], model[cut:]


@lru_cache(maxsize=None)
def num_stages(name: str) -> int:
    """How many stages model ``name`` has (a split-learning cut is in [1, stages - 1]).

    Built on the ``meta`` device: no weights are allocated or initialised, since a deployed
    node parses its run config in a fresh process for every message."""
    with torch.device("meta"):
        return len(build_model(name))
