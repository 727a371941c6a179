"""``visualmixer``: clients shuffle pixels inside regions (and move regions with
``region-scope``) until each image reaches ``target-vfe``; the server measures what it
receives.

The guard (:func:`guard_failures`) never trusts a reply's claimed VFE: the server measures
every uploaded image itself (:func:`common.visualmixer.vfe.region_vfe`) and drops each image
that

* scores below ``floor = target-vfe - vfe-tolerance`` overall, or below
  ``floor - CHANNEL_SLACK`` in one of its channels (an original with one channel scrambled), or
* has more than ``PATTERN_SHARE`` of its regions above ``SHUFFLE_VFE_MAX``: VFE near 2 comes
  from an alternating pattern (a checkerboard laid over an original), which no shuffle of a
  region's own values produces at that rate.

It catches unobfuscated and partly obfuscated uploads; it cannot prove that an image was
shuffled (docs/deploy.md, "What the privacy guard establishes").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from common.config_values import ConfigError
from common.training import RecordingMixer
from common.visualmixer import Obfuscation, obfuscate
from common.visualmixer.vfe import region_vfe

from .base import UPLOADS, Chart, Defense, ImageTransform, MetricSpec

if TYPE_CHECKING:
    from common.run_config import RunConfig

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
    for image_vfe, channels, share in zip(overall.tolist(), per_channel.tolist(), patterned.tolist(), strict=True):
        if image_vfe < floor:
            reasons.append(f"VFE {image_vfe:.3f} below {floor:.3f}")
        elif min(channels) < floor - CHANNEL_SLACK:
            worst = min(channels)
            reasons.append(f"channel {channels.index(worst)} VFE {worst:.3f} below {floor - CHANNEL_SLACK:.3f}")
        elif share > PATTERN_SHARE:
            reasons.append(f"{share:.0%} of regions above VFE {SHUFFLE_VFE_MAX} (an alternating pattern, not a shuffle)")
        else:
            reasons.append(None)
    return reasons


@dataclass(frozen=True)
class MixerSettings:
    """A run's VisualMixer: :func:`common.visualmixer.obfuscate` with its settings (the
    torchvision-style class would import torchvision on every node for nothing)."""

    target_vfe: float
    region_size: int
    region_scope: int
    seed: int | None = None

    def obfuscate(self, images: torch.Tensor) -> Obfuscation:
        return obfuscate(images, self.target_vfe, region_size=self.region_size, region_scope=self.region_scope,
                         seed=self.seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.obfuscate(images).images


class MixerTransform(ImageTransform):
    """VisualMixer as a client runs it: also reports the mean VFE sent and the retries."""

    def __init__(self, mixer: MixerSettings) -> None:
        self.recording = RecordingMixer(mixer)  # times itself, waiting for CUDA too
        super().__init__(self.recording)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.recording(images)

    def reply_metrics(self) -> dict[str, float]:
        return {"vfe": self.recording.mean_vfe, **self.cost_metrics()}

    def cost_metrics(self) -> dict[str, float]:
        return {"obfuscation-seconds": self.recording.seconds, "obfuscation-retries": self.recording.retries}


class VisualMixer(Defense):
    name = "visualmixer"
    summary = "pixels shuffled inside regions (and regions moved) to a target VFE"
    abbreviation = "vm"
    keys = ("target-vfe", "region-size", "region-scope", "vfe-tolerance")
    # A region's VFE is at most 2 (a checkerboard of two values), so an image's mean is too.
    metric_specs: ClassVar[Mapping[str, MetricSpec]] = {
        "vfe": (float, 0.0, 2.0),
        "obfuscation-seconds": (float, 0.0, None),
        "obfuscation-retries": (int, 0, None),
    }
    charts = (
        Chart("chart-vfe", "VFE of what was received", (("vfe-sent", "mean VFE sent"),), target="target-vfe"),
        Chart("chart-obfuscation", "VisualMixer cost (summed over nodes)",
              (("obfuscation-seconds", "seconds"), ("obfuscation-retries", "retries")), zero=True),
    )
    headline = (("target VFE", "target-vfe"),)
    comparison_sweep = ({"target-vfe": 0.5}, {"target-vfe": 0.8}, {"target-vfe": 1.0})

    def check(self, config: RunConfig) -> None:
        grid = config.image_size // config.region_size
        if config.region_scope > 1 and grid % config.region_scope:
            raise ConfigError(
                f"run-config region-scope={config.region_scope} must divide the {grid}x{grid} "
                f"grid of regions (region-size={config.region_size}), or be 0 (anywhere) or 1 (in place)"
            )
        if config.server_augment == "flip-shift" and config.region_scope != 1:
            raise ConfigError(
                f"run-config server-augment='flip-shift' with region-scope={config.region_scope} is refused: a shift "
                "cuts regions moved across the image at its edge unlike the originals', so it does not "
                "commute with VisualMixer (use 'flip', or region-scope=1)"
            )

    def preferred_model(self, config: RunConfig) -> str | None:
        """``region-invariant`` with regions in place (scope 1), where it beat the small CNN
        at every budget measured on CIFAR-10 (docs/results, "Training longer"): its stem
        sees nothing an in-region shuffle changes. With regions moved its grid of regions
        is scrambled too, which was not measured, so the default model stays."""
        return "region-invariant" if config.region_scope == 1 else None

    def transform(self, config: RunConfig, seed: int | None = None) -> MixerSettings:
        """The bare transform of this run's ``target-vfe``, ``region-size`` and ``region-scope``."""
        return MixerSettings(config.target_vfe, config.region_size, config.region_scope, seed)

    def image_transform(self, config: RunConfig, seed: int | None = None) -> MixerTransform:
        return MixerTransform(self.transform(config, seed))

    def commuting_shift(self, config: RunConfig, clean_shift: int) -> tuple[int, int] | None:
        # Whole regions keep the region grid; moved regions are cut at the edge by any shift.
        return (config.region_size, config.region_size) if config.region_scope == 1 else None

    def reply_metrics(self, message_type: str) -> frozenset[str]:
        if message_type in UPLOADS:
            return frozenset(self.metric_specs)
        if message_type == "evaluate":
            return frozenset({"obfuscation-seconds", "obfuscation-retries"})
        return frozenset()

    def guard(self, images: torch.Tensor, config: RunConfig) -> list[str | None]:
        return guard_failures(images, config.region_size, config.target_vfe - config.vfe_tolerance)

    def round_metrics(self, replies: list[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        sent = [(float(m["vfe"]), int(m["num-examples"])) for _, m in replies if "vfe" in m]
        if sent and (total := sum(n for _, n in sent)):
            row["vfe-sent"] = sum(v * n for v, n in sent) / total
        for key, digits in (("obfuscation-seconds", 4), ("obfuscation-retries", None)):
            values = [m[key] for _, m in replies if key in m]
            if values:
                row[key] = round(sum(values), digits)
        return row
