"""The arms of :mod:`simulations.compare`: one (exchange, defense, setting) each.

The matrix is every registered defense (``common.defenses``) at each setting of its
``comparison_sweep``, in every exchange it does not refuse, plus the region moves and the
finer grid of VisualMixer in the ``images`` exchange, where the mosaic is exposed. An arm's
label is the defense's abbreviation and its setting (``vm-vfe0.8+scope2``); arms keep their
label from run to run, so a comparison reuses what it trained before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Any

from common.defaults import default_region_size
from common.defenses import DEFENSES, Defense, ImageTransform, get_defense
from common.protocol import EXCHANGES
from common.run_config import RunConfig, parse_run_config

# How a shared run-config key reads in an arm's label; a defense's own keys say it in their
# ``Option.short``; others read as they are.
SHORT = {"target-vfe": "vfe", "region-scope": "scope", "region-size": "r", "target-epsilon": "eps"}


@lru_cache(maxsize=8)
def app_values(image_size: int) -> dict[str, Any]:
    """The app's resolved run config at ``image_size`` (labels show settings that differ)."""
    return parse_run_config({"image-size": image_size}).to_dict()


@dataclass(frozen=True)
class Arm:
    exchange: str
    defense: str  # the app's run-config value
    settings: tuple[tuple[str, Any], ...] = ()  # run-config overrides, in label order
    image_size: int = 32

    @classmethod
    def of(cls, exchange: str, defense: str, image_size: int = 32, **settings: Any) -> Arm:
        """``Arm.of("images", "visualmixer", target_vfe=0.8, region_scope=2)``."""
        return cls(exchange, defense, tuple((k.replace("_", "-"), v) for k, v in settings.items()), image_size)

    @cached_property
    def config(self) -> RunConfig:
        """The app's run config of this arm's defense settings (data and training aside)."""
        return parse_run_config({"exchange": self.exchange, "defense": self.defense, "image-size": self.image_size,
                                 "model": "small-cnn", **dict(self.settings)})

    @property
    def defense_plugin(self) -> Defense:
        return get_defense(self.defense)

    @property
    def region_size(self) -> int:
        return self.config.region_size

    @property
    def region_scope(self) -> int:
        return self.config.region_scope

    def transform(self, seed: int | None) -> ImageTransform | None:
        """What a client of this arm does to its images (None: nothing)."""
        return self.defense_plugin.image_transform(self.config, seed)

    def transform_key(self) -> tuple:
        """What an attacker trained against this arm's transform depends on: arms with the
        same key (VisualMixer with or without DP-SGD, say) share it."""
        parts = [p for p in self.defense_plugin.parts if p.transforms_images]
        if not parts:
            return ()
        values = self.config.to_dict()
        keys = sorted({*parts[0].keys, *parts[0].options, "region-size", "region-scope", "image-size"})
        return (parts[0].name, *((k, values[k]) for k in keys))

    @property
    def setting(self) -> str:
        """The settings the defense sweeps, and any other that differs from the app's
        default at this image size."""
        swept = {k for s in self.defense_plugin.comparison_sweep for k in s}
        defaults = app_values(self.image_size)
        short = {**SHORT, **{k: o.short or k for k, o in self.defense_plugin.options.items()}}
        parts = [f"{short.get(k, k)}{v:g}" for k, v in self.settings if k in swept or defaults.get(k) != v]
        return "+".join(parts) or "-"

    @property
    def label(self) -> str:
        """Defense and setting: the same label in every exchange mode."""
        name = self.defense_plugin.abbreviation
        return name if self.setting == "-" else f"{name}-{self.setting}"

    @property
    def name(self) -> str:
        return f"{self.exchange}-{self.label}"


def scope_arms(image_size: int = 32) -> tuple[Arm, ...]:
    """The project's own protection beyond the paper: regions moved within 2x2 groups or
    anywhere, and a grid of regions half the size; in the images exchange."""
    region = default_region_size(image_size)
    return (
        Arm.of("images", "visualmixer", image_size, target_vfe=0.8, region_scope=2),
        Arm.of("images", "visualmixer", image_size, target_vfe=0.8, region_scope=0),
        Arm.of("images", "visualmixer", image_size, target_vfe=0.8, region_size=region // 2),
    )


def matrix(image_size: int = 32) -> list[Arm]:
    """Every valid (exchange, defense, setting) arm. Regions are the app's default for
    ``image_size`` (8 px at 32, 16 at 64, 32 at 224) unless an arm says otherwise."""
    arms = []
    for exchange in EXCHANGES:
        for name, defense in DEFENSES.items():
            if exchange in defense.refused_exchanges:
                continue
            arms += [Arm(exchange, name, tuple(sweep.items()), image_size) for sweep in defense.comparison_sweep]
        if exchange == "images":
            arms += [replace(a, image_size=image_size) for a in scope_arms(image_size)]
    return arms
