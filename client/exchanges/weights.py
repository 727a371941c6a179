"""``weights``: local training from the global model on transformed images; the trained
weights go up (``train``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from flwr.app import Message

from common.dp import PrivacyLedger, poisson_batches
from common.protocol import TRAIN
from common.training import make_optimizer, mean_loss, train_on_batches, train_steps

from .base import ClientExchange

log = logging.getLogger("flwr")


class WeightsClient(ClientExchange):
    name = "weights"

    def handlers(self) -> dict[str, Callable[[Message], Message]]:
        return {**super().handlers(), TRAIN.type: self.train}

    def train(self, msg: Message) -> Message:
        ledger = self.ledger()
        new_state, metrics = self.train_weights(msg.content["arrays"].to_torch_state_dict(), ledger)
        self.save_ledger(ledger)
        return self.reply(msg, metrics, new_state)

    def train_weights(
        self, state: dict[str, torch.Tensor], ledger: PrivacyLedger | None = None
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """``local-steps`` steps from the global ``state``, wrapped by the defense's private
        training (recorded in ``ledger``) when it has one."""
        node, config = self.node, self.node.config
        model = node.model(state)
        optimizer = make_optimizer(config.optimizer, model.parameters(), config.learning_rate)
        transform = node.transform()
        images, labels = node.train_set.images, node.train_set.labels
        steps = config.local_steps
        q = min(1.0, config.batch_size / len(labels))
        private = node.defense.private_training(
            config, model, optimizer, sample_rate=q, steps=steps,
            expected_batch_size=config.batch_size, ledger=ledger if ledger is not None else PrivacyLedger(),
        )
        if private is not None and private.stopped is not None:
            return {k: v.cpu() for k, v in state.items()}, {"num-examples": len(labels), **private.stopped}
        extra: dict = {}
        if private is not None:
            batches = poisson_batches(len(labels), q, steps)
            losses = train_on_batches(private.module, images, labels, private.optimizer, batches, transform, node.device)
            new_state = private.state_dict()
            extra = private.metrics()
        else:
            losses = train_steps(model, images, labels, optimizer, steps, config.batch_size, transform, node.device)
            new_state = {k: v.cpu() for k, v in model.state_dict().items()}
        loss, skipped = mean_loss(losses)
        if skipped:
            log.warning("Skipped %d of %d local steps: non-finite loss or gradient", skipped, len(losses))
        metrics = {"num-examples": len(labels), "train-loss": loss}
        return new_state, {**metrics, **node.transform_metrics(transform), **extra}
