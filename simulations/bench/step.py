"""Time per local training step for each defense, side by side in one run.

    python -m simulations.bench.step [--batch-size 64] [--steps 30] [--repeats 5] [--device auto]

One step = draw a batch, apply the defense, forward, backward, optimizer step, exactly as a
client does in the ``weights`` exchange (``common.training.train_on_batches``), for every
registered defense (``common.defenses``). Arms are timed in turns (each once, then again),
so machine noise hits them alike; prints one JSON line per arm with the median ms per step and the
ratio to ``none``. The goals: VisualMixer under 1.05x; the literature puts naive Opacus
DP-SGD at 2.6-8x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common.defenses import DEFENSES
from common.dp import PrivacyLedger, poisson_batches
from common.models import build_model
from common.run_config import parse_run_config
from common.shapes import generate_shapes
from common.training import make_optimizer, resolve_device, train_on_batches

ARMS = tuple(DEFENSES)


def make_arm(name: str, batch_size: int, num_samples: int, device: torch.device):
    """Model, optimizer, image transform and batch sampler of defense ``name`` as a client
    trains under it (sigma fixed at 1: the cost of a step does not depend on it)."""
    torch.manual_seed(0)
    config = parse_run_config({"defense": name, "exchange": "weights", "model": "small-cnn", "noise-multiplier": 1.0})
    defense = config.active_defense
    model = build_model("small-cnn").to(device)
    optimizer = make_optimizer("adam", model.parameters(), 0.002)
    transform = defense.image_transform(config)
    q = batch_size / num_samples
    private = defense.private_training(
        config, model, optimizer, sample_rate=q, steps=1, expected_batch_size=batch_size, ledger=PrivacyLedger()
    )
    if private is not None:
        return private.module, private.optimizer, transform, lambda steps: poisson_batches(num_samples, q, steps)
    return model, optimizer, transform, lambda steps: (torch.randint(0, num_samples, (batch_size,)) for _ in range(steps))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    images, labels = generate_shapes(4000, seed=0)
    arms = {name: make_arm(name, args.batch_size, len(labels), device) for name in ARMS}
    timings: dict[str, list[float]] = {name: [] for name in ARMS}
    for repeat in range(args.repeats + 1):  # the first pass warms up and is not counted
        for name, (model, optimizer, mixer, batches) in arms.items():
            start = time.perf_counter()
            train_on_batches(model, images, labels, optimizer, batches(args.steps), mixer, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if repeat:
                timings[name].append((time.perf_counter() - start) / args.steps * 1000)
    base = statistics.median(timings["none"])
    for name in ARMS:
        ms = statistics.median(timings[name])
        print(json.dumps({
            "arm": name, "device": str(device), "batch_size": args.batch_size,
            "ms_per_step": round(ms, 2), "ratio_to_none": round(ms / base, 3),
            "threads": torch.get_num_threads(),
        }), flush=True)


if __name__ == "__main__":
    main()
