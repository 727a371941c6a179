"""DP-SGD with Opacus, with each client's privacy ledger carried across rounds.

A DP-SGD step (Abadi et al. 2016) on a Poisson-sampled batch B (each sample kept with
probability q) is

    g = ( sum_{i in B} clip(grad_i, C) + N(0, sigma^2 C^2 I) ) / (q N),
    clip(v, C) = v * min(1, C / ||v||),

so one sample changes g by at most C before noise. Opacus does the per-sample gradients
(:class:`opacus.GradSampleModule`), clipping and noise (:class:`opacus.optimizers.DPOptimizer`)
and the accounting (:class:`opacus.accountants.RDPAccountant`); this module only wires them
to the way clients train here:

* ``weights``: ``local-steps`` Poisson batches per round, q = batch-size / N.
* ``activations``: one Poisson batch per round, q = upload-samples / N; the client layers
  take one DP-SGD step on the gradient the server returned. DP-SGD protects the *weights*
  of the client layers; the activations the server sees are not noised (the attack suite
  measures what they give away).

The ledger is the accountant's history ``[(sigma, q, steps), ...]``. The ClientApp keeps it
in ``context.state`` and restores it every round, so the epsilon a client reports is its
total over all rounds (Flower's own Opacus example builds a fresh engine per round and so
reports one round's epsilon only). sigma is chosen up front, for the whole run's steps, so
that the planned run ends just under ``target-epsilon``; a client whose next round would
exceed the budget stops training and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from opacus.accountants import RDPAccountant

DEFAULT_DELTA = 1e-5


@lru_cache(maxsize=None)
def opacus() -> SimpleNamespace:
    """The parts of Opacus used here, imported on first use (only DP-SGD arms pay for it).

    Importing Opacus calls ``logging.basicConfig``, which gives the root logger a handler:
    every line of Flower's logger (which propagates to the root) would then print twice,
    DEBUG lines included. The root logger's handlers are put back as they were.
    """
    root = logging.getLogger()
    handlers = list(root.handlers)
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    root.handlers[:] = handlers
    return SimpleNamespace(
        GradSampleModule=GradSampleModule,
        RDPAccountant=RDPAccountant,
        get_noise_multiplier=get_noise_multiplier,
        DPOptimizer=DPOptimizer,
        UniformWithReplacementSampler=UniformWithReplacementSampler,
    )


def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """sigma such that ``steps`` DP-SGD steps at rate ``sample_rate`` spend ``target_epsilon``.

    RDP accounting (the same accountant the ledger uses), so the planned run's epsilon
    lands within 0.01 below the target.
    """
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
    return float(
        opacus().get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
            steps=steps, accountant="rdp",
        )
    )


@dataclass
class PrivacyLedger:
    """Every DP-SGD step a client took: ``history`` holds ``(sigma, q, steps)`` entries."""

    history: list[tuple[float, float, int]] = field(default_factory=list)

    def accountant(self) -> RDPAccountant:
        accountant = opacus().RDPAccountant()
        accountant.history = list(self.history)
        return accountant

    def epsilon(self, delta: float = DEFAULT_DELTA) -> float:
        """Total epsilon spent so far (RDP, at ``delta``); 0 before any step."""
        return float(self.accountant().get_epsilon(delta)) if self.history else 0.0

    @property
    def steps(self) -> int:
        return sum(int(s) for _, _, s in self.history)

    def after(self, sigma: float, sample_rate: float, steps: int) -> "PrivacyLedger":
        """The ledger as it would be after ``steps`` more steps (to check a budget first)."""
        return PrivacyLedger([*self.history, (sigma, sample_rate, steps)])

    def record(self, sigma: float, sample_rate: float) -> None:
        """One step, merged into the last entry when it has the same (sigma, q)."""
        if self.history and self.history[-1][:2] == (sigma, sample_rate):
            s, q, n = self.history[-1]
            self.history[-1] = (s, q, n + 1)
        else:
            self.history.append((sigma, sample_rate, 1))

    # Flower records hold flat lists of scalars; these two keep the ClientApp's side short.
    def to_lists(self) -> dict[str, list]:
        return {
            "sigma": [float(s) for s, _, _ in self.history],
            "sample-rate": [float(q) for _, q, _ in self.history],
            "steps": [int(n) for _, _, n in self.history],
        }

    @classmethod
    def from_lists(cls, lists) -> "PrivacyLedger":
        return cls(list(zip(lists["sigma"], lists["sample-rate"], lists["steps"], strict=True)))


class PrivateTraining:
    """``module`` and ``optimizer`` made private: per-sample clipping to ``max_grad_norm``,
    Gaussian noise of std ``sigma * max_grad_norm``, mean over ``expected_batch_size``; every
    optimizer step is recorded in ``ledger`` at ``sample_rate``.

    Use :attr:`module` and :attr:`optimizer` as usual; :meth:`state_dict` returns the plain
    module's weights (no ``_module.`` prefix), which is what goes back to the server.
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sigma: float,
        max_grad_norm: float,
        expected_batch_size: int,
        sample_rate: float,
        ledger: PrivacyLedger,
    ) -> None:
        self.module = opacus().GradSampleModule(module)
        self.optimizer = opacus().DPOptimizer(
            optimizer, noise_multiplier=sigma, max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
        )
        self.optimizer.attach_step_hook(lambda _: ledger.record(sigma, sample_rate))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.module._module.state_dict().items()}


def poisson_batches(
    num_samples: int, sample_rate: float, steps: int, generator: torch.Generator | None = None
):
    """``steps`` batches of indices, each sample in each batch with probability ``sample_rate``
    (Opacus' own sampler, the one its DP data loader uses)."""
    sampler = opacus().UniformWithReplacementSampler(
        num_samples=num_samples, sample_rate=sample_rate, generator=generator, steps=steps
    )
    for batch in sampler:
        yield torch.as_tensor(batch, dtype=torch.long)
