"""Figures over several seeds: the mean and the sample standard deviation."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of ``values``; the deviation of one value is 0."""
    if not values:
        raise ValueError("mean_sd of no values")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
