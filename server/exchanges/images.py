"""``images``: every node uploads a sample of obfuscated images and labels
(``query.images``); the server trains the shared DNN on what it received.

The server never trusts a reply's claimed VFE: it measures every uploaded image itself
(:func:`common.visualmixer.visual_feature_entropy`) and drops the images below
``target-vfe - vfe-tolerance`` before anything is trained on or written. A reply left with
no image (a client sending originals, misconfigured or malicious) is rejected.
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import Message

from common.payloads import PayloadError, check_images
from common.visualmixer import visual_feature_entropy
from server.exchanges.base import Exchange, Kept, client_train_metrics
from server.messaging import Messenger, log, reply_arrays


class ImagesExchange(Exchange):
    name = "images"

    def configure(self, server_round: int, messenger: Messenger) -> list[Message]:
        return messenger.to_every_node("query.images", server_round)  # nothing goes down

    def validate(self, reply: Message) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        side = self.trainer.config.image_size
        shape = (self.trainer.channels, side, side)
        limit = self.config.upload_samples or 10**9
        metrics = self.checked_metrics(reply, "query.images", arrays=True)
        images, labels = check_images(reply_arrays(reply), shape, self.trainer.num_classes, limit)
        if metrics["num-examples"] != len(labels):
            raise PayloadError(f"num-examples={metrics['num-examples']} but {len(labels)} images")
        if self.config.uses_visualmixer:
            images, labels, metrics = self.privacy_guard(reply.metadata.src_node_id, images, labels, metrics)
        return images, labels, metrics

    def privacy_guard(
        self, node: int, images: torch.Tensor, labels: torch.Tensor, metrics: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Keep the images whose measured VFE reaches ``target-vfe - vfe-tolerance``."""
        floor = self.config.target_vfe - self.config.vfe_tolerance
        vfe = visual_feature_entropy(images, self.config.region_size)
        passed = vfe >= floor
        dropped = int((~passed).sum())
        if dropped == len(images):
            raise PayloadError(
                f"none of its {len(images)} images reaches VFE {floor:.3f} (target-vfe "
                f"{self.config.target_vfe} - vfe-tolerance {self.config.vfe_tolerance}); the highest "
                f"measured is {float(vfe.max()):.3f}, whatever the reply claims: not obfuscated"
            )
        if dropped:
            log.warning("Dropped %d of %d images from node %d: measured VFE below %.3f (lowest %.3f)",
                        dropped, len(images), node, floor, float(vfe.min()))
        return images[passed], labels[passed], {**metrics, "num-examples": int(passed.sum()), "vfe-guard-dropped": dropped}

    def update(self, server_round: int, kept: Kept, messenger: Messenger) -> dict[str, Any]:
        loss = self.trainer.train_on_uploads([(images, labels) for _, (images, labels, _) in kept])
        row = client_train_metrics([m for _, (_, _, m) in kept])
        if self.config.uses_visualmixer:
            row["vfe-guard-dropped"] = sum(m["vfe-guard-dropped"] for _, (_, _, m) in kept)
        # The server's loss, not the clients'; steps skipped on a non-finite loss or gradient.
        return {**row, "train-loss": loss, "skipped-steps": self.trainer.skipped_steps}
