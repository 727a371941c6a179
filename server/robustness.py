"""Bounds that keep one node from taking over a round, relative to what the round's other
nodes send (plain PyTorch, no Flower types).

Every bound is a multiple of the round's *lower median*: the middle value, or the smaller
of the two middle ones. With n replies of which fewer than half are hostile, the lower
median is an honest node's value, so a hostile node cannot move it (with two replies, it is
the smaller one).

* Updates (``weights``, and the client layers acknowledged in split learning): a reply's
  update ``u = w - w_global`` is scaled to norm ``update-clip x median ||u||`` when longer
  (norm bounding, Sun et al. 2019, "Can you really backdoor federated learning?").
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


def clip_update(
    state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], norm: float, bound: float
) -> dict[str, torch.Tensor]:
    """``reference + (state - reference) * bound / norm``: the update scaled to norm ``bound``;
    integer tensors as ``state`` has them."""
    scale = bound / norm
    return {
        key: (ref.double() + (state[key].double() - ref.double()) * scale).to(ref.dtype) if ref.is_floating_point()
        else state[key]
        for key, ref in reference.items()
    }


def per_sample_norm(activations: torch.Tensor) -> float:
    """The median L2 norm of one sample's activations in an upload."""
    return float(activations.flatten(1).double().norm(dim=1).median())


def fair_counts(counts: Sequence[int], share: float) -> list[int]:
    """Each count, at most ``share`` x the lower median count (``share`` 0: as they are)."""
    if not share or not counts:
        return list(counts)
    cap = max(1, int(share * lower_median(counts)))
    return [min(count, cap) for count in counts]
