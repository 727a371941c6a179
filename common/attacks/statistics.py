"""Attacks 6 and 7: what every in-region shuffle leaves intact, used as a fingerprint.

The features are :func:`common.visualmixer.invariants.region_statistics`: each region's
multiset of values, which no in-region shuffle changes, made blind to region moves by
:func:`~common.visualmixer.invariants.group_invariant` for an attacker who knows the scope.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from common.defaults import default_region_size

from ..visualmixer.invariants import group_invariant, region_statistics


class StatisticsClassifier(nn.Module):
    """Region statistics -> an MLP. Its input is uint8 or [0, 1] images, like any recogniser."""

    def __init__(self, in_features: int, num_classes: int, region_size: int, chromatic: bool, region_scope: int) -> None:
        super().__init__()
        self.region_size, self.chromatic, self.region_scope = region_size, chromatic, region_scope
        self.head = nn.Sequential(
            nn.Linear(in_features, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, num_classes)
        )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return group_invariant(region_statistics(images, self.region_size, self.chromatic), self.region_scope)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_statistics_classifier(
    public_images: torch.Tensor,
    public_labels: torch.Tensor,
    num_classes: int,
    region_size: int | None = None,
    chromatic: bool = True,
    region_scope: int = 1,
    steps: int = 2000,
    batch_size: int = 128,
    seed: int = 0,
) -> StatisticsClassifier:
    """A classifier on shuffle-invariant region statistics of labelled public images.

    Attacker knows: the algorithm and its public settings (region size, chromatic, scope),
    and labelled images of the victims' kind; trains on features no in-region shuffle
    changes, so what it learns on clean images transfers to obfuscated ones whenever
    regions stay in place. Pass obfuscated public images to train the adaptive version
    that also learns what region moves leave (the caller obfuscates them).
    """
    torch.manual_seed(seed)
    region_size = region_size or default_region_size(*public_images.shape[-2:])
    probe = StatisticsClassifier(1, num_classes, region_size, chromatic, region_scope)
    with torch.no_grad():
        features = torch.cat([probe.features(public_images[i : i + 1024]) for i in range(0, len(public_images), 1024)])
    mean, std = features.mean(0), features.std(0).clamp_min(1e-4)
    net = StatisticsClassifier(features.shape[1], num_classes, region_size, chromatic, region_scope)
    optimizer = torch.optim.Adam(net.head.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    normalised = (features - mean) / std
    net.train()
    for _ in range(steps):
        index = torch.randint(0, len(normalised), (min(batch_size, len(normalised)),), generator=generator)
        loss = F.cross_entropy(net.head(normalised[index]), public_labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    # Fold the standardisation into the first layer: the classifier takes images as they come.
    with torch.no_grad():
        first = net.head[0]
        first.bias -= first.weight @ (mean / std)
        first.weight /= std
    return net.eval()


@torch.no_grad()
def link_originals(
    obfuscated: torch.Tensor,
    candidates: torch.Tensor,
    region_size: int | None = None,
    chromatic: bool = True,
    region_scope: int = 1,
) -> torch.Tensor:
    """For each obfuscated image, the index of the candidate original it came from.

    Attacker knows: a pool of candidate originals that holds the true one (a photo it
    already has), and the public settings. Every noise-free shuffle keeps the set of
    region multisets, so the nearest candidate in shuffle-invariant (and, with the scope,
    move-invariant) statistics is the original whenever the pool has no near-duplicate.
    """
    query = group_invariant(region_statistics(obfuscated, region_size, chromatic), region_scope)
    pool = torch.cat([
        group_invariant(region_statistics(candidates[i : i + 1024], region_size, chromatic), region_scope)
        for i in range(0, len(candidates), 1024)
    ])
    return torch.cdist(query, pool).argmin(1)
