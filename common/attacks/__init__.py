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
"""

from .feature_inversion import train_feature_decoder
from .gradient_inversion import client_update, invert_gradients, match, recover_labels
from .inverse_network import InverseUNet, train_inverse_network
from .metrics import psnr, score, ssim
from .mosaic import mosaic_attack
from .recognition import recognition_accuracy, train_recogniser

__all__ = [
    "InverseUNet",
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
