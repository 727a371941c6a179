"""Models for 32x32 inputs, each a sequence of stages with a documented split-learning cut.

Both models are ``nn.Sequential`` of stages, so the first ``cut`` stages can run on the edge
client and the rest on the server (:func:`split_model`). Neither uses BatchNorm, so Opacus
DP-SGD can train the same architecture: the small CNN has no normalisation layer,
ResNet-18 uses GroupNorm.

* ``small-cnn``: 3 conv stages (32, 64, 128 channels, each conv-ReLU-maxpool, no normalisation)
  and a 2-layer head; ~0.4M parameters, trains well above chance within a minute on 2 CPU cores.
  Default cut 1: the client runs the first conv stage and sends (32, 16, 16) activations.
* ``resnet18-gn``: ResNet-18 for 32x32 (3x3 stem, no max-pool) with GroupNorm; 11M
  parameters. Default cut 1: the client runs the stem and sends (64, 32, 32) activations.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn


def _conv_stage(cin: int, cout: int) -> nn.Sequential:
    # ReLU not in place: Opacus' per-sample gradient hooks cannot follow in-place ops.
    # No normalisation layer: on obfuscated inputs GroupNorm kept the small CNN on its
    # initial loss plateau several times longer (measured on `shapes`, batch 32, Adam 1e-3).
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def small_cnn(in_channels: int = 3, num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        _conv_stage(in_channels, 32),
        _conv_stage(32, 64),
        _conv_stage(64, 128),
        nn.Sequential(
            nn.Flatten(),
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


def resnet18_gn(in_channels: int = 3, num_classes: int = 10) -> nn.Sequential:
    def layer(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))

    return nn.Sequential(
        nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.GroupNorm(32, 64), nn.ReLU()
        ),
        layer(64, 64, 1),
        layer(64, 128, 2),
        layer(128, 256, 2),
        layer(256, 512, 2),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)),
    )


# The models by run-config name.
MODELS: dict[str, Callable[[int, int], nn.Sequential]] = {
    "small-cnn": small_cnn,
    "resnet18-gn": resnet18_gn,
}


def build_model(name: str, in_channels: int = 3, num_classes: int = 10) -> nn.Sequential:
    """A fresh model by name (see :data:`MODELS`)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
    return MODELS[name](in_channels, num_classes)


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
