"""Attack 3: reconstruct training images from one client update (Inverting Gradients)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F

from ..dp import PrivacyLedger, PrivateTraining
from ..training import to_model_input


def client_update(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mixer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dp: tuple[float, float] | None = None,
    lr: float = 0.01,
) -> list[torch.Tensor]:
    """What the server learns from one local SGD step on ``images``: (w_before - w_after) / lr.

    The client's defence is applied as in training: ``mixer`` obfuscates the batch first,
    ``dp = (sigma, max_grad_norm)`` clips per-sample gradients and adds Gaussian noise
    (Opacus). ``model`` is left untouched.
    """
    local = copy.deepcopy(model).train()
    before = [p.detach().clone() for p in local.parameters()]
    optimizer = torch.optim.SGD(local.parameters(), lr=lr)
    x = mixer(images) if mixer is not None else images
    net = local
    if dp is not None:
        sigma, clip = dp
        private = PrivateTraining(
            local, optimizer, sigma=sigma, max_grad_norm=clip, expected_batch_size=len(labels),
            sample_rate=1.0, ledger=PrivacyLedger(),
        )
        net, optimizer = private.module, private.optimizer
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(net(to_model_input(x)), labels).backward()
    optimizer.step()
    return [(b - p.detach()) / lr for b, p in zip(before, local.parameters(), strict=True)]


def recover_labels(gradients: list[torch.Tensor], count: int) -> torch.Tensor:
    """The ``count`` labels in the batch, from the last layer's bias gradient.

    For softmax cross-entropy the bias gradient is mean(softmax - onehot): an entry is
    negative only for a class present in the batch (iDLG; exact when the batch's labels
    are distinct). Returns the ``count`` most negative classes.
    """
    bias = gradients[-1]
    if bias.dim() != 1:
        raise ValueError("the model's last parameter must be the output layer's bias")
    return bias.argsort()[:count].sort().values


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def invert_gradients(
    model: nn.Module,
    gradients: list[torch.Tensor],
    labels: torch.Tensor,
    image_shape: tuple[int, int, int],
    steps: int = 300,
    lr: float = 0.1,
    tv_weight: float = 1e-2,
    seed: int = 0,
) -> torch.Tensor:
    """Images whose gradient points the same way as the observed one (Geiping et al. 2020).

    Attacker knows: the model the client started from (the server sent it), the update
    (as :func:`client_update` returns it), the batch size, and the labels (recovered with
    :func:`recover_labels`). It minimises ``1 - cos(grad(x), observed) + tv * TV(x)`` over
    dummy images x in [0, 1] with signed Adam steps, as Inverting Gradients does. It sees
    whatever the client trained on: for VisualMixer that is the *obfuscated* batch, which
    the two-stage attack then feeds to attacks 1 and 2. Returns float images in [0, 1].
    """
    generator = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(model).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    target = torch.cat([g.flatten() for g in gradients])
    x = torch.rand((len(labels), *image_shape), generator=generator).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(steps * f) for f in (0.375, 0.625, 0.875)], 0.1)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        flat = torch.cat([g.flatten() for g in grads])
        objective = 1 - F.cosine_similarity(flat, target, dim=0) + tv_weight * _total_variation(x)
        objective.backward()
        x.grad.sign_()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach()


def match(reconstructions: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """Reorder reconstructions to the originals they are closest to (MSE, one-to-one):
    the attack does not know the batch order, the scoring does."""
    cost = torch.cdist(reconstructions.flatten(1).float(), originals.flatten(1).float())
    rows, cols = linear_sum_assignment(cost.numpy())
    out = torch.empty_like(reconstructions)
    out[torch.as_tensor(cols)] = reconstructions[torch.as_tensor(rows)]
    return out
