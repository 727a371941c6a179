"""The client half of each exchange, by the run-config value of ``exchange``; mirrors
``server/exchanges/``. The messages each one answers are ``common.protocol.EXCHANGES``."""

from __future__ import annotations

from flwr.app import Context

from client.node import Node

from .activations import ActivationsClient
from .base import ClientExchange
from .images import ImagesClient
from .weights import WeightsClient

CLIENT_EXCHANGES: dict[str, type[ClientExchange]] = {
    cls.name: cls for cls in (ImagesClient, ActivationsClient, WeightsClient)
}


def client_exchange(context: Context, node: Node | None = None) -> ClientExchange:
    """The client half of the run's exchange for the node ``context`` describes (``node``:
    that node, when the caller has already built it)."""
    node = node or Node.from_context(context)
    return CLIENT_EXCHANGES[node.config.exchange](node, context)


__all__ = ["CLIENT_EXCHANGES", "ClientExchange", "client_exchange"]
