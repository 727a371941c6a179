"""The shuffle itself: one ``torch.gather`` driven by an index built from random permutations.

For output image ``b``, channel ``c``, region ``j`` and pixel ``p`` the source is

    channel sigma_{b,j}(c), region rho_b(j), pixel pi_{b,c,j}(p)

* ``pi`` (spatial) permutes the blocks of the region's rung, independently per channel, so a
  pixel's R, G and B values come from different places;
* ``sigma`` (chromatic, optional) permutes the channel order per region;
* ``rho`` (region scope, optional) moves whole regions within k x k groups of regions, so
  the region means (the "mosaic" every in-region shuffle leaves behind) move too.

No value is created or changed, so every output region holds exactly the multiset of values
of its source region, and the uint8 path never leaves uint8.

Drawing an independent uniform permutation of ``r*r`` pixels for every (image, channel,
region) by sorting random keys costs far more than the gather itself. Instead, each call
draws a fresh pool of ``POOL_SIZE`` uniform block permutations per rung and gives every
(image, channel, region) the composition of two pool entries picked at random. A
composition of uniform permutations is uniform, so each region's arrangement is exactly
uniformly distributed; two regions share their whole permutation only if both picks
coincide (probability 1 / POOL_SIZE**2). Nothing is kept after the call.
"""

from __future__ import annotations

import torch

POOL_SIZE = 1024


def _pixel_table(
    block_sizes: tuple[int, ...], region_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """For each rung: block index and in-block offset of every pixel, and the block count."""
    r = region_size
    yy, xx = torch.meshgrid(
        torch.arange(r, device=device), torch.arange(r, device=device), indexing="ij"
    )
    blocks, offsets, counts = [], [], []
    for b in block_sizes:
        per_side = r // b
        blocks.append(((yy // b) * per_side + xx // b).reshape(-1))
        offsets.append(((yy % b) * r + xx % b).reshape(-1))
        counts.append(per_side * per_side)
    return torch.stack(blocks), torch.stack(offsets), counts


def permutation_pool(
    block_sizes: tuple[int, ...],
    region_size: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """(K * POOL_SIZE, r*r) source pixel index within a region, ``POOL_SIZE`` rows per rung.

    Rung 0 (block = region) is the identity.
    """
    r = region_size
    block_of, offset_of, counts = _pixel_table(block_sizes, r, device)
    rows = []
    for k, (b, m) in enumerate(zip(block_sizes, counts)):
        block_perm = torch.rand(POOL_SIZE, m, generator=generator, device=device).argsort(1)
        per_side = r // b
        origin = (block_perm // per_side) * (b * r) + (block_perm % per_side) * b  # (M, m)
        rows.append(origin[:, block_of[k]] + offset_of[k])  # (M, r*r)
    return torch.cat(rows)


def _random_permutations(
    shape: tuple[int, ...], n: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    return torch.rand(*shape, n, generator=generator, device=device).argsort(-1)


def region_permutation(
    batch_size: int,
    grid: tuple[int, int],
    scope: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """(B, N) source region of every output region; identity for scope 1, any for scope 0."""
    nh, nw = grid
    n = nh * nw
    if scope == 1:
        return torch.arange(n, device=device).expand(batch_size, n)
    if scope == 0:
        return _random_permutations((batch_size,), n, generator, device)
    gh, gw = nh // scope, nw // scope
    # Position (a, u) within group (g, v): region (g*scope + a, v*scope + u).
    local = _random_permutations((batch_size, gh, gw), scope * scope, generator, device)
    g = torch.arange(gh, device=device).view(1, gh, 1, 1)
    v = torch.arange(gw, device=device).view(1, 1, gw, 1)
    src_row = g * scope + local // scope
    src_col = v * scope + local % scope
    src = (src_row * nw + src_col).view(batch_size, gh, gw, scope, scope)
    # Lay the groups back out in row-major region order.
    return src.permute(0, 1, 3, 2, 4).reshape(batch_size, n)


def shuffle_regions(
    batch: torch.Tensor,
    rungs: torch.Tensor,
    block_sizes: tuple[int, ...],
    region_size: int,
    chromatic: bool,
    region_scope: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Shuffle a (B, C, H, W) batch following ``rungs`` (B, N); same dtype and device."""
    b, c, h, w = batch.shape
    r = region_size
    nh, nw = h // r, w // r
    n = nh * nw
    device = batch.device
    pool = permutation_pool(block_sizes, r, generator, device)
    picks = torch.randint(
        0, POOL_SIZE, (2, b, c, n), generator=generator, device=device
    ) + (rungs * POOL_SIZE).unsqueeze(1)
    first, second = pool[picks[0]], pool[picks[1]]  # (B, C, N, r*r) each
    spatial = first.gather(-1, second)  # composition: uniform block permutation per region

    # Flat index, within one image, of pixel p of region j: row-major over (H, W).
    yy, xx = torch.meshgrid(
        torch.arange(r, device=device), torch.arange(r, device=device), indexing="ij"
    )
    corner = (torch.arange(nh, device=device).view(nh, 1) * (r * w)
              + torch.arange(nw, device=device).view(1, nw) * r).reshape(n)
    in_region = (yy * w + xx).reshape(-1)

    source_region = region_permutation(b, (nh, nw), region_scope, generator, device)  # (B, N)
    index = corner[source_region].view(b, 1, n, 1) + in_region[spatial]
    if chromatic and c > 1:
        channel = _random_permutations((b, n), c, generator, device)  # (B, N, C)
        index += (channel.permute(0, 2, 1) * (h * w)).unsqueeze(-1)
    else:
        index += (torch.arange(c, device=device) * (h * w)).view(1, c, 1, 1)
    out = batch.reshape(b, c * h * w).gather(1, index.view(b, -1))
    # Region layout (B, C, nh, nw, r, r) back to image layout.
    return out.view(b, c, nh, nw, r, r).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)
