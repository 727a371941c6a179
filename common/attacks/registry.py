"""Every attack by name: what it reads, whether it knows the algorithm and its settings
(adaptive), and what it returns. The comparison (:mod:`simulations.compare_attacks`), the
frontier (:mod:`simulations.privacy_frontier`) and the report read names from here, so one
attack is spelled one way in every table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Attack:
    """``reads``: the exchange whose payload it attacks; ``output``: ``reconstruction``
    (images, scored by PSNR/SSIM/VFE and labelled by a clean-trained recogniser),
    ``labels`` (it labels the victims itself) or ``linkage`` (it finds each victim's
    original among candidates)."""

    name: str
    reads: str
    adaptive: bool
    output: str
    summary: str


ATTACKS: dict[str, Attack] = {
    a.name: a
    for a in (
        Attack("observed", "images", False, "reconstruction", "the uploaded images as they are"),
        Attack("mosaic", "images", False, "reconstruction", "region means of the uploaded images"),
        Attack("inverse-net", "images", True, "reconstruction", "a U-Net trained to undo the transform"),
        Attack("statistics", "images", True, "labels", "a classifier on region statistics, trained on clean images"),
        Attack("statistics-obf", "images", True, "labels",
               "the same classifier trained on public images transformed alike"),
        Attack("mosaic-trained", "images", True, "labels", "a recogniser trained on mosaics of public images"),
        Attack("obfuscation-trained", "images", True, "labels",
               "a recogniser trained on public images transformed alike"),
        Attack("linkage", "images", True, "linkage", "each victim's original found among candidates"),
        Attack("feature-inversion", "activations", True, "reconstruction",
               "a decoder from cut-layer activations back to images"),
        Attack("gradient-inversion", "weights", False, "reconstruction", "Inverting Gradients on one client update"),
        Attack("gi+mosaic", "weights", False, "reconstruction", "region means of what gradient inversion recovers"),
        Attack("gi+inverse-net", "weights", True, "reconstruction", "the inverse network on what it recovers"),
    )
}
NON_ADAPTIVE = frozenset(name for name, a in ATTACKS.items() if not a.adaptive)


def names(output: str | None = None, reads: str | None = None) -> tuple[str, ...]:
    """Attack names in registry order, optionally only those with this ``output`` / ``reads``."""
    return tuple(n for n, a in ATTACKS.items() if (output is None or a.output == output)
                 and (reads is None or a.reads == reads))


def get_attack(name: str) -> Attack:
    try:
        return ATTACKS[name]
    except KeyError:
        raise KeyError(f"attack {name!r} is not one of: {', '.join(ATTACKS)}") from None
