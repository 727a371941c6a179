"""Training and evaluation loops shared by clients, server, simulations and tests.

Images stay uint8 until the last moment: a batch is drawn, obfuscated by the mixer (when
there is one) on the device, and only then scaled to [0, 1] for the model. A model trained
on obfuscated images is also *used* on obfuscated images (:func:`predict`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial

import torch
from torch import nn

from .st_adam import STAdam

# The optimizers by run-config name: SGD with momentum 0.9, Adam, and ST-Adam.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": partial(torch.optim.SGD, momentum=0.9),
    "adam": torch.optim.Adam,
    "st-adam": STAdam,
}
Mixer = Callable[[torch.Tensor], torch.Tensor]

# Values (images x channels x pixels) obfuscated per mixer call in training: the batches of
# several steps are drawn ahead and obfuscated together, because the transform costs about
# half as much per image at a thousand 32x32 images as at 64 (fixed costs per call). Every
# drawn image is still obfuscated afresh; nothing is cached across steps.
OBFUSCATION_CHUNK_VALUES = 1024 * 3 * 32 * 32
# On CUDA a call is bound by per-operator launch overhead, not by the data: 1024 images take
# about 1.3x as long as 256 (docs/gpu.md), so chunks there are this many times larger: a
# whole round of the default `weights` client (60 steps of 64 images) in one call.
CUDA_CHUNK_FACTOR = 4


def obfuscation_chunk_values(device: torch.device | str) -> int:
    """Values obfuscated per mixer call on ``device``."""
    factor = CUDA_CHUNK_FACTOR if torch.device(device).type == "cuda" else 1
    return OBFUSCATION_CHUNK_VALUES * factor


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available on this machine")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return device
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {name!r}")


# round_seed's round for the once-per-run obfuscation of evaluation sets (rounds start at
# 1), and its node for the server, whose partition ids would otherwise start at 0.
EVALUATION_ROUND = 0
SERVER_NODE = -1


def round_seed(seed: int, server_round: int, node: int) -> int:
    """A seed unique to (run seed, round, node): the same batch and shuffle on recompute.

    See :data:`EVALUATION_ROUND` and :data:`SERVER_NODE`.
    """
    return (seed * 1_000_003 + server_round * 1009 + node) % (2**63)


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
    return OPTIMIZERS[name](params, lr=lr)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (0..255) -> float (0..1); float images pass through."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def train_steps(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    steps: int,
    batch_size: int,
    mixer: Mixer | None = None,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> list[float]:
    """``steps`` SGD steps on random batches (with replacement across steps); the losses."""
    size = min(batch_size, len(labels))
    batches = (torch.randint(0, len(labels), (size,), generator=generator) for _ in range(steps))
    return train_on_batches(model, images, labels, optimizer, batches, mixer, device)


def train_on_batches(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[torch.Tensor],
    mixer: Mixer | None = None,
    device: torch.device | str = "cpu",
) -> list[float]:
    """One optimizer step per batch of indices (e.g. Poisson batches for DP-SGD); the losses.

    A step whose loss or gradient is not finite is not taken, so one bad batch cannot make
    the model NaN; its loss is recorded as NaN (see :func:`mean_loss`)."""
    model.train()
    losses = []
    for x, y in obfuscated_batches(images, labels, batches, mixer, device):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(to_model_input(x)), y)
        loss.backward()
        if finite_step(loss, model.parameters()):
            optimizer.step()
            losses.append(float(loss.detach()))
        else:
            optimizer.zero_grad(set_to_none=True)
            losses.append(float("nan"))
    return losses


def finite_step(loss: torch.Tensor, parameters: Iterable[nn.Parameter]) -> bool:
    """Whether ``loss`` and every gradient are finite (one device sync for all of them)."""
    checks = [torch.isfinite(loss).all()]
    checks += [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    return bool(torch.stack(checks).all())


def mean_loss(losses: list[float]) -> tuple[float, int]:
    """(mean of the finite losses, or NaN when there is none; how many steps were skipped)."""
    finite = [value for value in losses if math.isfinite(value)]
    return (sum(finite) / len(finite) if finite else float("nan")), len(losses) - len(finite)


def obfuscated_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batches: Iterable[torch.Tensor],
    mixer: Mixer | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) on ``device`` for each non-empty batch of indices, obfuscated by
    ``mixer`` in chunks of up to :func:`obfuscation_chunk_values` values (at least one batch).

    Empty batches are skipped: a Poisson batch can be empty (probability (1-q)^N, ~e^-64 at
    the defaults), and then no step is taken and none is accounted.
    """
    per_image = images[0].numel() if len(images) else 1
    chunk_values = obfuscation_chunk_values(device)
    pending: list[torch.Tensor] = []
    values = 0
    for index in batches:
        if len(index) == 0:
            continue
        pending.append(index)
        values += len(index) * per_image
        if mixer is None or values >= chunk_values:
            yield from _load(images, labels, pending, mixer, device)
            pending, values = [], 0
    yield from _load(images, labels, pending, mixer, device)


