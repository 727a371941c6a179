"""``dp-sgd``: each client trains with DP-SGD (Opacus; :mod:`common.dp` states the step and
the accounting). It protects what a client's training produces (weights, the client layers
of split learning), not uploaded images, so it refuses the ``images`` exchange.

sigma is chosen up front for the whole run's planned steps (or set by ``noise-multiplier``),
so the planned run ends just under ``target-epsilon``; a client whose next round would pass
the budget trains nothing and replies ``dp-budget-spent``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from common.dp import PrivacyLedger, PrivateTraining, noise_multiplier_for

from .base import TRAINING, Chart, Defense, MetricSpec, PrivateRun

if TYPE_CHECKING:
    import torch
    from torch import nn

    from common.run_config import RunConfig

DP_METRICS = frozenset({"epsilon", "dp-steps", "noise-multiplier"})


def noise_sigma(config: RunConfig, sample_rate: float, steps_per_round: int) -> float:
    """The configured noise multiplier, or the one that makes the planned rounds spend
    exactly the budget."""
    if config.noise_multiplier > 0:
        return config.noise_multiplier
    total = config.num_server_rounds * steps_per_round
    return noise_multiplier_for(config.target_epsilon, config.delta, sample_rate, total)


def ledger_metrics(ledger: PrivacyLedger, sigma: float, delta: float) -> dict[str, Any]:
    return {"epsilon": ledger.epsilon(delta), "dp-steps": ledger.steps, "noise-multiplier": sigma}


class DPSGD(Defense):
    name = "dp-sgd"
    summary = "clients train with DP-SGD (per-sample clipping and Gaussian noise) to a target epsilon"
    abbreviation = "dp"
    keys = ("target-epsilon", "delta", "max-grad-norm", "noise-multiplier")
    refused_exchanges = {
        "images": "DP-SGD noises gradients, it does not hide uploaded images (use an image defense "
                  "such as 'visualmixer', or exchange 'weights' or 'activations' for DP-SGD)",
    }
    metric_specs: ClassVar[Mapping[str, MetricSpec]] = {
        "epsilon": (float, 0.0, None),
        "dp-steps": (int, 0, None),
        "noise-multiplier": (float, 0.0, None),
        "dp-budget-spent": (int, 0, 1),
    }
    charts = (Chart("chart-epsilon", "Cumulative epsilon per node", target="target-epsilon",
                    target_label="budget", per_node="epsilon-per-node", zero=True),)
    headline = (("target epsilon", "target-epsilon"),)
    comparison_sweep = ({"target-epsilon": 1.0}, {"target-epsilon": 3.0}, {"target-epsilon": 8.0})

    def private_training(
        self, config: RunConfig, model: nn.Module, optimizer: torch.optim.Optimizer, *,
        sample_rate: float, steps: int, expected_batch_size: int, ledger: PrivacyLedger,
    ) -> PrivateRun:
        sigma = noise_sigma(config, sample_rate, steps)
        if ledger.after(sigma, sample_rate, steps).epsilon(config.delta) > config.target_epsilon:
            return PrivateRun(stopped={"dp-budget-spent": 1, **ledger_metrics(ledger, sigma, config.delta)})
        private = PrivateTraining(
            model, optimizer, sigma=sigma, max_grad_norm=config.max_grad_norm,
            expected_batch_size=expected_batch_size, sample_rate=sample_rate, ledger=ledger,
        )
        return PrivateRun(
            module=private.module, optimizer=private.optimizer, state_dict=private.state_dict,
            metrics=lambda: ledger_metrics(ledger, sigma, config.delta),
        )

    def reply_metrics(self, message_type: str) -> frozenset[str]:
        return DP_METRICS if message_type in TRAINING else frozenset()

    def stopped_reply(self, message_type: str, metrics: Mapping[str, Any]) -> frozenset[str] | None:
        if message_type in TRAINING and metrics.get("dp-budget-spent"):
            return DP_METRICS | {"dp-budget-spent"}
        return None

    def stop_reason(self, metrics: Mapping[str, Any], config: RunConfig) -> str:
        return (f"privacy budget spent (epsilon {float(metrics['epsilon']):.3f}, next round would "
                f"exceed target-epsilon={config.target_epsilon})")

    def upload_limit(self, samples: int) -> int:
        # The client's batch is Poisson with mean upload-samples: 6 standard deviations above.
        return int(samples + 6 * samples**0.5) + 1

    def round_metrics(self, replies: list[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
        """Each node's total epsilon so far, the smallest sigma, and how many stopped."""
        per_node = {str(node): float(m["epsilon"]) for node, m in replies if "epsilon" in m}
        if not per_node:
            return {}
        row: dict[str, Any] = {"epsilon-max": max(per_node.values()), "epsilon-per-node": per_node}
        sigmas = [float(m["noise-multiplier"]) for _, m in replies if "noise-multiplier" in m]
        if sigmas:
            row["noise-multiplier-min"] = min(sigmas)
        spent = [node for node, m in replies if m.get("dp-budget-spent")]
        if spent:
            row["dp-budget-spent-nodes"] = len(spent)
        return row
