"""Attack 2: a learned inverse of VisualMixer (an ITN-style attack)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .metrics import as_unit


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(),
    )


class InverseUNet(nn.Module):
    """A small U-Net (two down, two up, skip connections): float image -> float image.

    ``in_channels`` may differ from ``out_channels`` and the input may be smaller than the
    output (``upscale``), so the same net also decodes split-learning activations.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, width: int = 32, upscale: int = 1) -> None:
        super().__init__()
        self.upscale = upscale
        self.enc1 = _block(in_channels, width)
        self.enc2 = _block(width, 2 * width)
        self.mid = _block(2 * width, 4 * width)
        self.dec2 = _block(4 * width + 2 * width, 2 * width)
        self.dec1 = _block(2 * width + width, width)
        self.out = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upscale > 1:
            x = F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2), e1], 1))
        return torch.sigmoid(self.out(d1))


def fit_decoder(
    decoder: nn.Module,
    encode: Callable[[torch.Tensor], torch.Tensor],
    public_images: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> nn.Module:
    """Train ``decoder`` so that ``decoder(encode(x)) ~ x`` on public images (MSE + L1).

    ``encode`` maps uint8 images to what the attacker observes; it is called on every batch,
    so a VisualMixer inside it draws fresh randomness each time, as in deployment.
    """
    decoder.to(device).train()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    with torch.enable_grad():  # callers may hold a no_grad context for inference
        _fit(decoder, encode, public_images, optimizer, steps, batch_size, device, generator, progress)
    return decoder.eval()


def _fit(decoder, encode, public_images, optimizer, steps, batch_size, device, generator, progress) -> None:
    for step in range(steps):
        index = torch.randint(0, len(public_images), (min(batch_size, len(public_images)),), generator=generator)
        clean = public_images[index].to(device)
        with torch.no_grad():
            observed = encode(clean)
        target = as_unit(clean)
        out = decoder(observed)
        loss = F.mse_loss(out, target) + 0.1 * F.l1_loss(out, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step)


def train_inverse_network(
    public_images: torch.Tensor,
    mixer: Callable[[torch.Tensor], torch.Tensor],
    steps: int = 500,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    width: int = 32,
) -> InverseUNet:
    """A U-Net (``width`` channels at full resolution) that maps obfuscated images back to
    their originals.

    Attacker knows: the algorithm and its settings (Kerckhoffs: ``mixer`` is the published
    VisualMixer at the victims' target VFE and region size), and public images of the same
    kind (``public_images``, uint8, none of them the victims'). It obfuscates its own images
    with fresh randomness and learns the inverse; apply it with ``net(as_unit(obfuscated))``.
    The shuffle has no key to learn, so what it can learn is the image prior: which
    arrangement of a region's values is most likely.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = InverseUNet(public_images.shape[1], public_images.shape[1], width=width)
    return fit_decoder(
        net, lambda x: as_unit(mixer(x)), public_images, steps, batch_size, device=device,
        generator=generator, progress=progress,
    )
