"""Attacks on what leaves a client, and the metrics that score them.

Each attack is a function whose docstring says what the attacker knows. They all return
float images in [0, 1] shaped like the originals, so every reconstruction is scored the
same way (:mod:`.metrics`): PSNR, SSIM, VFE, and the accuracy of a recogniser trained on
clean public images (:mod:`.recognition`).

1. :func:`mosaic_attack`               region means of an obfuscated image (the free floor)
2. :func:`train_inverse_network`       learned inverse of VisualMixer (Kerckhoffs)
3. :func:`invert_gradients`            Inverting-Gradients on one client update
4. :func:`train_feature_decoder`       split-learning activations back to images
5. :func:`train_recogniser`            "can a machine still recognise it"
   (:func:`cached_recogniser` keeps a trained one by a hash of its data and settings)
6. :func:`train_statistics_classifier`  a classifier on statistics no in-region shuffle changes
7. :func:`link_originals`               finds an obfuscated image's original in a candidate pool
8. :func:`train_mosaic_recogniser`      adaptive: trained on mosaics of public images
9. :func:`train_obfuscation_recogniser` adaptive: trained on public images obfuscated alike

Attacks 6 to 9 know the algorithm and its settings (adaptive); 1 and 5 are what a person
or an off-the-shelf model does with what it is given (non-adaptive). :data:`ATTACKS`
(:mod:`.registry`) names every attack the comparison and the frontier run.
"""

from .adaptive import MosaicRecogniser, train_mosaic_recogniser, train_obfuscation_recogniser
from .feature_inversion import train_feature_decoder
from .gradient_inversion import client_update, invert_gradients, match, recover_labels
from .inverse_network import InverseUNet, train_inverse_network
from .metrics import psnr, score, ssim
from .mosaic import mosaic_attack
from .recognition import cached_recogniser, flip_and_shift, recognition_accuracy, train_recogniser
from .registry import ATTACKS, NON_ADAPTIVE, Attack, get_attack
from .statistics import (
    StatisticsClassifier,
    group_invariant,
    link_originals,
    region_statistics,
    train_statistics_classifier,
)

__all__ = [
    "ATTACKS",
    "NON_ADAPTIVE",
    "Attack",
    "get_attack",
    "InverseUNet",
    "MosaicRecogniser",
    "StatisticsClassifier",
    "cached_recogniser",
    "flip_and_shift",
    "group_invariant",
    "link_originals",
    "region_statistics",
    "train_mosaic_recogniser",
    "train_obfuscation_recogniser",
    "train_statistics_classifier",
    "client_update",
    "invert_gradients",
    "match",
    "mosaic_attack",
    "psnr",
    "recognition_accuracy",
    "recover_labels",
    "score",
    "ssim",
    "train_feature_decoder",
    "train_inverse_network",
    "train_recogniser",
]
