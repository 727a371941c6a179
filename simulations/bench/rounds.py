"""Seconds and bytes per round for each exchange mode, with and without VisualMixer.

    python -m simulations.bench.rounds [--dataset folder --data-dir DIR] [--rounds N]

Runs the real ServerApp and ClientApp code in process (``tests.fake_grid``: the four
simulated clients take turns, no Ray), so the client time is measured alone. For each
exchange the two arms run in turns (none, visualmixer, none, ...) ``--repeats`` times, so
machine noise hits both alike, and the medians are reported: one JSON line per (exchange,
defense) and one with VisualMixer's cost per exchange, measured two ways:

* ``obfuscation_share_goal``: the goal's measure, under 5%: per round from round 2 on,
  seconds the clients spent inside VisualMixer (timed around every call, reported by the
  clients as ``obfuscation-seconds``) over the clients' round time, median over those
  rounds. Round 1 is set-up: each node also obfuscates its evaluation copy there, once per
  run, and later rounds reuse it. ``obfuscation_share_round_1`` (with
  ``evaluation_copy_share_round_1``, that copy's part of it), ``obfuscation_share_later_rounds``
  (pooled over rounds 2..N) and ``obfuscation_share_of_client`` (all rounds) are reported
  beside it: the direct measure, unaffected by noise between runs.
* ``visualmixer_client_overhead``: (client seconds with visualmixer - without) / without,
  the difference of two noisy runs; it also counts side effects (e.g. cache pressure).

``obfuscation_share_of_round`` relates the same seconds to the whole round (server included).
``--messages`` also prints each run's messages (round, type, seconds in the ClientApp and in
VisualMixer, VisualMixer's retries), to see where a round's time went.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from collections import defaultdict

from flwr.app import Context, RecordDict

from server.server_app import main as server_main
from tests.fake_grid import FakeGrid


def measure(exchange: str, defense: str, args, overrides: dict | None = None) -> dict:
    """One run with the run-config defaults (plus ``overrides``), timed per round."""
    with tempfile.TemporaryDirectory() as out:
        config = {
            "exchange": exchange, "defense": defense, "dataset": args.dataset,
            "data-dir": args.data_dir, "num-server-rounds": args.rounds,
            "output-dir": out, "run-name": "bench", "seed": 0,
            # One model for every defense: `auto` would give VisualMixer arms another one.
            "model": args.model, **(overrides or {}),
        }
        grid = FakeGrid(config, num_nodes=args.clients)
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
        rows = [json.loads(line) for line in open(f"{out}/bench/metrics.jsonl")]
    # Per round: seconds inside the ClientApps, and the part of them the clients spent inside
    # VisualMixer (timed around every call and reported in their replies): the direct
    # measure of its cost, free of run-to-run noise.
    client: dict[int, float] = defaultdict(float)
    mixer: dict[int, float] = defaultdict(float)
    evaluation_copy: dict[int, float] = defaultdict(float)  # the evaluate replies' part
    # (round, message type, seconds in the ClientApp, of them in VisualMixer, its retries)
    messages = []
    for server_round, seconds, reply in grid.log:
        client[server_round] += seconds
        spent, retries = 0.0, 0
        if reply is not None and reply.has_content():
            for record in reply.content.metric_records.values():
                metrics = dict(record)
                spent += float(metrics.get("obfuscation-seconds", 0.0))
                retries += int(metrics.get("obfuscation-retries", 0))
            if reply.metadata.message_type.startswith("evaluate"):
                evaluation_copy[server_round] += spent
        mixer[server_round] += spent
        kind = reply.metadata.message_type if reply is not None else "timed out"
        messages.append((server_round, kind, round(seconds, 5), round(spent, 5), retries))
    obfuscation = sum(mixer.values())
    later = [r for r in client if r > 1]
    # Round 1 pays one-off costs (data loading, first allocations, the evaluation copy):
    # the server's round time is reported for the later rounds.
    later_rows = rows[1:] or rows
    return {
        "dataset": args.dataset,
        "exchange": exchange,
        "defense": defense,
        "clients": args.clients,
        "rounds": len(rows),
        "seconds_per_round": round(sum(r["seconds"] for r in later_rows) / len(later_rows), 2),
        "client_seconds_per_round": round(grid.client_seconds / len(rows), 2),
        "obfuscation_seconds_per_round": round(obfuscation / len(rows), 3),
        "obfuscation_share_round_1": round(mixer[1] / client[1], 4) if client[1] else None,
        "evaluation_copy_share_round_1": round(evaluation_copy[1] / client[1], 4) if client[1] else None,
        "obfuscation_share_later_rounds": (
            round(sum(mixer[r] for r in later) / sum(client[r] for r in later), 4) if later else None
        ),
        "obfuscation_share_goal": (
            round(statistics.median(mixer[r] / client[r] for r in later), 4) if later else None
        ),
        "bytes_up_per_round": sum(r["bytes-up"] for r in rows) // len(rows),
        "bytes_down_per_round": sum(r["bytes-down"] for r in rows) // len(rows),
        "last_federated_accuracy": rows[-1].get("federated-accuracy"),
        "messages": messages,
    }


def median_row(rows: list[dict]) -> dict:
    """The first row with its timings replaced by the medians over all rows."""
    out = {k: v for k, v in rows[0].items() if k != "messages"}
    for key in ("seconds_per_round", "client_seconds_per_round", "obfuscation_seconds_per_round",
                "obfuscation_share_round_1", "evaluation_copy_share_round_1", "obfuscation_share_later_rounds",
                "obfuscation_share_goal"):
        if out[key] is None:
            continue
        out[key] = round(statistics.median(r[key] for r in rows), 4)
    out["repeats"] = len(rows)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="small-cnn", help="the model of every arm (the same for every defense)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--exchanges", default="images,activations,weights")
    parser.add_argument("--messages", action="store_true",
                        help="also print every run's messages: round, type, seconds in the ClientApp and in VisualMixer, retries")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    # Warm-up: the first run in a process loads the data set and allocates; not measured.
    measure("weights", "none", argparse.Namespace(**{**vars(args), "rounds": 1}))
    for exchange in args.exchanges.split(","):
        runs: dict[str, list[dict]] = {"none": [], "visualmixer": []}
        for _ in range(args.repeats):
            for defense in runs:
                runs[defense].append(measure(exchange, defense, args))
                if args.messages:
                    print(json.dumps({"exchange": exchange, "defense": defense, "messages": runs[defense][-1]["messages"]}))
        base, mixed = median_row(runs["none"]), median_row(runs["visualmixer"])
        print(json.dumps(base), flush=True)
        print(json.dumps(mixed), flush=True)
        added = mixed["client_seconds_per_round"] - base["client_seconds_per_round"]
        print(json.dumps({
            "dataset": args.dataset,
            "exchange": exchange,
            "visualmixer_client_overhead": round(added / base["client_seconds_per_round"], 4),
            "obfuscation_share_of_client": round(
                mixed["obfuscation_seconds_per_round"] / mixed["client_seconds_per_round"], 4
            ),
            "obfuscation_share_of_round": round(
                mixed["obfuscation_seconds_per_round"] / mixed["seconds_per_round"], 4
            ),
            "obfuscation_share_round_1": mixed["obfuscation_share_round_1"],
            "evaluation_copy_share_round_1": mixed["evaluation_copy_share_round_1"],
            "obfuscation_share_later_rounds": mixed["obfuscation_share_later_rounds"],
            "obfuscation_share_goal": mixed["obfuscation_share_goal"],
            "goal_met": mixed["obfuscation_share_goal"] is not None and mixed["obfuscation_share_goal"] < 0.05,
        }), flush=True)


if __name__ == "__main__":
    main()
