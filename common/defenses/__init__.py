"""Defenses by run-config name: one module per defense, one line each in :data:`DEFENSES`.

To add one: subclass :class:`Defense` (or :class:`ImageDefense` for an image transform) in a
module here, override what it does, add its line below, and declare any key of its own in
``[tool.flwr.app.config]`` (Flower accepts only keys listed there). See docs/extending.md.
"""

from __future__ import annotations

from .base import Chart, Composite, Defense, ImageDefense, ImageTransform, Option, PrivateRun
from .blur import Blur
from .dp_pix import DPPix
from .dp_sgd import DPSGD
from .pixelate import Pixelate
from .visualmixer import VisualMixer

_visualmixer, _dp_sgd = VisualMixer(), DPSGD()

DEFENSES: dict[str, Defense] = {
    d.name: d
    for d in (
        Defense(),
        _visualmixer,
        _dp_sgd,
        Composite(_visualmixer, _dp_sgd, sweep=({"target-vfe": 0.8, "target-epsilon": 8.0},)),
        Pixelate(),
        Blur(),
        DPPix(),
    )
}


def get_defense(name: str) -> Defense:
    """The registered defense called ``name`` (``KeyError`` naming the choices otherwise)."""
    try:
        return DEFENSES[name]
    except KeyError:
        raise KeyError(f"defense {name!r} is not one of: {', '.join(DEFENSES)}") from None


__all__ = [
    "DEFENSES", "Chart", "Composite", "Defense", "ImageDefense", "ImageTransform", "Option",
    "PrivateRun", "get_defense",
]
