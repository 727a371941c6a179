"""``activations`` (split learning, Flower's vertical-fl pattern): nodes send the client
layers' activations of obfuscated images (``query.activations``); the server trains its
layers and sends each node the gradient at the cut (``train.apply_gradients``).

Each node trains its own copy of the client layers and keeps it across rounds. Its
acknowledgement of the gradient carries that copy after the step, and the server keeps
their mean (weighted by examples, as SplitFed does): it is checkpointed with the top and
sent down every round, so a node that lost its state (restarted, a resumed run, a new
node) starts from the federation's current layers, not from round 0. A node that holds
its own layers keeps them. The upload adds little to what the activations already show
the server (the client layers are a few convolutions, and the server knows their start)."""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from common.payloads import PayloadError, check_activations, check_weights
from common.protocol import APPLY_GRADIENTS, GRADIENTS, QUERY_ACTIVATIONS
from common.run_config import RunConfig
from server.exchanges.base import Exchange, Kept, client_train_metrics
from server.messaging import Messenger, reply_arrays
from server.robustness import per_sample_norm, update_norm
from server.trainer import ServerTrainer


class ActivationsExchange(Exchange):
    name = "activations"

    def __init__(self, config: RunConfig, trainer: ServerTrainer) -> None:
        super().__init__(config, trainer)
        self.activation_shape = trainer.activation_shape()  # what a valid upload holds per sample

    def configure(self, server_round: int, messenger: Messenger) -> list[Message]:
        # The client layers go down every round; a node that already holds them keeps its own.
        init = ArrayRecord(self.trainer.state_dict(self.trainer.client_part))
        return messenger.to_every_node(QUERY_ACTIVATIONS.type, server_round, init)

    def validate(self, reply: Message) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        metrics = self.checked_metrics(reply, QUERY_ACTIVATIONS.type, arrays=True)
        activations, labels = check_activations(
            reply_arrays(reply), self.activation_shape, self.trainer.num_classes, self.upload_limit,
            self.config.max_abs_value,
        )
        if metrics["num-examples"] != len(labels):
            raise PayloadError(f"num-examples={metrics['num-examples']} but {len(labels)} activations")
        return activations, labels, metrics

    @property
    def upload_limit(self) -> int:
        """Most samples one node may send per round (the defense's allowance above
        ``upload-samples``, e.g. for DP-SGD's Poisson-sampled batches)."""
        samples = self.config.upload_samples
        if not samples:
            return 10**9
        return self.config.active_defense.upload_limit(samples)

    def update(self, server_round: int, kept: Kept, messenger: Messenger) -> dict[str, Any]:
        norms = [per_sample_norm(a) for _, (a, _, _) in kept]
        kept = self.reject_above(
            kept, norms, self.config.activation_bound, "activations' median sample norm (activation-bound)", messenger
        )
        activations = torch.cat([a for _, (a, _, _) in kept])
        labels = torch.cat([y for _, (_, y, _) in kept])
        gradient, loss = self.trainer.train_top(activations, labels)
        sizes = [len(y) for _, (_, y, _) in kept]
        downs = [
            Message(
                RecordDict({
                    "arrays": ArrayRecord({GRADIENTS: grad}),
                    "config": ConfigRecord({"server-round": server_round}),
                }),
                dst_node_id=reply.metadata.src_node_id,
                message_type=APPLY_GRADIENTS.type,
            )
            for (reply, _), grad in zip(kept, gradient.split(sizes), strict=True)
        ]
        acks = messenger.send_and_collect(downs)
        reference = self.trainer.state_dict(self.trainer.client_part)
        acked = messenger.accept(
            acks, lambda ack: self._acknowledgement(ack, reference), "gradient acknowledgement", required=False,
        )
        if acked:
            norms = [update_norm(layers, reference) for _, (_, layers) in acked]
            acked = self.reject_above(
                acked, norms, self.config.update_bound, "client layers' update norm (update-bound)", messenger
            )
            self.trainer.client_part.load_state_dict(
                mean_state([(layers, int(m["num-examples"])) for _, (m, layers) in acked])
            )
        ack_metrics = [(ack.metadata.src_node_id, m) for ack, (m, _) in acked]
        defense = self.config.active_defense
        applied = sum(1 for _, m in ack_metrics if defense.stopped_reply(APPLY_GRADIENTS.type, m) is None)
        row = client_train_metrics([(r.metadata.src_node_id, m) for r, (_, _, m) in kept], self.config)
        return {
            **row, "train-loss": loss, "skipped-steps": self.trainer.skipped_steps,
            "gradients-applied": applied, **defense.round_metrics(ack_metrics),
        }

    def _acknowledgement(
        self, ack: Message, reference: dict[str, torch.Tensor]
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(metrics, the node's client layers after the step), checked like a weights reply."""
        metrics = self.checked_metrics(ack, APPLY_GRADIENTS.type, arrays=True)
        layers = reply_arrays(ack)
        check_weights(layers, reference, self.config.max_abs_value)
        return metrics, layers

    def evaluation_arrays(self) -> ArrayRecord:
        """Nodes keep their own client layers; they need the server's part only."""
        return ArrayRecord(self.trainer.state_dict(self.trainer.server_part))


def mean_state(states: list[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    """The examples-weighted mean of state dicts with the same keys: floating tensors
    averaged, integer ones (counters) taken from the first."""
    total = sum(weight for _, weight in states)
    first = states[0][0]
    return {
        key: sum(state[key].double() * (weight / total) for state, weight in states).to(value.dtype)
        if value.is_floating_point() else value
        for key, value in first.items()
    }
