"""``images``: a sample of the node's images, transformed on the node, goes up with its
labels (``query.images``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import Message

from common.protocol import QUERY_IMAGES

from .base import ClientExchange


class ImagesClient(ClientExchange):
    name = "images"

    def handlers(self) -> dict[str, Callable[[Message], Message]]:
        return {**super().handlers(), QUERY_IMAGES.type: self.upload}

    def upload(self, msg: Message) -> Message:
        images, labels, metrics = self.transformed_upload(self.server_round(msg))
        return self.reply(msg, metrics, {"images": images, "labels": labels})

    def transformed_upload(self, server_round: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        node = self.node
        images, labels, _ = node.batch(server_round)
        transform = node.transform()
        if transform is not None:
            images = transform(images.to(node.device)).cpu()
        return images, labels, {"num-examples": len(labels), **node.transform_metrics(transform)}
