"""``images``: every node uploads a sample of obfuscated images and labels
(``query.images``); the server trains the shared DNN on what it received.

The server never trusts a reply's claimed VFE: it measures every uploaded image itself
(:func:`common.visualmixer.vfe.region_vfe`) and drops, before anything is trained on or
written, each image that

* scores below ``floor = target-vfe - vfe-tolerance`` overall, or below
  ``floor - CHANNEL_SLACK`` in one of its channels (an original with one channel scrambled), or
* has more than ``PATTERN_SHARE`` of its regions above ``SHUFFLE_VFE_MAX``: VFE near 2 comes
  from an alternating pattern (a checkerboard laid over an original), which no shuffle of a
  region's own values produces at that rate.

A reply left with no image (a client sending originals, misconfigured or malicious) is
rejected. The guard catches unobfuscated and partly obfuscated uploads; it cannot prove
that an image was shuffled (docs/deploy.md, "What the privacy guard establishes").
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import Message

from common.payloads import PayloadError, check_images
from common.visualmixer.vfe import region_vfe
from server.exchanges.base import Exchange, Kept, client_train_metrics
from server.messaging import Messenger, log, reply_arrays

CHANNEL_SLACK = 0.25  # a channel may score this far below the image floor
SHUFFLE_VFE_MAX = 1.5  # region VFE that a shuffle of the region's values rarely exceeds
PATTERN_SHARE = 0.05  # share of an image's regions allowed above SHUFFLE_VFE_MAX


def guard_failures(images: torch.Tensor, region_size: int, floor: float) -> list[str | None]:
    """Per image, why it fails the guard (see the module's docstring), or None when it passes.

    Flat regions (no arrangement to measure) are left out of every mean; a channel or image
    that is flat everywhere passes."""
    vfe = region_vfe(images, region_size).flatten(2)  # (B, C, regions), NaN where flat
    valid = ~vfe.isnan()
    overall = vfe.nan_to_num(0).sum((1, 2)) / valid.sum((1, 2)).clamp_min(1)
    overall = torch.where(valid.any(2).any(1), overall, torch.ones_like(overall))
    channel_mean = vfe.nan_to_num(0).sum(2) / valid.sum(2).clamp_min(1)
    per_channel = torch.where(valid.any(2), channel_mean, torch.ones_like(channel_mean))
    patterned = ((vfe > SHUFFLE_VFE_MAX) & valid).sum((1, 2)) / valid.sum((1, 2)).clamp_min(1)
    reasons: list[str | None] = []
    for image_vfe, channels, share in zip(overall.tolist(), per_channel.tolist(), patterned.tolist()):
        if image_vfe < floor:
            reasons.append(f"VFE {image_vfe:.3f} below {floor:.3f}")
        elif min(channels) < floor - CHANNEL_SLACK:
            reasons.append(f"channel {channels.index(min(channels))} VFE {min(channels):.3f} below {floor - CHANNEL_SLACK:.3f}")
        elif share > PATTERN_SHARE:
            reasons.append(f"{share:.0%} of regions above VFE {SHUFFLE_VFE_MAX} (an alternating pattern, not a shuffle)")
        else:
            reasons.append(None)
    return reasons


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
        """Keep the images that pass :func:`guard_failures` at ``target-vfe - vfe-tolerance``."""
        floor = self.config.target_vfe - self.config.vfe_tolerance
        reasons = guard_failures(images, self.config.region_size, floor)
        passed = torch.tensor([reason is None for reason in reasons], dtype=torch.bool)
        dropped = int((~passed).sum())
        failures = [reason for reason in reasons if reason is not None]
        if dropped == len(images):
            raise PayloadError(
                f"none of its {len(images)} images passes the privacy guard (target-vfe "
                f"{self.config.target_vfe} - vfe-tolerance {self.config.vfe_tolerance}; first: {failures[0]}), "
                "whatever the reply claims: not obfuscated"
            )
        if dropped:
            log.warning("Dropped %d of %d images from node %d by the privacy guard (first: %s)",
                        dropped, len(images), node, failures[0])
        return images[passed], labels[passed], {**metrics, "num-examples": int(passed.sum()), "vfe-guard-dropped": dropped}

    def update(self, server_round: int, kept: Kept, messenger: Messenger) -> dict[str, Any]:
        loss = self.trainer.train_on_uploads([(images, labels) for _, (images, labels, _) in kept])
        row = client_train_metrics([m for _, (_, _, m) in kept])
        if self.config.uses_visualmixer:
            row["vfe-guard-dropped"] = sum(m["vfe-guard-dropped"] for _, (_, _, m) in kept)
        # The server's loss, not the clients'; steps skipped on a non-finite loss or gradient.
        return {**row, "train-loss": loss, "skipped-steps": self.trainer.skipped_steps}
