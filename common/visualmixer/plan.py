r"""Target-driven shuffle plans: which block size each region gets so the image reaches a VFE.

The ladder for region side :math:`r` is rung 0 = left as is, then blocks of
:math:`r/2, r/4, \dots, 1` pixel (finer = more scrambled). Shuffling a region in blocks
of side :math:`b` keeps every pair *inside* a block and makes every pair *across* a block
border a pair of two random pixels of the region, whose expected squared difference is
:math:`2\sigma^2`. So the expected VFE of a region at rung :math:`k` follows from the
original alone, with no trial shuffle:

.. math::

    \widehat{\mathrm{VFE}}_c(R, k) = \frac{S^{\text{in}}_c(R, b_k)}{2P\sigma^2_c(R)}
        + \frac{P^{\text{cross}}(b_k)}{P}, \qquad P^{\text{cross}}(b) = 2r(r/b - 1),

where :math:`S^{\text{in}}` sums the original squared differences of the pairs that stay
inside a block. The plan refines regions greedily: step :math:`(j, k)` (region :math:`j` to
rung :math:`k`) has priority :math:`k - \lambda q_j`, with :math:`q_j \in [0, 1)` the
importance quantile of region :math:`j` and :math:`\lambda` = ``IMPORTANCE_LEAD`` = 2, and
steps are taken in priority order until the predicted image VFE reaches the target. The
most important regions are refined first and run up to two rungs ahead of the least
important ones (edges get pixel-level shuffles while flat background is still in blocks),
yet no region waits for all others to reach the finest rung. Everything is batched: one
sort and one cumulative sum per batch.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..training import to_model_input
from .vfe import RegionStats

IMPORTANCE_LEAD = 2.0


def gradient_importance(stats: RegionStats) -> torch.Tensor:
    """(B, N) "biological" importance: gradient energy of each region, summed over channels.

    Regions dense in edges and texture are what people recognise first.
    """
    return stats.pair_energy.sum(1)


def saliency_importance(
    model: torch.nn.Module, batch: torch.Tensor, region_size: int
) -> torch.Tensor:
    """(B, N) "machine" importance: input-gradient saliency of ``model``'s top logit.

    |d max_logit / d x| summed over channels and each region: where the model looks.
    """
    x = to_model_input(batch).detach().requires_grad_(True)
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(logits.max(dim=1).values.sum(), x)
    model.train(was_training)
    b, c, h, w = grad.shape
    r = region_size
    return grad.abs().sum(1).view(b, h // r, r, w // r, r).sum((2, 4)).reshape(b, -1)


def predicted_region_vfe(stats: RegionStats, block_sizes: tuple[int, ...]) -> torch.Tensor:
    """(B, C, N, K) expected VFE of every (channel, region) at each rung of the ladder.

    Flat regions get 0 (they are excluded from the image mean, see ``vfe.py``).
    """
    r = stats.region_size
    inside, cross = _rung_tables(r, tuple(block_sizes), stats.variance.device)
    energy_inside = stats.gap_energy @ inside  # (B, C, N, K)
    pairs = 2 * r * (r - 1)
    denom = (2.0 * pairs) * stats.variance.clamp_min(1e-30).unsqueeze(-1)
    predicted = energy_inside / denom + cross
    return predicted * stats.valid.unsqueeze(-1)


@lru_cache(maxsize=64)
def _rung_tables(r: int, block_sizes: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(r-1, K) 0/1: gap g stays inside a block at rung k; (K,) share of cross-block pairs."""
    gaps = torch.arange(1, r)  # a gap sits before column `gaps`
    sizes = torch.tensor(block_sizes)
    inside = (gaps.unsqueeze(1) % sizes.unsqueeze(0) != 0).float()
    cross = (2 * r * (r // sizes - 1)).float() / (2 * r * (r - 1))
    return inside.to(device), cross.to(device)


@lru_cache(maxsize=64)
def _step_order(n: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy order of refinement steps, as (importance rank, rung) pairs.

    Priority depends only on a region's importance *rank* and the rung, so the order is the
    same for every image and is computed once per (N, K): only which region holds which rank
    differs per image. Ties go to the lower rung, then to the more important region.
    """
    rank = torch.arange(n).repeat_interleave(k - 1)  # 0 = least important
    rung = torch.arange(1, k).repeat(n)
    # n * priority, exact in float64, so equal priorities compare equal for any n.
    scaled = rung.double() * n - IMPORTANCE_LEAD * rank.double()
    order = torch.from_numpy(np.lexsort((-rank.numpy(), rung.numpy(), scaled.numpy())))
    return rank[order].to(device), rung[order].to(device)


def _by_importance(importance: torch.Tensor) -> torch.Tensor:
    """(B, N) regions from least to most important, ties broken by region index: a stable
    argsort of each row.

    On CPU one numpy sort of packed int64 keys (the float's order-preserving bits above the
    region index) replaces it, the same order at a fraction of the argsort's cost.
    """
    if importance.device.type != "cpu":
        return importance.argsort(dim=1, stable=True)
    n = importance.shape[1]
    bits = max(1, (n - 1).bit_length())
    # IEEE float bits order like integers for x >= 0; flipping the magnitude bits of the
    # negative ones makes the whole line monotone (+ 0.0 turns -0.0 into 0.0 first).
    raw = (importance.float() + 0.0).view(torch.int32)
    raw = torch.where(raw < 0, raw ^ 0x7FFFFFFF, raw).long()
    keys = ((raw << bits) | torch.arange(n)).numpy()
    keys.sort(axis=1)
    return torch.from_numpy(keys & ((1 << bits) - 1))


def plan_rungs(
    stats: RegionStats,
    importance: torch.Tensor,
    target: torch.Tensor,
    block_sizes: tuple[int, ...],
) -> torch.Tensor:
    """(B, N) rung per region (0 = untouched), the shortest greedy prefix reaching ``target``.

    ``target`` is (B,) so the closed loop can ask more of the images that fell short.
    When the target is out of reach every region gets the finest rung.
    """
    predicted = predicted_region_vfe(stats, block_sizes)  # (B, C, N, K)
    b, _, n, k = predicted.shape
    counts = stats.valid.sum((1, 2)).clamp_min(1).float()  # (B,)
    per_region = predicted.sum(1) / counts.view(b, 1, 1)  # (B, N, K) share of the image mean
    base = per_region[..., 0].sum(1)  # (B,) predicted VFE with nothing shuffled
    gains = (per_region[..., 1:] - per_region[..., :-1]).reshape(b, n * (k - 1))

    by_rank = _by_importance(importance)  # (B, N) region holding each importance rank
    step_rank, step_rung = _step_order(n, k, importance.device)
    region_of_step = by_rank[:, step_rank]  # (B, S)
    step_gain = gains.gather(1, region_of_step * (k - 1) + (step_rung - 1))
    reached = base.unsqueeze(1) + step_gain.cumsum(1) >= target.unsqueeze(1)
    # Steps needed = index of the first prefix that reaches the target, plus one.
    steps = n * (k - 1)
    first = torch.where(reached.any(1), reached.float().argmax(1) + 1, steps)
    first = torch.where(base >= target, torch.zeros_like(first), first)
    taken = torch.arange(steps, device=importance.device).unsqueeze(0) < first.unsqueeze(1)
    return torch.zeros(b, n, dtype=torch.long, device=importance.device).scatter_add_(
        1, region_of_step, taken.long()
    )
