"""Seconds and bytes per round for each exchange mode, with and without VisualMixer.

    python -m simulations.bench_rounds [--dataset folder --data-dir DIR] [--rounds N]

Runs the real ServerApp and ClientApp code in process (``simulations.inprocess``: the four
simulated clients take turns, no Ray), so the client time is measured alone. Prints one JSON
line per (exchange, defense) and, per exchange, VisualMixer's overhead on a client's round:
(client seconds with visualmixer - without) / without. Goal: under 5%.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile

from flwr.app import Context, RecordDict

from server.server_app import main as server_main
from simulations.inprocess import FakeGrid


def measure(exchange: str, defense: str, args) -> dict:
    with tempfile.TemporaryDirectory() as out:
        config = {
            "exchange": exchange, "defense": defense, "dataset": args.dataset,
            "data-dir": args.data_dir, "num-server-rounds": args.rounds,
            "output-dir": out, "run-name": "bench", "seed": 0,
        }
        grid = FakeGrid(config, num_nodes=args.clients)
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
        rows = [json.loads(line) for line in open(f"{out}/bench/metrics.jsonl")]
    # Round 1 pays one-off costs (data loading, first allocations): report the later rounds.
    later = rows[1:] or rows
    return {
        "exchange": exchange,
        "defense": defense,
        "clients": args.clients,
        "rounds": len(rows),
        "seconds_per_round": round(sum(r["seconds"] for r in later) / len(later), 2),
        "client_seconds_per_round": round(grid.client_seconds / len(rows), 2),
        "bytes_up_per_round": sum(r["bytes-up"] for r in rows) // len(rows),
        "bytes_down_per_round": sum(r["bytes-down"] for r in rows) // len(rows),
        "last_federated_accuracy": rows[-1].get("federated-accuracy"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    # Warm-up: the first run in a process loads the data set and allocates; not measured.
    measure("weights", "none", argparse.Namespace(**{**vars(args), "rounds": 1}))
    for exchange in ("images", "activations", "weights"):
        base = measure(exchange, "none", args)
        mixed = measure(exchange, "visualmixer", args)
        print(json.dumps(base), flush=True)
        print(json.dumps(mixed), flush=True)
        overhead = (mixed["client_seconds_per_round"] - base["client_seconds_per_round"]) / base["client_seconds_per_round"]
        print(json.dumps({"exchange": exchange, "visualmixer_client_overhead": round(overhead, 4)}), flush=True)


if __name__ == "__main__":
    main()
