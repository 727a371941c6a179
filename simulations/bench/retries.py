"""How often VisualMixer's closed loop retries, and what a retry costs.

    python -m simulations.bench.retries [--data-dir DIR] [--device auto] [--batch 256]
                                        [--calls 200] [--repeats 30]

Makes ``--calls`` seeded calls as clients make them (call ``s``: ``--batch`` images drawn
with seed ``s`` from the test images of the ImageFolder tree ``--data-dir``, else generated
``shapes``, obfuscated with seed ``s``) and counts those whose images fell short of the
target on the first draw (``Obfuscation.attempts > 1``). The first call that retried is
then timed as it runs and with its retries cut off (``ATTEMPTS = 1``), in turns: the
difference is what its retries cost. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from common.data import load_dataset
from common.shapes import generate_shapes
from common.training import resolve_device
from common.visualmixer import DEFAULT_TARGET_VFE, functional, obfuscate
from simulations.bench.obfuscation import interleaved_seconds
from simulations.bench.profile_obfuscation import operators_of


@contextmanager
def first_draw_only() -> Iterator[None]:
    """``obfuscate`` without its retries: every call ends after the first attempt."""
    saved = functional.ATTEMPTS
    functional.ATTEMPTS = 1
    try:
        yield
    finally:
        functional.ATTEMPTS = saved


def seeded_batch(seed: int, batch: int, pool: torch.Tensor | None) -> torch.Tensor:
    if pool is None:
        return generate_shapes(batch, seed)[0]
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:batch]
    return pool[pick]


def bench(batch: int, calls: int, device: torch.device, target: float, repeats: int,
          pool: torch.Tensor | None = None) -> dict:
    attempts = []
    for seed in range(calls):
        attempts.append(obfuscate(seeded_batch(seed, batch, pool).to(device), target, seed=seed).attempts)
    row = {
        "device": str(device), "batch": batch, "target_vfe": target, "calls": calls,
        "calls_with_retries": sum(a > 1 for a in attempts), "retries": sum(a - 1 for a in attempts),
    }
    retried = next((seed for seed, a in enumerate(attempts) if a > 1), None)
    if retried is None:
        return row
    x = seeded_batch(retried, batch, pool).to(device)

    def as_run() -> None:
        obfuscate(x, target, seed=retried)

    def first_draw() -> None:
        with first_draw_only():
            obfuscate(x, target, seed=retried)

    seconds = interleaved_seconds({"as_run": as_run, "first_draw": first_draw}, repeats, device)
    return {
        **row,
        "timed_call": retried,
        "timed_call_attempts": attempts[retried],
        "first_draw_ms": round(seconds["first_draw"] * 1e3, 3),
        "with_retries_ms": round(seconds["as_run"] * 1e3, 3),
        "retries_ms": round((seconds["as_run"] - seconds["first_draw"]) * 1e3, 3),
        "first_draw_operators": operators_of(first_draw),
        "with_retries_operators": operators_of(as_run),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="", help="an ImageFolder tree: draw from its test images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--target-vfe", type=float, default=DEFAULT_TARGET_VFE)
    args = parser.parse_args(argv)
    for name in ("batch", "calls", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    pool = load_dataset("folder", "test", args.data_dir).images if args.data_dir else None
    if pool is not None and len(pool) < args.batch:
        parser.error(f"--data-dir {args.data_dir} holds {len(pool)} test images, fewer than --batch {args.batch}")
    device = resolve_device(args.device)
    print(json.dumps(bench(args.batch, args.calls, device, args.target_vfe, args.repeats, pool)), flush=True)


if __name__ == "__main__":
    main()