def _load(images, labels, pending, mixer, device):
    if not pending:
        return
    index = torch.cat(pending)
    x = images[index].to(device, non_blocking=True)
    if mixer is not None:
        x = mixer(x)
    y = labels[index].to(device, non_blocking=True)
    sizes = [len(i) for i in pending]
    yield from zip(x.split(sizes), y.split(sizes))


def obfuscate_once(
    images: torch.Tensor,
    mixer_for_seed: Callable[[int], Mixer],
    seed: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Every image obfuscated once and reproducibly, returned on the CPU.

    For evaluation sets: obfuscated once per run and reused every round, so round-to-round
    changes in accuracy come from the model, not from a new draw of the shuffle. Chunk ``i``
    (up to :func:`obfuscation_chunk_values` values) uses ``mixer_for_seed(seed + i)``, so chunks
    do not repeat each other's permutations.
    """
    if len(images) == 0:
        return images.clone()
    per_chunk = max(1, obfuscation_chunk_values(device) // images[0].numel())
    return torch.cat([
        mixer_for_seed(seed + i)(chunk.to(device)).cpu()
        for i, chunk in enumerate(images.split(per_chunk))
    ])


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    mixer: Mixer | None = None,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    draws: int = 1,
) -> torch.Tensor:
    """Logits for ``images``; with a mixer the images are obfuscated first, as in training.

    ``draws`` > 1 (with a mixer): test-time averaging, the log of the mean softmax over that
    many independent obfuscations of each image, which smooths out one unlucky shuffle."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            if mixer is None:
                out.append(model(to_model_input(x)).float().cpu())
                continue
            if draws <= 1:
                out.append(model(to_model_input(mixer(x))).float().cpu())
                continue
            logs = torch.stack([model(to_model_input(mixer(x))).float().log_softmax(1) for _ in range(draws)])
            out.append((torch.logsumexp(logs, 0) - math.log(draws)).cpu())
    return torch.cat(out)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mixer: Mixer | None = None,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    draws: int = 1,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on the given images (``draws``: see :func:`predict`)."""
    logits = predict(model, images, mixer, batch_size, device, draws)
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return accuracy, loss


class RecordingMixer:
    """Wraps a VisualMixer and keeps the mean VFE of everything it obfuscated, the
    seconds it took (what privacy costs the client, reported per round) and its retries
    (attempts after each call's first: the calls whose images fell short cost more)."""

    def __init__(self, mixer) -> None:
        self.mixer = mixer
        self.total = 0.0
        self.count = 0
        self.seconds = 0.0
        self.retries = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        result = self.mixer.obfuscate(images)
        self.total += float(result.vfe.sum())  # also waits for a CUDA transform to finish
        self.count += len(result.vfe)
        self.seconds += time.perf_counter() - start
        self.retries += result.attempts - 1
        return result.images

    @property
    def mean_vfe(self) -> float:
        """Mean VFE of the obfuscated images so far (NaN when nothing was obfuscated)."""
        return self.total / self.count if self.count else float("nan")
