"""Functional core of VisualMixer: ``obfuscate(images, ...) -> Obfuscation``.

The closed loop: plan from the originals (``plan.py``), shuffle (``shuffle.py``), measure
the VFE that was actually achieved, and re-plan the images that fell short with a target
raised by their shortfall. The last attempt puts every region on the finest rung, and each
image keeps the best draw it got, so the reported VFE is always the measured one: at or
above the target, or the highest this loop could reach when the target is out of reach.

On CUDA the first attempt is replayed as a CUDA graph once its batch shape comes back
(``_graphs.py``; ``VISUALMIXER_CUDA_GRAPHS=0`` turns this off): it is where almost every
call ends, and its ~250 operators cost far more to dispatch than to run. The retries stay
eager.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import NamedTuple

import torch

from ..defaults import default_region_size
from . import _graphs
from ._checks import (
    as_batch,
    check_block_sizes,
    check_importance,
    check_region_scope,
    check_region_size,
    check_target_vfe,
)
from ._layout import from_regions, to_regions
from .plan import gradient_importance, plan_rungs, saliency_importance
from .shuffle import make_generator, shuffle_regions
from .vfe import RegionStats, shuffled_image_vfe, stats_of_regions

# Plans aim above the target so that most images pass the first check. An image's VFE is a
# mean over its non-flat (channel, region) pairs, each set by an independent draw, so its
# spread around the plan's prediction shrinks as 1/sqrt(pairs): the margin follows it
# (0.03 for a 32x32 RGB image with 48 pairs, 0.004 for 224x224 with 2,352), never below
# MIN_PLAN_MARGIN.
PLAN_MARGIN_PER_PAIR = 0.21
MIN_PLAN_MARGIN = 0.002
ATTEMPTS = 4


def plan_margin(valid_pairs: torch.Tensor) -> torch.Tensor:
    """(B,) how far above the target each image's plan aims, from its count of non-flat
    (channel, region) pairs."""
    return (PLAN_MARGIN_PER_PAIR / valid_pairs.clamp_min(1).float().sqrt()).clamp_min(MIN_PLAN_MARGIN)


@dataclass(frozen=True)
class Obfuscation:
    """What :func:`obfuscate` returns for a batch of B images with an (nh, nw) region grid."""

    images: torch.Tensor  # same shape, dtype and device as the input
    vfe: torch.Tensor  # (B,) VFE measured on the returned images
    block_size: torch.Tensor  # (B, nh, nw) block side used in each region (= region_size: untouched)
    met_target: torch.Tensor  # (B,) bool, vfe >= target_vfe
    # Shuffles drawn for the batch: 1 when every image met the target on its first draw, up
    # to ATTEMPTS. A later attempt re-plans only the images that fell short, yet costs a
    # fixed number of operators whatever their number (simulations.bench.retries).
    attempts: int = 1


class Plan(NamedTuple):
    """The first attempt's plan for a batch of B images with N regions of side r."""

    regions: torch.Tensor  # (B, C, N, r, r) the originals, region by region
    variance: torch.Tensor  # (B, C, N) unbiased variance of each region
    gap_energy: torch.Tensor  # (B, C, N, r-1) squared differences of the pairs across each gap
    valid: torch.Tensor  # (B, C, N) bool, the region is not flat
    weights: torch.Tensor  # (B, N) importance of each region
    margin: torch.Tensor  # (B,) how far above the target each image's plan aims
    goal: torch.Tensor  # (B,) target + margin
    rungs: torch.Tensor  # (B, N) rung of the ladder chosen for each region


class FirstAttempt(NamedTuple):
    """:class:`Plan`'s fields, then the shuffled regions and their measured VFE (flat, since
    a CUDA graph records a flat tuple of tensors)."""

    regions: torch.Tensor
    variance: torch.Tensor
    gap_energy: torch.Tensor
    valid: torch.Tensor
    weights: torch.Tensor
    margin: torch.Tensor
    goal: torch.Tensor
    rungs: torch.Tensor
    shuffled: torch.Tensor  # (B, C, N, r, r), in the "shuffled" scratch buffer
    vfe: torch.Tensor  # (B,) measured on the shuffled images


