"""Whether a run is learning: its training loss against the loss of guessing.

A classifier that has learned nothing predicts the class frequencies, and with balanced
classes its cross-entropy is ln(C) for C classes. A run whose ``train-loss`` stays within
``margin * ln(C)`` of that value for ``rounds`` rounds in a row is on that plateau: its
inputs, model or learning rate keep it from learning, and more rounds will not help.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def plateau_warning(losses: Sequence[float | None], num_classes: int, rounds: int, margin: float) -> str | None:
    """The warning for a run whose last ``rounds`` losses (one per round, oldest first) all lie
    within ``margin * ln(num_classes)`` of ln(num_classes); None otherwise (also when
    ``rounds`` is 0, there are fewer losses, or one of them is missing or not finite)."""
    if rounds < 1 or num_classes < 2 or len(losses) < rounds:
        return None
    chance = math.log(num_classes)
    recent = list(losses)[-rounds:]
    if not all(isinstance(x, (int, float)) and math.isfinite(x) and abs(x - chance) <= margin * chance for x in recent):
        return None
    shown = ", ".join(f"{x:.3f}" for x in recent)
    return (
        f"not learning: train-loss stayed within {margin:.0%} of ln({num_classes}) = {chance:.3f}, the loss of "
        f"guessing, for {rounds} rounds ({shown}). Check the data with `visualmixer check DATA_DIR`, "
        "and the input-norm, learning-rate and model keys."
    )
