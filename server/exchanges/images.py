"""``images``: every node uploads a sample of obfuscated images and labels
(``query.images``); the server trains the shared DNN on what it received."""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import Message

from common.payloads import PayloadError, check_images
from server.exchanges.base import Exchange, Kept, client_train_metrics
from server.messaging import Messenger, reply_arrays


class ImagesExchange(Exchange):
    name = "images"

    def configure(self, server_round: int, messenger: Messenger) -> list[Message]:
        return messenger.to_every_node("query.images", server_round)  # nothing goes down

    def validate(self, reply: Message) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        shape = (self.trainer.channels, 32, 32)
        limit = self.config.upload_samples or 10**9
        metrics = self.checked_metrics(reply, "query.images", arrays=True)
        images, labels = check_images(reply_arrays(reply), shape, self.trainer.num_classes, limit)
        if metrics["num-examples"] != len(labels):
            raise PayloadError(f"num-examples={metrics['num-examples']} but {len(labels)} images")
        return images, labels, metrics

    def update(self, server_round: int, kept: Kept, messenger: Messenger) -> dict[str, Any]:
        loss = self.trainer.train_on_uploads([(images, labels) for _, (images, labels, _) in kept])
        row = client_train_metrics([m for _, (_, _, m) in kept])
        return {**row, "train-loss": loss}  # the server's loss, not the clients'
