"""Attack 4: split-learning activations back to images."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from .inverse_network import InverseUNet, fit_decoder
from .metrics import as_unit


def train_feature_decoder(
    client_layers: nn.Module,
    public_images: torch.Tensor,
    mixer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    steps: int = 500,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    width: int = 32,
) -> InverseUNet:
    """A decoder from cut-layer activations back to the original images.

    Attacker knows: the client layers' weights (white box: in this app the server
    initialises them and sends them to the clients), the defence's public settings
    (``mixer``: the VisualMixer the clients apply before their layers, or ``None``) and
    public images of the same kind. It passes its public images through ``mixer`` and the
    client layers and learns to map the activations back to the clean images; apply it
    with ``decoder(activations)``.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    # The attacker's own copy: ``Module.to`` and ``eval`` act in place, and the caller's
    # layers (a slice of a trained model) must stay on their device, in their mode.
    client_layers = copy.deepcopy(client_layers).to(device).eval().requires_grad_(False)

    def encode(clean: torch.Tensor) -> torch.Tensor:
        x = mixer(clean) if mixer is not None else clean
        return client_layers(as_unit(x))

    with torch.no_grad():
        probe = encode(public_images[:2].to(device))
    upscale = public_images.shape[-1] // probe.shape[-1]
    decoder = InverseUNet(probe.shape[1], public_images.shape[1], width=width, upscale=upscale)
    return fit_decoder(
        decoder, encode, public_images, steps, batch_size, device=device,
        generator=generator, progress=progress,
    )
