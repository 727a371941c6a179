"""Bounds that keep one node from taking over a round, relative to what the round's other
nodes send (plain PyTorch, no Flower types).

Every bound is a multiple of the round's *lower median*: the middle value, or the smaller
of the two middle ones. With n replies of which fewer than half are hostile, the lower
median is an honest node's value, so a hostile node cannot move it (with two replies, it is
the smaller one).

* Updates (``weights``, and the client layers acknowledged in split learning): a reply whose
  update ``u = w - w_global`` is longer than ``update-bound x median ||u||`` is rejected
  (norm bounding, Sun et al. 2019, "Can you really backdoor federated learning?", with the
  bound taken from the round; scaling such an update down to the bound instead still cost
  11 points of accuracy on ``shapes``: docs/deploy.md, "One hostile node").
* Activations (split learning): a reply whose median per-sample norm is above
  ``activation-bound x`` the round's median is rejected.
* Example counts (FedAvg's weights, federated evaluation's average): a claim above
  ``examples-share x`` the round's median is counted as that much.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def lower_median(values: Sequence[float]) -> float:
    """The middle value of ``values``, or the smaller of the two middle ones."""
    if not values:
        raise ValueError("lower_median of no values")
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def update_norm(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of ``state - reference`` over every floating tensor."""
    total = torch.zeros((), dtype=torch.float64)
    for key, ref in reference.items():
        if ref.is_floating_point():
            total += (state[key].double() - ref.double()).square().sum()
    return float(total.sqrt())


def above_bound(values: Sequence[float], multiple: float) -> tuple[float, list[bool]]:
    """(the lower median of ``values``, which of them exceed ``multiple`` x it); ``multiple``
    0 flags none, and so does a median of 0 (nodes that sent the model back unchanged are
    no yardstick for the others)."""
    median = lower_median(values)
    return median, [bool(multiple) and median > 0 and value > multiple * median for value in values]


def per_sample_norm(activations: torch.Tensor) -> float:
    """The median L2 norm of one sample's activations in an upload."""
    return float(activations.flatten(1).double().norm(dim=1).median())


def fair_counts(counts: Sequence[int], share: float) -> list[int]:
    """Each count, at most ``share`` x the lower median count (``share`` 0: as they are)."""
    if not share or not counts:
        return list(counts)
    cap = max(1, int(share * lower_median(counts)))
    return [min(count, cap) for count in counts]
