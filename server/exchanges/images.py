"""``images``: every node uploads a sample of transformed images and labels
(``query.images``); the server trains the shared DNN on what it received.

The server never trusts what a reply claims of its images: the run's defense checks each
uploaded image (:meth:`common.defenses.Defense.guard`; for VisualMixer, the VFE measured per
image and channel) and every image it refuses is dropped before anything is trained on or
written. A reply left with no image (a client sending originals, misconfigured or
malicious) is rejected.
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import Message

from common.payloads import PayloadError, check_images
from common.protocol import QUERY_IMAGES
from server.exchanges.base import Exchange, Kept, client_train_metrics
from server.messaging import Messenger, log, reply_arrays


class ImagesExchange(Exchange):
    name = "images"

    def configure(self, server_round: int, messenger: Messenger) -> list[Message]:
        return messenger.to_every_node(QUERY_IMAGES.type, server_round)  # nothing goes down

    def validate(self, reply: Message) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        side = self.trainer.config.image_size
        shape = (self.trainer.channels, side, side)
        limit = self.config.upload_samples or 10**9
        metrics = self.checked_metrics(reply, QUERY_IMAGES.type, arrays=True)
        images, labels = check_images(reply_arrays(reply), shape, self.trainer.num_classes, limit)
        if metrics["num-examples"] != len(labels):
            raise PayloadError(f"num-examples={metrics['num-examples']} but {len(labels)} images")
        reasons = self.config.active_defense.guard(images, self.config)
        if reasons is not None:
            images, labels, metrics = self.privacy_guard(reply.metadata.src_node_id, images, labels, metrics, reasons)
        return images, labels, metrics

    def privacy_guard(
        self, node: int, images: torch.Tensor, labels: torch.Tensor, metrics: dict[str, Any],
        reasons: list[str | None],
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Keep the images the defense's guard passed (``reasons``: None for those)."""
        passed = torch.tensor([reason is None for reason in reasons], dtype=torch.bool)
        dropped = int((~passed).sum())
        failures = [reason for reason in reasons if reason is not None]
        if dropped == len(images):
            raise PayloadError(
                f"none of its {len(images)} images passes the privacy guard of defense "
                f"{self.config.defense!r} (first: {failures[0]}), whatever the reply claims: not obfuscated"
            )
        if dropped:
            log.warning("Dropped %d of %d images from node %d by the privacy guard (first: %s)",
                        dropped, len(images), node, failures[0])
        return images[passed], labels[passed], {**metrics, "num-examples": int(passed.sum()), "vfe-guard-dropped": dropped}

    def update(self, server_round: int, kept: Kept, messenger: Messenger) -> dict[str, Any]:
        loss = self.trainer.train_on_uploads([(images, labels) for _, (images, labels, _) in kept])
        row = client_train_metrics([(r.metadata.src_node_id, m) for r, (_, _, m) in kept], self.config)
        dropped = [m["vfe-guard-dropped"] for _, (_, _, m) in kept if "vfe-guard-dropped" in m]
        if dropped:
            row["vfe-guard-dropped"] = sum(dropped)
        # The server's loss, not the clients'; steps skipped on a non-finite loss or gradient.
        return {**row, "train-loss": loss, "skipped-steps": self.trainer.skipped_steps}
