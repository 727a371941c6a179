"""One message answered by the run's exchange, in whichever process holds the node: the
ClientApp process itself, or the node's warm worker (``client/worker.py``)."""

from __future__ import annotations

import logging

from flwr.app import Context, Message, MetricRecord

from client.exchanges import client_exchange
from client.node import Node
from client.timing import StageTimer

log = logging.getLogger("flwr")


def answer(msg: Message, context: Context, timer: StageTimer, node: Node | None = None) -> Message:
    """The reply to ``msg``; its metrics also say where the message's time went (``timer``'s
    stages). ``node``: the node already built for this run (a worker keeps it)."""
    with timer.stage("setup"):
        exchange = client_exchange(context, node)
    with timer.stage("handler"):
        reply = exchange.handle(msg)
    stages = timer.finish()
    log.debug("%s: %s", msg.metadata.message_type, " ".join(f"{k}={v:g}" for k, v in stages.items()))
    if reply.has_content() and "metrics" in reply.content:
        reply.content["metrics"] = MetricRecord({**dict(reply.content["metrics"]), **stages})
    return reply
