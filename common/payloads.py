"""Checks the server runs on every client upload before using it.

Clients are not trusted to be well-formed: a reply may miss keys or carry extra ones, the
wrong dtype or shape, labels out of range, NaNs, more samples than configured, images that
are not uint8, or metrics of the wrong type or out of range. Each check raises
:class:`PayloadError` with a reason the server logs next to the node id; the server then
drops that reply and goes on with the others. The checks take the torch tensors of a record
(``ArrayRecord.to_torch_state_dict()``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from common.protocol import QUERY_ACTIVATIONS, QUERY_IMAGES, STAGE_METRICS


class PayloadError(ValueError):
    """An upload that must not be used; the message says why."""


def check_labels(labels: torch.Tensor, count: int, num_classes: int) -> None:
    if labels.dtype != torch.int64:
        raise PayloadError(f"labels must be int64, got {labels.dtype}")
    if tuple(labels.shape) != (count,):
        raise PayloadError(f"labels must have shape ({count},), got {tuple(labels.shape)}")
    if count and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise PayloadError(
            f"labels must be in [0, {num_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]"
        )


def check_count(count: int, max_samples: int) -> None:
    if count == 0:
        raise PayloadError("no samples")
    if count > max_samples:
        raise PayloadError(f"{count} samples, more than the configured {max_samples}")


def check_images(
    arrays: Mapping[str, torch.Tensor], image_shape: tuple[int, ...], num_classes: int, max_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Obfuscated uint8 images (N, C, H, W) and their labels, and nothing else."""
    check_array_keys(arrays, QUERY_IMAGES.replies)
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != torch.uint8:
        # uint8 is the only encoding whose range (0..255) is guaranteed by the dtype itself.
        raise PayloadError(f"images must be uint8 (0..255), got {images.dtype}")
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
        raise PayloadError(
            f"images must have shape (N, {', '.join(map(str, image_shape))}), got {tuple(images.shape)}"
        )
    check_count(len(images), max_samples)
    check_labels(labels, len(images), num_classes)
    return images, labels


def check_magnitude(name: str, values: torch.Tensor, max_abs: float) -> None:
    """Finite values no larger than ``max_abs`` in magnitude: a huge finite value (3e38)
    would make the server's layers, and then every honest node's, NaN."""
    if not bool(torch.isfinite(values).all()):
        raise PayloadError(f"{name} contains non-finite values (NaN or inf)")
    if values.numel() and (peak := float(values.abs().max())) > max_abs:
        raise PayloadError(f"{name} holds a value of magnitude {peak:.3g}, above max-abs-value={max_abs:g}")


def check_activations(
    arrays: Mapping[str, torch.Tensor], activation_shape: tuple[int, ...], num_classes: int, max_samples: int,
    max_abs: float = math.inf,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut-layer activations (N, *activation_shape), float32, finite and within ``max_abs``,
    and their labels, and nothing else."""
    check_array_keys(arrays, QUERY_ACTIVATIONS.replies)
    activations, labels = arrays["activations"], arrays["labels"]
    if activations.dtype != torch.float32:
        raise PayloadError(f"activations must be float32, got {activations.dtype}")
    if activations.ndim != 1 + len(activation_shape) or tuple(activations.shape[1:]) != tuple(activation_shape):
        raise PayloadError(
            f"activations must have shape (N, {', '.join(map(str, activation_shape))}), "
            f"got {tuple(activations.shape)}"
        )
    check_count(len(activations), max_samples)
    check_magnitude("activations", activations, max_abs)
    check_labels(labels, len(activations), num_classes)
    return activations, labels


def check_weights(
    arrays: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], max_abs: float = math.inf
) -> None:
    """A model update with exactly the reference's keys, shapes and dtypes, all finite and
    within ``max_abs``."""
    if set(arrays) != set(reference):
        missing, extra = set(reference) - set(arrays), set(arrays) - set(reference)
        raise PayloadError(f"weights keys differ: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for key, expected in reference.items():
        got = arrays[key]
        if got.shape != expected.shape or got.dtype != expected.dtype:
            raise PayloadError(
                f"weights[{key!r}] is {got.dtype}{list(got.shape)}, expected {expected.dtype}{list(expected.shape)}"
            )
        if got.is_floating_point():
            check_magnitude(f"weights[{key!r}]", got, max_abs)


def check_metrics(
    metrics: Mapping[str, object], expected: frozenset[str], specs: Mapping[str, tuple[type, float, float | None]]
) -> dict[str, float | int]:
    """``metrics`` with exactly the ``expected`` keys (``common.protocol.expected_metrics``)
    and any of the optional stage timings (``STAGE_METRICS``), each a finite number of its
    type in its range: ``specs[key]`` is (type, lowest, highest)."""
    keys = set(metrics)
    if keys - STAGE_METRICS.keys() != expected:
        keys = keys - STAGE_METRICS.keys()
        missing, extra = sorted(expected - keys), sorted(keys - expected)
        raise PayloadError(f"metrics keys differ from the protocol's: missing {missing}, unexpected {extra}")
    checked: dict[str, float | int] = {}
    for key in sorted(keys):
        value = metrics[key]
        kind, low, high = specs[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PayloadError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}")
        if kind is int and float(value) != int(value):
            raise PayloadError(f"metric {key!r} must be a whole number, got {value!r}")
        if not math.isfinite(value):
            raise PayloadError(f"metric {key!r} must be finite, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise PayloadError(f"metric {key!r} must be {bound}, got {value!r}")
        checked[key] = kind(value)
    return checked


def check_array_keys(arrays: Mapping[str, torch.Tensor], expected: set[str] | frozenset[str]) -> None:
    """Exactly the arrays the protocol names: nothing missing, nothing extra to store."""
    if set(arrays) != expected:
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        raise PayloadError(f"arrays differ from the protocol's: missing {missing}, unexpected {extra}")
