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
region) by sorting random keys costs many times more than the gather itself. Instead, each
call draws a fresh pool of uniform block permutations per rung and every (image, channel,
region) picks one entry at random. Each region's arrangement is therefore exactly uniformly
distributed, but within one call regions that pick the same entry share a permutation. The
pool holds one entry per ``REUSE`` region-channels of the batch, between ``MIN_POOL`` and
``POOL_SIZE`` (a batch of 64 32x32 RGB images has 3,072 region-channels: 384 entries; a batch of
1024 has 49,152: 1024 entries, each reused about 48 times, mostly across different images),
so small batches do not pay for a large pool. The pool is never sent, kept or reused across
calls. Composing two picks would make sharing negligible at roughly twice the index cost;
we chose speed and document the trade-off.
"""

from __future__ import annotations

import torch

POOL_SIZE = 1024  # most entries per rung
MIN_POOL = 64  # fewest entries per rung
REUSE = 8  # region-channels per entry, below POOL_SIZE


def pool_size_for(region_channels: int) -> int:
    """Entries per rung for a batch with this many (image, channel, region) triples."""
    return min(POOL_SIZE, max(MIN_POOL, region_channels // REUSE))


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
    size: int = POOL_SIZE,
) -> torch.Tensor:
    """(K * size, r*r) source pixel within a region, ``size`` rows per rung.

    Rung 0 (block = region) is the identity. Stored as uint8 when r*r <= 256 because picking
    rows of a narrow table is several times cheaper than of an int64 one.
    """
    r = region_size
    block_of, offset_of, counts = _pixel_table(block_sizes, r, device)
    rows = []
    for k, (b, m) in enumerate(zip(block_sizes, counts)):
        if m == 1:  # rung 0: the identity, nothing to draw
            rows.append(offset_of[k].expand(size, -1))
            continue
        block_perm = torch.rand(size, m, generator=generator, device=device).argsort(1)
        per_side = r // b
        origin = (block_perm // per_side) * (b * r) + (block_perm % per_side) * b  # (M, m)
        rows.append(origin[:, block_of[k]] + offset_of[k])  # (M, r*r)
    return torch.cat(rows).to(torch.uint8 if r * r <= 256 else torch.int32)


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
    regions: torch.Tensor,
    rungs: torch.Tensor,
    block_sizes: tuple[int, ...],
    grid: tuple[int, int],
    chromatic: bool,
    region_scope: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle regions laid out as (B, C, N, r, r) following ``rungs`` (B, N).

    Returns the shuffled regions (same dtype and device) and, for every output (image,
    channel, region), the row ``channel * N + region`` of the input it was taken from.
    """
    b, c, n, r, _ = regions.shape
    device = regions.device
    size = pool_size_for(b * c * n)
    pool = permutation_pool(block_sizes, r, generator, device, size)
    picks = torch.randint(0, size, (b, c, n), generator=generator, device=device)
    picks += (rungs * size).unsqueeze(1)
    spatial = pool.index_select(0, picks.view(-1)).long().view(b, c * n, r * r)

    source_region = region_permutation(b, grid, region_scope, generator, device)  # (B, N)
    if chromatic and c > 1:
        source_channel = _random_permutations((b, n), c, generator, device).transpose(1, 2)
    else:
        source_channel = torch.arange(c, device=device).view(1, c, 1).expand(b, c, n)
    source = (source_channel * n + source_region.unsqueeze(1)).reshape(b, c * n)

    rows = regions.reshape(b * c * n, r * r)
    if region_scope != 1 or (chromatic and c > 1):
        offset = torch.arange(b, device=device).unsqueeze(1) * (c * n)
        rows = rows.index_select(0, (source + offset).reshape(-1))
    out = rows.view(b, c * n, r * r).gather(2, spatial)
    return out.view(b, c, n, r, r), source
