"""What the server's privacy guard costs a round of the ``images`` exchange.

    python -m simulations.bench.guard [--nodes 4] [--upload-samples 256] [--server-steps 40] [--repeats 5]

The guard measures the VFE of every uploaded image per region and channel
(``common.defenses.visualmixer.guard_failures``) before the server trains on them. This times, in turns in one run, the guard over one round's
uploads (``nodes x upload-samples`` obfuscated 32x32 images) and the server's training of
that round (``server-steps`` steps of ``server-batch-size`` on the small CNN, as
``ServerTrainer.train_on_uploads`` does), and prints one JSON line with the medians and
their ratio. The goal: the guard under 5% of the round's training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common.defaults import DEFAULT_TARGET_VFE, default_region_size
from common.defenses.visualmixer import guard_failures
from common.models import build_model
from common.shapes import generate_shapes
from common.training import make_optimizer, train_steps
from common.visualmixer import VisualMixer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--upload-samples", type=int, default=256)
    parser.add_argument("--server-steps", type=int, default=40)
    parser.add_argument("--server-batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    count = args.nodes * args.upload_samples
    images, labels = generate_shapes(count, seed=1)
    uploads = VisualMixer(DEFAULT_TARGET_VFE, seed=2)(images)
    model = build_model("small-cnn")
    optimizer = make_optimizer("adam", model.parameters(), 0.002)
    guard, training = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for chunk in uploads.split(args.upload_samples):  # one call per reply, as the server does
            guard_failures(chunk, default_region_size(*chunk.shape[-2:]), DEFAULT_TARGET_VFE - 0.05)
        guard.append(time.perf_counter() - start)
        start = time.perf_counter()
        train_steps(model, uploads, labels, optimizer, args.server_steps, args.server_batch_size)
        training.append(time.perf_counter() - start)
    row = {
        "images_per_round": count,
        "guard_ms": round(1000 * statistics.median(guard), 2),
        "server_training_ms": round(1000 * statistics.median(training), 1),
        "guard_share": round(statistics.median(guard) / statistics.median(training), 4),
        "threads": torch.get_num_threads(),
    }
    row["goal_met"] = row["guard_share"] < 0.05
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
