"""The shuffle itself: rows of regions grouped by rung, then one ``torch.gather`` per rung.

For output image ``b``, channel ``c``, region ``j`` and pixel ``p`` the source is

    channel sigma_{b,j}(c), region rho_b(j), pixel pi_{b,c,j}(p)

* ``pi`` (spatial) permutes the blocks of the region's rung, independently per channel, so a
  pixel's R, G and B values come from different places;
* ``sigma`` (chromatic, optional) permutes the channel order per region;
* ``rho`` (region scope, optional) moves whole regions within k x k groups, so the region
  means (the mosaic every in-region shuffle leaves) move too.

No value is created or changed: every output region holds its source region's multiset.

Sorting random keys for every (image, channel, region) would cost many times the gather,
so each call draws, per rung in use, a fresh pool of uniform block permutations, and deals
the rung's rows to its entries in a random order (row ``t`` of a random ordering of the
(image, region) pairs, channels side by side, takes entry ``t mod size``: a region's
channels never share an entry). Each region's
arrangement is therefore exactly uniformly distributed, but within one call about
``count / size`` region-channels share each entry; a pool holds one entry per ``REUSE``
region-channels of its rung, between ``MIN_POOL`` and ``POOL_SIZE``. The rows of a rung,
grouped, form a regular (rounds, size, r*r) block, so one ``torch.gather`` with the pool
broadcast over the rounds moves every value; coarse rungs move each block row as one
machine word. The pool is never sent, kept or reused across calls.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import permutations

import numpy as np
import torch

from ._layout import as_words
from ._scratch import scratch

POOL_SIZE = 1024  # most entries per rung
MIN_POOL = 64  # fewest entries per rung
REUSE = 8  # region-channels per entry, below POOL_SIZE


def pool_size_for(region_channels: int | torch.Tensor) -> int | torch.Tensor:
    """Entries per rung for a batch with this many (image, channel, region) triples (an int,
    or a tensor of counts that stays on its device)."""
    if isinstance(region_channels, torch.Tensor):
        return (region_channels // REUSE).clamp(MIN_POOL, POOL_SIZE)
    return min(POOL_SIZE, max(MIN_POOL, region_channels // REUSE))


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator for a reproducible call, or None for fresh global randomness."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


@lru_cache(maxsize=32)
def _word_tables(block: int, region_size: int, words: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(origin of each block, block of each word, offset of each word in its block) for a
    region stored as ``r`` rows of ``r / block`` block rows of ``words`` words each.

    A block permutation ``perm`` (block j of the output comes from block perm[j]) becomes
    the word permutation ``origin[perm][:, block_of_word] + offset``.
    """
    per_side = region_size // block
    row = per_side * words  # words in one row of the region
    y = torch.arange(region_size).view(-1, 1, 1)
    x = torch.arange(per_side).view(1, -1, 1)
    q = torch.arange(words).view(1, 1, -1)
    j = torch.arange(per_side * per_side)
    origin = (j // per_side) * (block * row) + (j % per_side) * words
    which = ((y // block) * per_side + x).expand(-1, -1, words).reshape(-1)
    offset = ((y % block) * row + q).expand(-1, per_side, -1).reshape(-1)
    return origin.to(device), which.to(device), offset.to(device)


def block_permutations(
    block: int,
    region_size: int,
    size: int,
    generator: torch.Generator | None,
    device: torch.device,
    words: int | None = None,
) -> torch.Tensor:
    """(size, r * r/block * words) int64: ``size`` uniform random permutations of a region's
    blocks of side ``block``, as the source word of each output word, for a region stored
    as rows of ``words`` words per block row (default ``block``: one word per pixel)."""
    words = block if words is None else words
    origin, which, offset = _word_tables(block, region_size, words, device)
    block_perm = _random_permutations((size,), len(origin), generator, device)
    if len(offset) == len(origin):  # one word per block: the block permutation is the answer
        return block_perm
    return origin[block_perm][:, which] + offset


def _numpy_generator(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator seeded from ``generator`` (or torch's global one), so seeded calls
    stay reproducible and unseeded ones follow ``torch.manual_seed``."""
    seed = torch.randint(0, 2**63 - 1, (), generator=generator)
    return np.random.default_rng(int(seed))


def _random_permutations(
    shape: tuple[int, ...], n: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Uniform random permutations of ``n`` along a new last dim: the order of random keys.

    On CPU each key packs random high bits above its own index, so sorting the keys'
    values (numpy's vectorised sort, several times faster than an argsort of float keys)
    and keeping the low bits gives the permutation. Rows of up to 64 use 32-bit keys with
    at least 26 random bits: two keys of a row tie in their random bits with probability
    below 64**2 / 2**27 = 3e-5 (float32 keys, 24 random bits, are no better); longer rows
    use 64-bit keys. CUDA sorts float keys on the device.
    """
    if device.type != "cpu":
        return torch.rand(*shape, n, generator=generator, device=device).argsort(-1)
    count = math.prod(shape) * n
    bits = max(1, (n - 1).bit_length())
    raw = _numpy_generator(generator).bit_generator.random_raw(count if n > 64 else (count + 1) // 2)
    keys = raw if n > 64 else raw.view(np.uint32)[:count]
    low = keys.dtype.type((1 << bits) - 1)
    keys = keys.reshape(*shape, n)
    keys &= ~low
    keys |= np.arange(n, dtype=keys.dtype)
    keys.sort(axis=-1)
    keys &= low
    return torch.from_numpy(keys.astype(np.int64))


@lru_cache(maxsize=None)
def _all_orders(c: int, device: torch.device) -> torch.Tensor:
    """(c!, c) every ordering of ``c`` channels (kept per device: no copy per call)."""
    return torch.tensor(list(permutations(range(c))), device=device)


def channel_permutation(
    batch_size: int, regions: int, channels: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """(B, N, C) a uniformly random channel order per (image, region).

    Picking one of the C! orders (6 for RGB) by index is exact and far cheaper than sorting
    random keys in B*N tiny sorts.
    """
    orders = _all_orders(channels, device)
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


def _rows_by_rung(rungs: torch.Tensor, channels: int, generator: torch.Generator | None) -> torch.Tensor:
    """Every output row (image, channel, region) once, grouped by rung (ascending), the
    (image, region) pairs in a uniformly random order within a rung and a pair's channels
    side by side.

    One sort of packed keys (rung, random bits, index) replaces a random permutation
    followed by a stable sort by rung.
    """
    b, n = rungs.shape
    pairs = b * n
    bits = max(1, (pairs - 1).bit_length())
    if rungs.device.type == "cpu":
        raw = _numpy_generator(generator).bit_generator.random_raw(pairs)
        random = torch.from_numpy((raw >> np.uint64(6)).view(np.int64))
    else:
        random = torch.randint(0, 2**58, (pairs,), generator=generator, device=rungs.device)
    # Bits 58-62 hold the rung, then random bits, then the pair's index in the low bits.
    index = torch.arange(pairs, device=rungs.device)
    keys = ((random >> bits) << bits) | (rungs.reshape(-1) << 58) | index
    if keys.device.type == "cpu":
        keys = torch.from_numpy(np.sort(keys.numpy()))
    else:
        keys = keys.sort().values
    pair = keys & ((1 << bits) - 1)
    image, region = pair // n, pair % n
    channel = torch.arange(channels, device=rungs.device) * n
    return ((image * (channels * n) + region).unsqueeze(1) + channel).view(-1)


def shuffle_regions(
    regions: torch.Tensor,
    rungs: torch.Tensor,
    block_sizes: tuple[int, ...],
    grid: tuple[int, int],
    chromatic: bool,
    region_scope: int,
    generator: torch.Generator | None,
    out_name: str | None = None,
    fixed_shapes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle regions laid out as (B, C, N, r, r) following ``rungs`` (B, N).

    Returns the shuffled regions (same dtype and device) and, for every output (image,
    channel, region), the row ``channel * N + region`` of the input it was taken from.
    With ``out_name`` the shuffled regions are written to that scratch buffer (valid until
    the next call that uses the name); otherwise to a new tensor.

    ``fixed_shapes`` gives the same distribution (the same pools, dealt the same way) with
    no tensor whose shape depends on the rungs and no wait for the device, so a CUDA graph
    can record it (``_graphs.py``): every rung draws a full-size pool and one gather moves
    every value through a per-row index, instead of one gather per rung's segment.
    """
    b, c, n, r, _ = regions.shape
    total = b * c * n
    source, source_row = _source_rows(b, c, grid, chromatic, region_scope, generator, regions.device)
    order = _rows_by_rung(rungs, c, generator)  # (B*C*N,) output rows, grouped by rung
    if out_name is None:
        out = torch.empty((b, c, n, r, r), dtype=regions.dtype, device=regions.device)
    else:
        out = scratch(out_name, (b, c, n, r, r), regions.dtype, regions.device)
    rows, out_rows = regions.reshape(total, r * r), out.view(total, r * r)
    if fixed_shapes:
        _deal_in_row_order(rows, rungs, c, block_sizes, source_row, order, generator, out_rows)
    else:
        _deal_by_rung(rows, rungs, c, block_sizes, source_row, order, generator, out_rows)
    return out, source


def _source_rows(
    b: int,
    c: int,
    grid: tuple[int, int],
    chromatic: bool,
    region_scope: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each output (image, channel, region) row comes from: the moved region ``rho``
    and, when chromatic, the permuted channel ``sigma``. Returns (B, C*N) rows within each
    image and the (B*C*N,) rows of the whole batch."""
    n = grid[0] * grid[1]
    source_region = region_permutation(b, grid, region_scope, generator, device)  # (B, N)
    if chromatic and c > 1:
        source_channel = channel_permutation(b, n, c, generator, device).transpose(1, 2)
    else:
        source_channel = torch.arange(c, device=device).view(1, c, 1).expand(b, c, n)
    source = (source_channel * n + source_region.unsqueeze(1)).reshape(b, c * n)
    offset = torch.arange(b, device=device).unsqueeze(1) * (c * n)
    return source, (source + offset).view(-1)


def _deal_by_rung(
    rows: torch.Tensor,
    rungs: torch.Tensor,
    channels: int,
    block_sizes: tuple[int, ...],
    source_row: torch.Tensor,
    order: torch.Tensor,
    generator: torch.Generator | None,
    out: torch.Tensor,
) -> None:
    """The grouped shuffle into ``out`` (B*C*N, r*r): the source rows gathered in ``order``
    (grouped by rung), one gather per rung with its pool, then back to row order."""
    total, rr = rows.shape
    r = math.isqrt(rr)
    device = rows.device
    counts = (torch.bincount(rungs.view(-1), minlength=len(block_sizes)) * channels).tolist()
    grouped = scratch("grouped", (total, rr), rows.dtype, device)
    words_in, _ = as_words(rows, rr)
    words_grouped, _ = as_words(grouped, rr)
    torch.index_select(words_in, 0, source_row[order], out=words_grouped)

    mixed = scratch("mixed", (total, rr), rows.dtype, device)
    start = 0
    for k, count in enumerate(counts):
        if count == 0:
            continue
        segment, into = grouped[start : start + count], mixed[start : start + count]
        start += count
        if k == 0:  # rung 0 (block = region) leaves the region as is
            into.copy_(segment)
        else:
            _gather_rung(segment, into, block_sizes[k], r, generator)

    # Back to row order: gathering through the inverse permutation is about twice as fast
    # on CPU as scattering (``index_copy_``) through ``order`` itself.
    inverse = torch.empty_like(order).scatter_(0, order, torch.arange(total, device=device))
    words_out, _ = as_words(out, rr)
    words_mixed, _ = as_words(mixed, rr)
    torch.index_select(words_mixed, 0, inverse, out=words_out)


def _gather_rung(
    segment: torch.Tensor, into: torch.Tensor, block: int, r: int, generator: torch.Generator | None
) -> None:
    """Shuffle one rung's rows (``count``, r*r) into ``into`` with a fresh pool: row ``t``
    takes entry ``t mod size``, so the rows form a regular (rounds, size, width) block and
    one gather with the pool broadcast moves them all."""
    count = len(segment)
    # Move each block row (``block`` contiguous values) as one machine word when one fits:
    # a 2x2 block is two int16 words of uint8, so the gather moves half as much.
    segment, words = as_words(segment, block)
    into, _ = as_words(into, block)
    size = pool_size_for(count)
    pool = block_permutations(block, r, size, generator, segment.device, words)
    width = pool.shape[1]
    full, rest = divmod(count, size)
    if full:
        torch.gather(
            segment[: full * size].view(full, size, width),
            2,
            pool.expand(full, size, width),
            out=into[: full * size].view(full, size, width),
        )
    if rest:
        torch.gather(segment[full * size :], 1, pool[:rest], out=into[full * size :])


def _deal_in_row_order(
    rows: torch.Tensor,
    rungs: torch.Tensor,
    channels: int,
    block_sizes: tuple[int, ...],
    source_row: torch.Tensor,
    order: torch.Tensor,
    generator: torch.Generator | None,
    out: torch.Tensor,
) -> None:
    """The fixed-shape shuffle into ``out`` (B*C*N, r*r): row ``t`` of a rung in ``order``
    takes entry ``t mod pool_size_for(count)`` of that rung's pool, as in the grouped one."""
    total, rr = rows.shape
    r = math.isqrt(rr)
    device = rows.device
    k = len(block_sizes)
    row_rung = rungs.unsqueeze(1).expand(-1, channels, -1).reshape(-1)  # rung of every output row
    counts = (row_rung.unsqueeze(1) == torch.arange(k, device=device)).sum(0)  # (K,), no sync
    sizes = pool_size_for(counts)  # per rung, on the device
    cap = pool_size_for(total)  # no rung holds more rows than the batch: its pool fits in cap
    rung = row_rung[order]
    dealt = (torch.arange(total, device=device) - (counts.cumsum(0) - counts)[rung]) % sizes[rung]
    pick = torch.empty_like(order).scatter_(0, order, rung * cap + dealt)
    pools = [torch.arange(rr, device=device).expand(cap, rr)]  # rung 0: left as is
    pools += [block_permutations(block, r, cap, generator, device) for block in block_sizes[1:]]
    index = scratch("index", (total, rr), torch.int64, device)
    torch.index_select(torch.cat(pools), 0, pick, out=index)
    picked = scratch("grouped", (total, rr), rows.dtype, device)
    words_in, _ = as_words(rows, rr)
    words_picked, _ = as_words(picked, rr)
    torch.index_select(words_in, 0, source_row, out=words_picked)
    torch.gather(picked, 1, index, out=out)
