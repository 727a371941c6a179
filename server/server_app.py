"""The ServerApp: runs the rounds and leaves the work of each to its exchange.

* ``weights``: a Message-API strategy (FedAvg by default) aggregates locally trained weights.
* ``images``: the server trains the shared DNN on the obfuscated uploads.
* ``activations``: split learning; the server trains its layers on the uploaded activations
  and sends the gradient at the cut back down.

The exchanges live in ``server/exchanges/``, the message plumbing in ``server/messaging.py``
and the server's own PyTorch work (model, checkpoints, files) in ``server/trainer.py``. A
round with fewer than ``min-replies`` valid replies is recorded as failed and the run stops,
keeping its checkpoint; the ServerApp then raises :class:`RunFailed`, so Flower reports the
run ``finished:failed`` with the reason.
"""

from __future__ import annotations

import logging
import os
import time

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.run_config import parse_run_config
from server.exchanges import make_exchange
from server.exchanges.base import progress_line
from server.messaging import Messenger, RoundFailed, RunFailed
from server.trainer import NonFiniteModel, ServerTrainer

log = logging.getLogger("flwr")
app = ServerApp()


def resident_mb() -> float | None:
    """The ServerApp process's resident memory now, in MiB (Linux; None elsewhere)."""
    try:
        pages = int(open("/proc/self/statm").read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = parse_run_config(context.run_config)
    trainer = ServerTrainer(config, flower_run_id=context.run_id)
    exchange = make_exchange(config, trainer)
    started = time.time()
    log.info(
        "VisualMixer run %r: exchange=%s defense=%s dataset=%s rounds %d..%d -> %s",
        config.run_name, config.exchange, config.defense, config.dataset,
        trainer.start_round, config.num_server_rounds, trainer.store.path,
    )
    for server_round in range(trainer.start_round, config.num_server_rounds + 1):
        round_start = time.time()
        messenger = Messenger(grid, config, server_round, trainer.store.append_event)
        try:
            trained = exchange.train_round(server_round, messenger)
            evaluated = exchange.evaluate_round(server_round, messenger)
            row = {
                "round": server_round, "status": "completed", "exchange": config.exchange, "defense": config.defense,
                **trained, **evaluated, "rejected": messenger.rejected, "bytes-up": messenger.up,
                "bytes-down": messenger.down, "seconds": round(time.time() - round_start, 2),
                "server-memory-mb": resident_mb(),
            }
            trainer.finish_round(server_round, row)
        except (RoundFailed, NonFiniteModel) as err:
            trainer.store.append_metrics({"round": server_round, "status": "failed", "reason": str(err)})
            summary = trainer.finish("failed", f"round {server_round} failed: {err}", started, keep_model=False)
            log.error("Stopping: %s (checkpoint of round %d kept)", summary["message"], server_round - 1)
            raise RunFailed(summary["message"]) from err
        log.info("[round %d/%d] %s", server_round, config.num_server_rounds, progress_line(row))
    # A run is complete only with a completed row for every round: never report it otherwise.
    done = {r.get("round") for r in trainer.store.read_metrics() if r.get("status") == "completed"}
    if missing := sorted(set(range(1, config.num_server_rounds + 1)) - done):
        summary = trainer.finish("failed", f"rounds {missing} have no completed row in metrics.jsonl", started)
        raise RunFailed(summary["message"])
    summary = trainer.finish("completed", "all rounds completed", started)
    log.info("Run %r finished: %s", config.run_name, summary["last"])
