"""One class per exchange, by the run-config value of ``exchange``."""

from __future__ import annotations

from common.run_config import RunConfig
from server.exchanges.activations import ActivationsExchange
from server.exchanges.base import Exchange
from server.exchanges.images import ImagesExchange
from server.exchanges.weights import WeightsExchange
from server.trainer import ServerTrainer

EXCHANGE_CLASSES: dict[str, type[Exchange]] = {
    cls.name: cls for cls in (ImagesExchange, ActivationsExchange, WeightsExchange)
}


def make_exchange(config: RunConfig, trainer: ServerTrainer) -> Exchange:
    return EXCHANGE_CLASSES[config.exchange](config, trainer)


__all__ = ["EXCHANGE_CLASSES", "Exchange", "make_exchange"]
