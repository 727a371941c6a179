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

from functools import lru_cache
from itertools import permutations

import torch

from ._scratch import scratch

POOL_SIZE = 1024  # most entries per rung
MIN_POOL = 64  # fewest entries per rung
REUSE = 8  # region-channels per entry, below POOL_SIZE


def pool_size_for(region_channels: int) -> int:
    """Entries per rung for a batch with this many (image, channel, region) triples."""
    return min(POOL_SIZE, max(MIN_POOL, region_channels // REUSE))


@lru_cache(maxsize=32)
def _pixel_tables(block_sizes: tuple[int, ...], region_size: int, device: torch.device) -> tuple:
    """Per rung: (origin of each block, block of each pixel, offset of each pixel in its block).

    A block permutation ``perm`` (block j of the output comes from block perm[j]) becomes
    the pixel permutation ``origin[perm][:, block] + offset``.
    """
    r = region_size
    yy, xx = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
    tables = []
    for b in block_sizes:
        per_side = r // b
        j = torch.arange(per_side * per_side)
        origin = (j // per_side) * (b * r) + (j % per_side) * b
        block = ((yy // b) * per_side + xx // b).reshape(-1)
        offset = ((yy % b) * r + xx % b).reshape(-1)
        tables.append((origin.to(device), block.to(device), offset.to(device)))
    return tuple(tables)


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
    dtype = torch.uint8 if r * r <= 256 else torch.int32
    pool = torch.empty(len(block_sizes), size, r * r, dtype=dtype, device=device)
    for k, (b, (origin, block, offset)) in enumerate(
        zip(block_sizes, _pixel_tables(block_sizes, r, device))
    ):
        m = len(origin)
        if m == 1:  # rung 0: the identity, nothing to draw
            pool[k] = offset
            continue
        block_perm = torch.rand(size, m, generator=generator, device=device).argsort(1)
        if b == 1:  # single pixels: the block permutation is the pixel permutation
            pool[k] = block_perm
        else:
            pool[k] = origin[block_perm][:, block] + offset
    return pool.view(-1, r * r)


def _random_permutations(
    shape: tuple[int, ...], n: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    return torch.rand(*shape, n, generator=generator, device=device).argsort(-1)


@lru_cache(maxsize=None)
def _all_orders(c: int) -> torch.Tensor:
    """(c!, c) every ordering of ``c`` channels."""
    return torch.tensor(list(permutations(range(c))))


def channel_permutation(
    batch_size: int, regions: int, channels: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """(B, N, C) a uniformly random channel order per (image, region).

    Picking one of the C! orders (6 for RGB) by index is exact and far cheaper than sorting
    random keys in B*N tiny sorts.
    """
    orders = _all_orders(channels).to(device)
    pick = torch.randint(0, len(orders), (batch_size, regions), generator=generator, device=device)
    return orders[pick]


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
    out_name: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle regions laid out as (B, C, N, r, r) following ``rungs`` (B, N).

    Returns the shuffled regions (same dtype and device) and, for every output (image,
    channel, region), the row ``channel * N + region`` of the input it was taken from.
    With ``out_name`` the shuffled regions are written to that scratch buffer (valid until
    the next call that uses the name); otherwise to a new tensor.
    """
    b, c, n, r, _ = regions.shape
    device = regions.device
    size = pool_size_for(b * c * n)
    pool = permutation_pool(block_sizes, r, generator, device, size)
    picks = torch.randint(0, size, (b, c, n), generator=generator, device=device)
    picks += (rungs * size).unsqueeze(1)
    # Large temporaries go to scratch buffers: fresh ones cost more in page faults than the
    # copies themselves on small CPUs (see _scratch.py).
    narrow = scratch("spatial-narrow", (b * c * n, r * r), pool.dtype, device)
    torch.index_select(pool, 0, picks.view(-1), out=narrow)
    spatial = scratch("spatial", (b, c * n, r * r), torch.long, device)
    spatial.view(-1, r * r).copy_(narrow)

    source_region = region_permutation(b, grid, region_scope, generator, device)  # (B, N)
    if chromatic and c > 1:
        source_channel = channel_permutation(b, n, c, generator, device).transpose(1, 2)
    else:
        source_channel = torch.arange(c, device=device).view(1, c, 1).expand(b, c, n)
    source = (source_channel * n + source_region.unsqueeze(1)).reshape(b, c * n)

    rows = regions.reshape(b * c * n, r * r)
    if region_scope != 1 or (chromatic and c > 1):
        offset = torch.arange(b, device=device).unsqueeze(1) * (c * n)
        moved = scratch("moved", rows.shape, rows.dtype, device)
        rows = torch.index_select(rows, 0, (source + offset).reshape(-1), out=moved)
    if out_name is None:
        out = torch.empty((b, c, n, r, r), dtype=regions.dtype, device=device)
    else:
        out = scratch(out_name, (b, c, n, r, r), regions.dtype, device)
    torch.gather(rows.view(b, c * n, r * r), 2, spatial, out=out.view(b, c * n, r * r))
    return out, source
