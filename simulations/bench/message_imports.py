"""What importing costs a deployed node, per message (Flower starts a fresh ClientApp
process for every message): wall seconds and peak memory of a fresh process per arm.

    python -m simulations.bench.message_imports [--repeats 7]

Arms, each a fresh ``python -c`` process, run in turns so machine noise hits them alike:

* ``answering``: the ClientApp and what it imports to answer a message itself (torch, the
  exchanges), as a node without a worker does; the baseline of the ratios;
* ``answering+torchvision``: ``import torchvision`` first (what the transform's
  torchvision class brings: torchvision's models and ops);
* ``answering+opacus``: ``import opacus`` first, what a DP-SGD message adds;
* ``forwarding``: the ClientApp alone, as a node with a worker (``client/worker.py``) runs it;
* ``flower-clientapp``: Flower's ``flwr-clientapp`` entry point alone, which every message's
  process imports before the app (not counted in the other arms).

One JSON line per arm: median import seconds (inside the process), median process seconds
(start to exit), median peak RSS in MB, and the ratios to ``answering``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSWERING = "import client.client_app, client.answer\n"
ARMS = {
    "answering": ANSWERING,
    "answering+torchvision": "import torchvision\n" + ANSWERING,
    "answering+opacus": "import opacus\n" + ANSWERING,
    "forwarding": "import client.client_app\n",
    "flower-clientapp": "from flwr.supernode.cli import flwr_clientapp\n",
}
PROBE = """
import resource, time
start = time.perf_counter()
{extra}
seconds = time.perf_counter() - start
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def measure(extra: str) -> tuple[float, float, float]:
    """(import seconds, process seconds, peak RSS MB) of one fresh process."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PROBE.format(extra=extra)], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    process = time.perf_counter() - start
    seconds, rss = map(float, result.stdout.split())
    return seconds, process, rss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ARMS}
    for repeat in range(args.repeats + 1):  # the first round warms the disk cache, not counted
        for name, extra in ARMS.items():
            sample = measure(extra)
            if repeat:
                runs[name].append(sample)
    medians = {name: [statistics.median(column) for column in zip(*samples, strict=True)]
               for name, samples in runs.items()}
    base = medians["answering"]
    for name, (seconds, process, rss) in medians.items():
        print(json.dumps({
            "arm": name, "import_seconds": round(seconds, 3), "process_seconds": round(process, 3),
            "peak_rss_mb": round(rss, 1), "import_ratio": round(seconds / base[0], 3),
            "rss_ratio": round(rss / base[2], 3), "repeats": args.repeats,
        }), flush=True)


if __name__ == "__main__":
    main()
