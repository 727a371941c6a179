"""Attacks 6 and 7: what every in-region shuffle leaves intact, used as a fingerprint.

A VisualMixer shuffle permutes values inside a region (per channel, and with ``chromatic``
also the channel order of the region) and adds no noise, so each region keeps its
multiset of values. :func:`region_statistics` reads exactly that multiset: per region and
channel a few order statistics (quantiles of the sorted values), the mean and the spread,
with the channels of a region taken as a set (ordered by their sum) when the shuffle is
chromatic. Any in-region shuffle leaves these features bit for bit the same; only moving
regions (``region_scope`` != 1) changes where they sit, and a grouping step
(:func:`group_invariant`) removes even that for an attacker who knows the scope.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .metrics import as_unit

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def region_statistics(
    images: torch.Tensor, region_size: int = 8, chromatic: bool = True, quantiles: tuple[float, ...] = QUANTILES
) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/r, W/r, C * (len(quantiles) + 2)) region descriptors.

    For region R and channel c: ``sorted(R_c)`` at the given quantiles (nearest rank),
    then mean(R_c) and std(R_c). With ``chromatic`` the C channel descriptors of a region
    are put in a canonical order (:func:`_sort_key`), a set over channels, since the
    shuffle may have swapped them.
    """
    x = as_unit(images)
    b, c, h, w = x.shape
    r = region_size
    # (B, C, gh, gw, r*r): every region's values, then sorted: the multiset itself.
    values = x.unfold(2, r, r).unfold(3, r, r).reshape(b, c, h // r, w // r, r * r).sort(-1).values
    index = torch.tensor([round(q * (r * r - 1)) for q in quantiles], device=x.device)
    described = torch.cat(
        [values.index_select(-1, index), values.mean(-1, keepdim=True), values.std(-1, keepdim=True)], -1
    )  # (B, C, gh, gw, D)
    described = described.permute(0, 2, 3, 1, 4)  # (B, gh, gw, C, D)
    if chromatic:
        order = _sort_key(described).argsort(dim=-1, stable=True)
        described = described.gather(3, order[..., None].expand_as(described))
    return described.flatten(3)


def group_invariant(features: torch.Tensor, region_scope: int) -> torch.Tensor:
    """Region descriptors (B, gh, gw, D) made blind to moves inside ``region_scope`` groups.

    Scope 1: unchanged. Scope k: inside every k x k group of regions (aligned as the
    transform groups them) the descriptors are put in a canonical order (:func:`_sort_key`),
    so any permutation of regions within a group gives the
    same features. Scope 0: one group, the whole grid. -> (B, F).
    """
    b, gh, gw, d = features.shape
    if region_scope == 1:
        return features.flatten(1)
    if region_scope == 0:
        groups = features.reshape(b, 1, gh * gw, d)
    else:
        k = region_scope
        groups = features.reshape(b, gh // k, k, gw // k, k, d).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, k * k, d)
    order = _sort_key(groups).argsort(dim=-1, stable=True)
    return groups.gather(2, order[..., None].expand_as(groups)).flatten(1)


def _sort_key(descriptors: torch.Tensor) -> torch.Tensor:
    """One number per descriptor (last dim) to order a set of them canonically: a fixed
    weighted sum of all its components, so two descriptors tie only when they are equal
    (then their order does not matter), not merely when their means do."""
    weights = 1.0 + torch.arange(descriptors.shape[-1], device=descriptors.device, dtype=descriptors.dtype) * 0.7071
    return (descriptors * weights).sum(-1)


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
    region_size: int = 8,
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
    region_size: int = 8,
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