@torch.no_grad()
def obfuscate(
    images: torch.Tensor,
    target_vfe: float,
    region_size: int | None = None,
    block_sizes: tuple[int, ...] | None = None,
    chromatic: bool = True,
    region_scope: int = 1,
    importance: str | torch.nn.Module = "gradient",
    seed: int | None = None,
) -> Obfuscation:
    """Shuffle each image inside its regions until its VFE reaches ``target_vfe``.

    Accepts (C, H, W) or (B, C, H, W), uint8 (0..255) or float (0..1), on CPU or CUDA;
    a single image comes back as a single image. See :class:`VisualMixer` for the arguments.
    """
    batch, single = as_batch(images)
    target = check_target_vfe(target_vfe)
    b, c, h, w = batch.shape
    region_size = region_size or default_region_size(h, w)
    check_region_size(region_size, h, w)
    grid = (h // region_size, w // region_size)
    scope = check_region_scope(region_scope, grid)
    ladder = check_block_sizes(block_sizes, region_size)

    check_importance(importance)

    n = grid[0] * grid[1]
    graphed = _graphs.enabled(batch.device) and not isinstance(importance, torch.nn.Module)
    first = partial(
        _first_attempt, target=target, region_size=region_size, ladder=ladder, grid=grid,
        chromatic=chromatic, scope=scope, importance=importance, fixed_shapes=graphed,
    )
    # A graph's outputs are overwritten by its next replay: hold the lock while using them.
    with _graphs.LOCK if graphed else nullcontext():
        if graphed:
            static = (target, region_size, ladder, chromatic, scope)
            outputs, generator = _graphs.run("first attempt", static, first, (batch,), seed)
        else:
            generator = make_generator(seed, batch.device)
            outputs = first(batch, generator=generator)
        attempt_1 = FirstAttempt(*outputs)
        regions, weights, margin, goal = attempt_1.regions, attempt_1.weights, attempt_1.margin, attempt_1.goal
        stats = RegionStats(attempt_1.variance, attempt_1.gap_energy, attempt_1.valid, region_size)
        best, best_vfe, best_rungs = attempt_1.shuffled, attempt_1.vfe, attempt_1.rungs
        if graphed:  # returned to the caller, so it must not be a graph's output
            best_vfe = best_vfe.clone()
        todo = (best_vfe < target).nonzero().flatten()
        finest = len(ladder) - 1
        attempts = 1
        for attempt in range(1, ATTEMPTS):
            if len(todo) == 0:
                break
            attempts += 1
            # Ask more of the images that fell short: raise their goal by the shortfall.
            goal[todo] += target - best_vfe[todo] + margin[todo]
            sub = stats.select(todo)
            if attempt == ATTEMPTS - 1:
                rungs = torch.full((len(todo), n), finest, device=batch.device)
            else:
                rungs = plan_rungs(sub, weights[todo], goal[todo], ladder)
            shuffled, source = shuffle_regions(regions[todo], rungs, ladder, grid, chromatic, scope, generator)
            achieved = _measure(shuffled, source, sub.variance, sub.valid)
            better = achieved > best_vfe[todo]
            keep = todo[better]
            best[keep] = shuffled[better]
            best_vfe[keep] = achieved[better]
            best_rungs[keep] = rungs[better]
            todo = todo[best_vfe[todo] < target]
        images_out = from_regions(best, h, w)
        sizes = _ladder_tensor(ladder, batch.device)[best_rungs].view(b, *grid)  # may read a graph's output
    if single:
        return Obfuscation(images_out[0], best_vfe, sizes, best_vfe >= target, attempts)
    return Obfuscation(images_out, best_vfe, sizes, best_vfe >= target, attempts)


@lru_cache(maxsize=32)
def _ladder_tensor(ladder: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The block sizes as a tensor on ``device``, made once (a host-to-device copy on CUDA)."""
    return torch.tensor(ladder, device=device)


def _first_attempt(
    batch: torch.Tensor,
    *,
    target: float,
    region_size: int,
    ladder: tuple[int, ...],
    grid: tuple[int, int],
    chromatic: bool,
    scope: int,
    importance: str | torch.nn.Module,
    fixed_shapes: bool,
    generator: torch.Generator | None,
) -> FirstAttempt:
    """Plan, shuffle and measure every image once. With ``fixed_shapes`` it never waits for
    the device and no shape depends on the data, so on CUDA it can be recorded as one graph
    (``_graphs.py``)."""
    plan = _plan(batch, target, region_size, ladder, importance)
    shuffled, source = shuffle_regions(
        plan.regions, plan.rungs, ladder, grid, chromatic, scope, generator, "shuffled", fixed_shapes
    )
    return FirstAttempt(*plan, shuffled, _measure(shuffled, source, plan.variance, plan.valid))


def _plan(
    batch: torch.Tensor,
    target: float,
    region_size: int,
    ladder: tuple[int, ...],
    importance: str | torch.nn.Module,
) -> Plan:
    """The first attempt's plan (see :class:`Plan`)."""
    regions = to_regions(batch, region_size)
    stats = stats_of_regions(regions)
    if isinstance(importance, torch.nn.Module):
        weights = saliency_importance(importance, batch, region_size)
    else:
        weights = gradient_importance(stats)
    margin = plan_margin(stats.valid.sum((1, 2)))
    goal = target + margin
    rungs = plan_rungs(stats, weights, goal, ladder)
    return Plan(regions, stats.variance, stats.gap_energy, stats.valid, weights, margin, goal, rungs)


def _measure(
    shuffled: torch.Tensor, source: torch.Tensor, variance: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """(B,) VFE of each shuffled image: a shuffle never changes a region's variance, so it is
    carried over from each output row's source row and only the pair energy is measured."""
    b, c, n = variance.shape
    variance = variance.reshape(b, c * n).gather(1, source).view(b, c, n)
    valid = valid.reshape(b, c * n).gather(1, source).view(b, c, n)
    return shuffled_image_vfe(shuffled, variance, valid)
