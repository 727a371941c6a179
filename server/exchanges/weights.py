"""``weights``: clients train locally on obfuscated images; a Message-API strategy (FedAvg by
default) configures the round and aggregates the replies that passed validation."""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import Strategy

from common.data import DATASETS
from common.payloads import PayloadError, check_weights
from common.protocol import STAGE_METRICS, TRAIN
from common.run_config import STRATEGIES, RunConfig
from server.exchanges.base import Exchange, Kept, client_train_metrics
from server.messaging import Messenger, RoundFailed, reply_arrays
from server.robustness import fair_counts, lower_median, update_norm
from server.trainer import ServerTrainer


def make_strategy(config: RunConfig) -> Strategy:
    """The strategy named by run-config ``strategy`` (see ``common.run_config.STRATEGIES``).

    Evaluation is not the strategy's: every exchange runs federated evaluation itself, so
    ``configure_evaluate`` is never called and ``fraction_evaluate`` keeps its default.
    """
    strategy_class = getattr(flower_strategies, STRATEGIES[config.strategy])
    return strategy_class(
        fraction_train=1.0,
        min_train_nodes=config.min_replies,
        min_available_nodes=config.min_replies,
    )


class WeightsExchange(Exchange):
    name = "weights"

    def __init__(self, config: RunConfig, trainer: ServerTrainer) -> None:
        super().__init__(config, trainer)
        self.strategy = make_strategy(config)
        self.reference: dict[str, torch.Tensor] = {}  # the weights sent this round

    def configure(self, server_round: int, messenger: Messenger) -> list[Message]:
        # The strategy waits for min-replies nodes without a time limit; round-timeout bounds
        # that wait here (RoundFailed when too few connect).
        messenger.node_ids()
        self.reference = self.trainer.state_dict()
        train_config = ConfigRecord({"lr": self.config.learning_rate})
        return list(
            self.strategy.configure_train(server_round, ArrayRecord(self.reference), train_config, messenger.grid)
        )

    @property
    def examples_limit(self) -> int | None:
        """Most ``num-examples`` a reply may claim: ``max-examples-per-reply``, else the data
        set's training split (no node holds more). FedAvg weighs replies by this count, so a
        node that lies about it takes more than its share of the average."""
        return self.config.max_examples_per_reply or DATASETS[self.config.dataset].train_size

    def validate(self, reply: Message) -> dict[str, Any]:
        metrics = self.checked_metrics(reply, TRAIN.type, arrays=True)
        limit = self.examples_limit
        if limit is not None and metrics["num-examples"] > limit:
            raise PayloadError(
                f"num-examples={metrics['num-examples']} is more than a node can hold "
                f"(max-examples-per-reply={limit})"
            )
        check_weights(reply_arrays(reply), self.reference, self.config.max_abs_value)
        defense = self.config.active_defense
        if defense.stopped_reply(TRAIN.type, metrics) is not None:
            raise PayloadError(f"{defense.stop_reason(metrics, self.config)}; not aggregated")
        return metrics

    def update(self, server_round: int, kept: Kept, messenger: Messenger) -> dict[str, Any]:
        kept, bounds = self.bound_replies(kept, messenger)
        for reply, _ in kept:  # the strategy averages metrics and needs the same keys in every reply
            metrics = {k: v for k, v in reply.content["metrics"].items() if k not in STAGE_METRICS}
            reply.content["metrics"] = MetricRecord(metrics)
        arrays, _ = self.strategy.aggregate_train(server_round, [reply for reply, _ in kept])
        if arrays is None:
            raise RoundFailed("the strategy returned no aggregate")
        self.trainer.set_weights(arrays.to_torch_state_dict())
        return {**client_train_metrics([(r.metadata.src_node_id, m) for r, m in kept], self.config), **bounds}

    def bound_replies(self, kept: Kept, messenger: Messenger) -> tuple[Kept, dict[str, Any]]:
        """Reject every update longer than ``update-bound`` x the round's median update norm,
        and count every ``num-examples`` above ``examples-share`` x the round's median as
        that much, in the reply itself, so whichever strategy aggregates sees only bounded
        replies (``server.robustness``). Each is an event with its reason."""
        norms = [update_norm(reply_arrays(reply), self.reference) for reply, _ in kept]
        bounded = self.reject_above(kept, norms, self.config.update_bound, "update norm (update-bound)", messenger)
        claimed = [int(m["num-examples"]) for _, m in bounded]
        for (reply, metrics), before, after in zip(bounded, claimed, fair_counts(claimed, self.config.examples_share)):
            if after < before:
                metrics["num-examples"] = after
                reply.content["metrics"] = MetricRecord({**dict(reply.content["metrics"]), "num-examples": after})
                messenger.event(
                    "clamped", reply.metadata.src_node_id, reply.metadata.message_type,
                    f"num-examples={before} counted as {after} (examples-share={self.config.examples_share} x "
                    "the round's median)",
                )
        row = {"update-norm-median": lower_median(norms), "update-norm-max": max(norms),
               "updates-rejected": len(kept) - len(bounded)}
        return bounded, row
