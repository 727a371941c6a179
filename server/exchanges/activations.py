"""``activations`` (split learning, Flower's vertical-fl pattern): nodes send the client
layers' activations of obfuscated images (``query.activations``); the server trains its
layers and sends each node the gradient at the cut (``train.apply_gradients``)."""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from common.payloads import PayloadError, check_activations
from common.run_config import RunConfig
from server.exchanges.base import Exchange, Kept, client_train_metrics, privacy_metrics
from server.messaging import Messenger, reply_arrays
from server.trainer import ServerTrainer


class ActivationsExchange(Exchange):
    name = "activations"

    def __init__(self, config: RunConfig, trainer: ServerTrainer) -> None:
        super().__init__(config, trainer)
        self.activation_shape = trainer.activation_shape()  # what a valid upload holds per sample

    def configure(self, server_round: int, messenger: Messenger) -> list[Message]:
        # The client layers go down every round; a node that already holds them keeps its own.
        init = ArrayRecord(self.trainer.state_dict(self.trainer.client_part))
        return messenger.to_every_node("query.activations", server_round, init)

    def validate(self, reply: Message) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        metrics = self.checked_metrics(reply, "query.activations", arrays=True)
        activations, labels = check_activations(
            reply_arrays(reply), self.activation_shape, self.trainer.num_classes, self.upload_limit,
            self.config.max_abs_value,
        )
        if metrics["num-examples"] != len(labels):
            raise PayloadError(f"num-examples={metrics['num-examples']} but {len(labels)} activations")
        return activations, labels, metrics

    @property
    def upload_limit(self) -> int:
        """Most samples one node may send per round. Under DP-SGD the client's batch is
        Poisson with mean ``upload-samples``, so the cap sits 6 standard deviations above it."""
        samples = self.config.upload_samples
        if not samples:
            return 10**9
        return int(samples + 6 * samples**0.5) + 1 if self.config.uses_dp else samples

    def update(self, server_round: int, kept: Kept, messenger: Messenger) -> dict[str, Any]:
        activations = torch.cat([a for _, (a, _, _) in kept])
        labels = torch.cat([y for _, (_, y, _) in kept])
        gradient, loss = self.trainer.train_top(activations, labels)
        sizes = [len(y) for _, (_, y, _) in kept]
        downs = [
            Message(
                RecordDict({
                    "arrays": ArrayRecord({"gradients": grad}),
                    "config": ConfigRecord({"server-round": server_round}),
                }),
                dst_node_id=reply.metadata.src_node_id,
                message_type="train.apply_gradients",
            )
            for (reply, _), grad in zip(kept, gradient.split(sizes), strict=True)
        ]
        acks = messenger.send_and_collect(downs)
        acked = messenger.accept(
            acks, lambda ack: self.checked_metrics(ack, "train.apply_gradients", arrays=False),
            "gradient acknowledgement", required=False,
        )
        ack_metrics = [(ack.metadata.src_node_id, m) for ack, m in acked]
        applied = sum(1 for _, m in ack_metrics if not m.get("dp-budget-spent"))
        row = client_train_metrics([m for _, (_, _, m) in kept])
        return {
            **row, "train-loss": loss, "skipped-steps": self.trainer.skipped_steps,
            "gradients-applied": applied, **privacy_metrics(ack_metrics),
        }

    def evaluation_arrays(self) -> ArrayRecord:
        """Nodes keep their own client layers; they need the server's part only."""
        return ArrayRecord(self.trainer.state_dict(self.trainer.server_part))
