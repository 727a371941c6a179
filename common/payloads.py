"""Checks the server runs on every client upload before using it.

Clients are not trusted to be well-formed: a reply may miss keys, carry the wrong dtype or
shape, labels out of range, NaNs, more samples than configured, or images that are not
uint8. Each check raises :class:`PayloadError` with a reason the server logs next to the
node id; the server then drops that reply and goes on with the others. The checks take the
torch tensors of a record (``ArrayRecord.to_torch_state_dict()``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class PayloadError(ValueError):
    """An upload that must not be used; the message says why."""


def require(arrays: Mapping[str, torch.Tensor], *keys: str) -> list[torch.Tensor]:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise PayloadError(f"missing key(s) {missing}; got {sorted(arrays)}")
    return [arrays[k] for k in keys]


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
    """Obfuscated uint8 images (N, C, H, W) and their labels."""
    images, labels = require(arrays, "images", "labels")
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


def check_activations(
    arrays: Mapping[str, torch.Tensor], activation_shape: tuple[int, ...], num_classes: int, max_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut-layer activations (N, *activation_shape), float32 and finite, and their labels."""
    activations, labels = require(arrays, "activations", "labels")
    if activations.dtype != torch.float32:
        raise PayloadError(f"activations must be float32, got {activations.dtype}")
    if activations.ndim != 1 + len(activation_shape) or tuple(activations.shape[1:]) != tuple(activation_shape):
        raise PayloadError(
            f"activations must have shape (N, {', '.join(map(str, activation_shape))}), "
            f"got {tuple(activations.shape)}"
        )
    check_count(len(activations), max_samples)
    if not bool(torch.isfinite(activations).all()):
        raise PayloadError("activations contain non-finite values (NaN or inf)")
    check_labels(labels, len(activations), num_classes)
    return activations, labels


def check_weights(arrays: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> None:
    """A model update with exactly the reference's keys, shapes and dtypes, all finite."""
    if set(arrays) != set(reference):
        missing, extra = set(reference) - set(arrays), set(arrays) - set(reference)
        raise PayloadError(f"weights keys differ: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for key, expected in reference.items():
        got = arrays[key]
        if got.shape != expected.shape or got.dtype != expected.dtype:
            raise PayloadError(
                f"weights[{key!r}] is {got.dtype}{list(got.shape)}, expected {expected.dtype}{list(expected.shape)}"
            )
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise PayloadError(f"weights[{key!r}] contains non-finite values")


def check_num_examples(metrics: Mapping[str, object], max_samples: int | None = None) -> int:
    count = metrics.get("num-examples")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise PayloadError(f"metrics num-examples must be an int >= 1, got {count!r}")
    if max_samples is not None and count > max_samples:
        raise PayloadError(f"num-examples={count} is more than the partition allows ({max_samples})")
    return count
