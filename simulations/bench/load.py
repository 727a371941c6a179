"""The server under load: seconds per round and the ServerApp's memory against node count.

    python -m simulations.bench.load [--nodes 10 30 100] [--rounds 3] [--exchanges weights images activations]

Each (exchange, node count) is one `flwr run` through Flower's simulation runtime (via
``simulations.flwr_run``) on the embedded data, with small per-node work, so that what
grows with the node count is the server's share: messages, validation, aggregation. Every
round's row carries ``server-memory-mb`` (the ServerApp process's resident memory at the
round's end); one JSON line per run gives the median seconds per round, the memory of the
rounds, and the growth from round 2 to the last (the goal: no growth round over round).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from server.flwr_cli import ROOT

SMALL = "model='small-cnn' local-steps=1 batch-size=16 upload-samples=16 server-steps=2 eval-samples=10 round-timeout=600"


def measure(exchange: str, nodes: int, rounds: int, out: Path, ray_cpus: int) -> dict:
    name = f"{exchange}-{nodes}"
    config = f"exchange='{exchange}' num-server-rounds={rounds} {SMALL} output-dir='{out}' run-name='{name}'"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "simulations.flwr_run", "--num-supernodes", str(nodes), "--ray-cpus", str(ray_cpus),
         "--timeout", "3600", "--run-config", config],
        cwd=ROOT, capture_output=True, text=True,
    )
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()] \
        if (out / name / "metrics.jsonl").exists() else []
    memory = [r.get("server-memory-mb") for r in rows]
    return {
        "exchange": exchange, "nodes": nodes, "rounds": len(rows), "ok": result.returncode == 0,
        "replies_last_round": rows[-1].get("replies") if rows else None,
        "seconds_per_round_median": round(statistics.median(r["seconds"] for r in rows), 2) if rows else None,
        "seconds_per_round": [r["seconds"] for r in rows],
        "server_memory_mb": memory,
        # Round 1 pays one-time allocations (test set, first batches); growth is measured after it.
        "server_memory_growth_after_round_1_mb":
            round(memory[-1] - memory[1], 1) if len(rows) > 1 and None not in memory else None,
        "wall_seconds": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--exchanges", nargs="+", default=["weights", "images", "activations"])
    parser.add_argument("--ray-cpus", type=int, default=0, help="CPUs for ClientApp actors (0: all)")
    parser.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="visualmixer-load-"))
    for exchange in args.exchanges:
        for nodes in args.nodes:
            print(json.dumps(measure(exchange, nodes, args.rounds, out, args.ray_cpus)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
