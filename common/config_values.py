"""Checks of run-config values, shared by the run config and the defenses' own keys: an
error names the key, the value and what is allowed."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A run-config value that cannot be used; the message names the key."""


def number(key: str, value: Any, kind: type, minimum: float, maximum: float | None = None, *,
           exclusive: bool = False):
    """``value`` as ``kind`` (int or float) in [``minimum``, ``maximum``], or in
    (``minimum``, ``maximum``] with ``exclusive``; else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"run-config {key}={value!r} must be a number")
    if kind is int and float(value) != int(value):
        raise ConfigError(f"run-config {key}={value!r} must be a whole number")
    value = kind(value)
    if value < minimum or (exclusive and value == minimum) or (maximum is not None and value > maximum):
        low = f"> {minimum}" if exclusive else f">= {minimum}"
        bound = low if maximum is None else f"in {'(' if exclusive else '['}{minimum}, {maximum}]"
        raise ConfigError(f"run-config {key}={value!r} must be {bound}")
    return value
