"""What a defense is: everything the rest of the system asks of one.

A defense may

* transform a client's images before anything is computed from them
  (:meth:`Defense.image_transform`; VisualMixer, pixelate, blur),
* wrap a client's training (:meth:`Defense.private_training`; DP-SGD),
* add metrics to replies (:attr:`Defense.metric_specs`, :meth:`Defense.reply_metrics`) and
  summarise them per round (:meth:`Defense.round_metrics`),
* check uploads on the server (:meth:`Defense.guard`),
* read run-config keys (:attr:`Defense.keys` of the shared config, :attr:`Defense.options`
  of its own) and refuse settings it cannot honour (:meth:`Defense.check`),
* say what the console draws for it (:attr:`Defense.charts`) and which settings the
  comparison runs it at (:attr:`Defense.comparison_sweep`).

Everything defaults to "does nothing", so a defense states only what it does. Code outside
``common/defenses/`` asks these questions and never branches on a defense's name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from torch import nn

    from common.dp import PrivacyLedger
    from common.run_config import RunConfig

# A reply metric's (type, lowest, highest) value.
MetricSpec = tuple[type, float, float | None]
# Message types whose replies come from a client's training or upload (not evaluation).
UPLOADS = ("train", "query.images", "query.activations")
TRAINING = ("train", "train.apply_gradients")


@dataclass(frozen=True)
class Option:
    """A run-config key that one defense adds: its parser (value -> typed value, raising
    ``ConfigError`` naming the key), one line for the docs, and how it reads in a
    comparison arm's label (``short``; the key itself when None)."""

    parse: Callable[[str, Any], Any]
    doc: str
    short: str | None = None


@dataclass(frozen=True)
class Chart:
    """A console chart over round-row keys: ``series`` are (row key, label); ``target`` a
    run-config key drawn as a horizontal line named ``target_label``; ``per_node`` a row key
    holding {node: value}, one line per node."""

    id: str
    title: str
    series: tuple[tuple[str, str], ...] = ()
    target: str | None = None
    target_label: str = "target"
    per_node: str | None = None
    zero: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "series": [list(s) for s in self.series], "target": self.target,
                "target-label": self.target_label, "per-node": self.per_node, "zero": self.zero}


class ImageTransform:
    """A defense's image transform as a client runs it: uint8 (B, C, H, W) in, the same
    shape and dtype out, on the images' device; it records the seconds it took."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.transform = transform
        self.seconds = 0.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.transform(images)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.seconds += time.perf_counter() - start
        return out

    def reply_metrics(self) -> dict[str, float]:
        """What an upload's reply says of this transform."""
        return {"obfuscation-seconds": self.seconds}

    def cost_metrics(self) -> dict[str, float]:
        """What an evaluation reply says of it (what transforming the held-out set cost)."""
        return {"obfuscation-seconds": self.seconds}


@dataclass
class PrivateRun:
    """A client's training wrapped by a defense: the module and optimizer to step, and the
    metrics to report afterwards (``metrics()``), or ``stopped``: the metrics of a reply
    that trained nothing (e.g. a spent privacy budget)."""

    module: Any = None
    optimizer: Any = None
    metrics: Callable[[], dict[str, Any]] = field(default=lambda: {})
    stopped: dict[str, Any] | None = None
    state_dict: Callable[[], dict[str, torch.Tensor]] | None = None


class Defense:
    """A defense that does nothing; subclasses override what theirs does."""

    name: ClassVar[str] = "none"
    summary: ClassVar[str] = "no defense: originals are used as they are"
    abbreviation: ClassVar[str] = "none"  # in the comparison's arm names
    # Shared run-config keys it reads (its learning keys) and keys of its own.
    keys: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[Mapping[str, Option]] = {}
    # Exchanges it cannot protect -> why (the run config refuses them).
    refused_exchanges: ClassVar[Mapping[str, str]] = {}
    metric_specs: ClassVar[Mapping[str, MetricSpec]] = {}
    charts: ClassVar[tuple[Chart, ...]] = ()
    # (label, run-config key) shown in a run's header in the console.
    headline: ClassVar[tuple[tuple[str, str], ...]] = ()
    # The settings (run-config overrides) ``simulations.compare`` runs it at: one arm each.
    comparison_sweep: ClassVar[tuple[Mapping[str, Any], ...]] = ({},)

    @property
    def transforms_images(self) -> bool:
        """Whether clients' images (and so every evaluation set) are transformed."""
        return type(self).image_transform is not Defense.image_transform

    @property
    def trains_privately(self) -> bool:
        """Whether it wraps clients' training (then batches are Poisson-sampled)."""
        return type(self).private_training is not Defense.private_training

    @property
    def parts(self) -> tuple[Defense, ...]:
        return (self,)

    def check(self, config: RunConfig) -> None:
        """Raise ``ConfigError`` naming the key for settings it cannot honour."""

    def preferred_model(self, config: RunConfig) -> str | None:
        """What ``model = "auto"`` trains under it (None: the default)."""
        return None

    def image_transform(self, config: RunConfig, seed: int | None = None) -> ImageTransform | None:
        """The transform a client applies to its images (seeded where it draws randomness)."""
        return None

    def commuting_shift(self, config: RunConfig, clean_shift: int) -> tuple[int, int] | None:
        """(largest shift, step) in pixels of a flip-shift augmentation that commutes with
        the transform (the server's training on uploads stays what clients could have sent),
        or None when no shift does."""
        return clean_shift, 1

    def reply_metrics(self, message_type: str) -> frozenset[str]:
        """Metric keys it adds to a normal reply to ``message_type``."""
        return frozenset()

    def stopped_reply(self, message_type: str, metrics: Mapping[str, Any]) -> frozenset[str] | None:
        """If ``metrics`` are of a reply to ``message_type`` that trained nothing on its
        account, the keys such a reply carries besides ``num-examples``; else None."""
        return None

    def stop_reason(self, metrics: Mapping[str, Any], config: RunConfig) -> str:
        """Why a reply that :meth:`stopped_reply` recognises trained nothing, in one line."""
        return "the defense stopped the node's training"

    def private_training(
        self, config: RunConfig, model: nn.Module, optimizer: torch.optim.Optimizer, *,
        sample_rate: float, steps: int, expected_batch_size: int, ledger: PrivacyLedger,
    ) -> PrivateRun | None:
        """Wrap ``steps`` training steps of ``model`` at Poisson ``sample_rate``."""
        return None

    def upload_limit(self, samples: int) -> int:
        """Most samples one reply may carry when ``upload-samples`` asks for ``samples``."""
        return samples

    def guard(self, images: torch.Tensor, config: RunConfig) -> list[str | None] | None:
        """Per uploaded image, why the server must not use it (None: usable); None when it
        checks nothing."""
        return None

    def round_metrics(self, replies: list[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
        """The round row's figures from (node id, metrics) of the accepted replies."""
        seconds = [m["obfuscation-seconds"] for _, m in replies if "obfuscation-seconds" in m]
        return {"obfuscation-seconds": round(sum(seconds), 4)} if seconds else {}

    def describe(self) -> dict[str, Any]:
        """What the console's API says of it."""
        return {
            "name": self.name, "summary": self.summary, "keys": [*self.keys, *self.options],
            "refused-exchanges": dict(self.refused_exchanges), "charts": [c.to_dict() for c in self.charts],
            "headline": [list(h) for h in self.headline],
        }


class ImageDefense(Defense):
    """A defense that only transforms images, deterministically: it reports the seconds
    spent and lets the images through the server unchecked."""

    metric_specs: ClassVar[Mapping[str, MetricSpec]] = {"obfuscation-seconds": (float, 0.0, None)}

    def reply_metrics(self, message_type: str) -> frozenset[str]:
        return frozenset({"obfuscation-seconds"}) if message_type in (*UPLOADS, "evaluate") else frozenset()


class Composite(Defense):
    """Several defenses at once (``a+b``): every part's transform, training wrapper, metrics
    and guard. At most one part may transform images and at most one may wrap training."""

    def __init__(self, *parts: Defense, sweep: tuple[Mapping[str, Any], ...] = ({},)) -> None:
        if sum(p.transforms_images for p in parts) > 1 or sum(p.trains_privately for p in parts) > 1:
            raise ValueError("a composite defense holds at most one image transform and one training wrapper")
        self._parts = parts
        self.name = "+".join(p.name for p in parts)
        self.summary = "; ".join(p.summary for p in parts)
        self.abbreviation = "+".join(p.abbreviation for p in parts)
        self.keys = tuple(k for p in parts for k in p.keys)
        self.options = {k: v for p in parts for k, v in p.options.items()}
        self.refused_exchanges = {k: v for p in parts for k, v in p.refused_exchanges.items()}
        self.metric_specs = {k: v for p in parts for k, v in p.metric_specs.items()}
        self.charts = tuple(c for p in parts for c in p.charts)
        self.headline = tuple(h for p in parts for h in p.headline)
        self.comparison_sweep = sweep

    @property
    def parts(self) -> tuple[Defense, ...]:
        return self._parts

    @property
    def transforms_images(self) -> bool:
        return any(p.transforms_images for p in self._parts)

    @property
    def trains_privately(self) -> bool:
        return any(p.trains_privately for p in self._parts)

    def _first(self, method: str, *args, **kwargs):
        for part in self._parts:
            if (result := getattr(part, method)(*args, **kwargs)) is not None:
                return result
        return None

    def check(self, config: RunConfig) -> None:
        for part in self._parts:
            part.check(config)

    def preferred_model(self, config: RunConfig) -> str | None:
        return self._first("preferred_model", config)

    def image_transform(self, config: RunConfig, seed: int | None = None) -> ImageTransform | None:
        return self._first("image_transform", config, seed)

    def commuting_shift(self, config: RunConfig, clean_shift: int) -> tuple[int, int] | None:
        shifts = [p.commuting_shift(config, clean_shift) for p in self._parts]
        if any(s is None for s in shifts):
            return None
        return min(s[0] for s in shifts), max(s[1] for s in shifts)  # steps are powers of two or 1

    def reply_metrics(self, message_type: str) -> frozenset[str]:
        return frozenset().union(*(p.reply_metrics(message_type) for p in self._parts))

    def stopped_reply(self, message_type: str, metrics: Mapping[str, Any]) -> frozenset[str] | None:
        return self._first("stopped_reply", message_type, metrics)

    def stop_reason(self, metrics: Mapping[str, Any], config: RunConfig) -> str:
        part = next(p for p in self._parts if p.stopped_reply(TRAINING[0], metrics) is not None)
        return part.stop_reason(metrics, config)

    def private_training(self, config, model, optimizer, **kwargs) -> PrivateRun | None:
        return self._first("private_training", config, model, optimizer, **kwargs)

    def upload_limit(self, samples: int) -> int:
        return max(p.upload_limit(samples) for p in self._parts)

    def guard(self, images: torch.Tensor, config: RunConfig) -> list[str | None] | None:
        verdicts = [v for p in self._parts if (v := p.guard(images, config)) is not None]
        if not verdicts:
            return None
        return [next((r for r in reasons if r is not None), None) for reasons in zip(*verdicts, strict=True)]

    def round_metrics(self, replies: list[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for part in self._parts:
            row.update(part.round_metrics(replies))
        return row
