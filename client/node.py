"""What one edge node does, in plain PyTorch (no Flower types): the ClientApp calls these.

A node holds its partition of the data (simulation) or its own ``data-dir`` (deployment),
and obfuscates on its own device before anything is returned for upload.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from common.data import ImageSet, client_partition
from common.dp import PrivacyLedger, PrivateTraining, noise_multiplier_for, poisson_batches
from common.models import build_model, split_model
from common.run_config import RunConfig, parse_run_config
from common.training import (
    EVALUATION_ROUND,
    RecordingMixer,
    evaluate,
    make_optimizer,
    mean_loss,
    obfuscate_once,
    resolve_device,
    round_seed,
    to_model_input,
    train_on_batches,
    train_steps,
)


log = logging.getLogger("flwr")
_WARNED: set[str] = set()  # data-dir values already warned about in this process

# (images, labels, what obfuscating them cost: obfuscation_cost's metrics) of a node's
# evaluation set
EvaluationSet = tuple[torch.Tensor, torch.Tensor, dict[str, float]]


def obfuscation_cost(mixers: list[RecordingMixer]) -> dict[str, float]:
    """What the client reports of VisualMixer's cost: seconds spent in it and retries
    (attempts after each call's first, see ``Obfuscation.attempts``)."""
    return {
        "obfuscation-seconds": sum(m.seconds for m in mixers),
        "obfuscation-retries": sum(m.retries for m in mixers),
    }


@dataclass
class Node:
    config: RunConfig
    partition_id: int
    train_set: ImageSet
    held_out: ImageSet
    device: torch.device

    @classmethod
    def from_context(cls, context) -> "Node":
        """Build from a Flower ``Context``: run config plus node config.

        Node config (``--node-config`` in deployment, filled in simulation): ``partition-id``
        and ``num-partitions`` (default 0 and 1: the node's whole data set), ``data-dir``
        and ``device`` (override the run config's).
        """
        config = parse_run_config(context.run_config)
        node_config = context.node_config
        partition_id = int(node_config.get("partition-id", 0))
        num_partitions = int(node_config.get("num-partitions", 1))
        data_dir = str(node_config.get("data-dir", config.data_dir))
        if config.dataset == "shapes" and data_dir and data_dir not in _WARNED:
            _WARNED.add(data_dir)
            log.warning("data-dir=%r is ignored: dataset='shapes' is generated, not read from disk", data_dir)
        device = resolve_device(str(node_config.get("device", config.device)))
        train_set, held_out = client_partition(
            config.dataset, data_dir, partition_id, num_partitions,
            config.partitioning, config.dirichlet_alpha, config.seed, config.bad_images, config.image_size,
        )
        return cls(config, partition_id, train_set, held_out, device)

    # -- helpers -----------------------------------------------------------------------
    def mixer(self, seed: int | None = None) -> RecordingMixer | None:
        if not self.config.uses_visualmixer:
            return None
        return RecordingMixer(self.config.visualmixer(seed))

    def model(self, state: dict[str, torch.Tensor] | None = None) -> torch.nn.Sequential:
        model = build_model(
            self.config.model, self.train_set.images.shape[1], self.train_set.num_classes, self.config.image_size,
            self.config.region_size, self.config.input_norm,
        )
        if state is not None:
            model.load_state_dict(state)
        return model.to(self.device)

    def _batch(self, server_round: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This round's upload sample: indices drawn from a per-(round, node) seed.

        Under DP-SGD the sample is Poisson (each image kept with probability
        q = upload-samples / N), as the accounting assumes.
        """
        seed = round_seed(self.config.seed, server_round, self.partition_id)
        generator = torch.Generator().manual_seed(seed)
        if self.config.uses_dp:
            index = next(poisson_batches(len(self.train_set), self.split_sample_rate, 1, generator))
        else:
            count = self.config.upload_samples or len(self.train_set)
            index = torch.randperm(len(self.train_set), generator=generator)[:count]
        return self.train_set.images[index], self.train_set.labels[index], seed

    # -- DP-SGD --------------------------------------------------------------------------
    @property
    def split_sample_rate(self) -> float:
        return min(1.0, (self.config.upload_samples or len(self.train_set)) / len(self.train_set))

    def dp_sigma(self, sample_rate: float, steps_per_round: int) -> float:
        """The configured noise multiplier, or the one that makes the planned rounds spend
        exactly the budget (chosen up front for the whole run)."""
        if self.config.noise_multiplier > 0:
            return self.config.noise_multiplier
        total = self.config.num_server_rounds * steps_per_round
        return noise_multiplier_for(self.config.target_epsilon, self.config.delta, sample_rate, total)

    def budget_spent(self, ledger: PrivacyLedger, sigma: float, sample_rate: float, steps: int) -> dict | None:
        """``None`` when ``steps`` more steps fit the budget, else the metrics that say why not."""
        if ledger.after(sigma, sample_rate, steps).epsilon(self.config.delta) <= self.config.target_epsilon:
            return None
        return {"dp-budget-spent": 1, **self.dp_metrics(ledger, sigma)}

    def dp_metrics(self, ledger: PrivacyLedger, sigma: float) -> dict:
        return {
            "epsilon": ledger.epsilon(self.config.delta),
            "dp-steps": ledger.steps,
            "noise-multiplier": sigma,
        }

    @staticmethod
    def _obfuscation_metrics(mixer: RecordingMixer | None) -> dict[str, float]:
        """What a reply says of its obfuscation: mean VFE sent, seconds and retries."""
        if mixer is None:
            return {}
        return {"vfe": mixer.mean_vfe, **obfuscation_cost([mixer])}

    # -- exchange = weights --------------------------------------------------------------
    def train_weights(
        self, state: dict[str, torch.Tensor], ledger: PrivacyLedger | None = None
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """Local training from the global ``state``; DP-SGD (recorded in ``ledger``) when
        the defense includes it."""
        model = self.model(state)
        optimizer = make_optimizer(self.config.optimizer, model.parameters(), self.config.learning_rate)
        mixer = self.mixer()
        images, labels = self.train_set.images, self.train_set.labels
        steps = self.config.local_steps
        extra: dict = {}
        if self.config.uses_dp:
            ledger = ledger if ledger is not None else PrivacyLedger()
            q = min(1.0, self.config.batch_size / len(labels))
            sigma = self.dp_sigma(q, steps)
            if (spent := self.budget_spent(ledger, sigma, q, steps)) is not None:
                return {k: v.cpu() for k, v in state.items()}, {"num-examples": len(labels), **spent}
            private = PrivateTraining(
                model, optimizer, sigma=sigma, max_grad_norm=self.config.max_grad_norm,
                expected_batch_size=self.config.batch_size, sample_rate=q, ledger=ledger,
            )
            batches = poisson_batches(len(labels), q, steps)
            losses = train_on_batches(private.module, images, labels, private.optimizer, batches, mixer, self.device)
            new_state = private.state_dict()
            extra = self.dp_metrics(ledger, sigma)
        else:
            losses = train_steps(model, images, labels, optimizer, steps, self.config.batch_size, mixer, self.device)
            new_state = {k: v.cpu() for k, v in model.state_dict().items()}
        loss, skipped = mean_loss(losses)
        if skipped:
            log.warning("Skipped %d of %d local steps: non-finite loss or gradient", skipped, len(losses))
        metrics = {"num-examples": len(labels), "train-loss": loss}
        return new_state, {**metrics, **self._obfuscation_metrics(mixer), **extra}

    # -- exchange = images ---------------------------------------------------------------
    def obfuscated_upload(self, server_round: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        images, labels, _ = self._batch(server_round)
        mixer = self.mixer()
        if mixer is not None:
            images = mixer(images.to(self.device)).cpu()
        return images, labels, {"num-examples": len(labels), **self._obfuscation_metrics(mixer)}

    # -- exchange = activations (split learning) -----------------------------------------
    def client_layers(self, weights: dict[str, torch.Tensor]):
        client_part, _ = split_model(self.model(), self.config.cut_layer)
        client_part.load_state_dict(weights)
        optimizer = make_optimizer(self.config.optimizer, client_part.parameters(), self.config.learning_rate)
        return client_part, optimizer

    def split_batch(self, server_round: int) -> tuple[torch.Tensor, torch.Tensor, RecordingMixer | None]:
        """This round's images as the client layers see them (obfuscated, still uint8), on
        the device, with their labels; seeded, so a recompute gives the very same shuffle."""
        images, labels, seed = self._batch(server_round)
        mixer = self.mixer(seed)
        images = images.to(self.device)
        if mixer is not None:
            images = mixer(images)
        return images, labels, mixer

    def client_forward(self, client_part: torch.nn.Module, server_round: int):
        """Activations of the client layers; also returns the obfuscated batch, which the
        caller keeps for the backward pass instead of obfuscating it again."""
        images, labels, mixer = self.split_batch(server_round)
        client_part.train()
        with torch.no_grad():
            activations = client_part(to_model_input(images)).float().cpu()
        metrics = {"num-examples": len(labels), **self._obfuscation_metrics(mixer)}
        return activations, labels, metrics, images.cpu()

    def client_backward(
        self, client_part, optimizer, server_round: int, gradient: torch.Tensor,
        ledger: PrivacyLedger | None = None, batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict:
        """Apply the server's gradient at the cut to the client layers (one DP-SGD step,
        recorded in ``ledger``, when the defense includes it). ``batch`` is the obfuscated
        batch the forward pass used; without it the batch is drawn and obfuscated again."""
        if batch is None:
            images, labels, _ = self.split_batch(server_round)
        else:
            images, labels = batch
        x = to_model_input(images.to(self.device))
        extra: dict = {}
        if self.config.uses_dp:
            ledger = ledger if ledger is not None else PrivacyLedger()
            q = self.split_sample_rate
            sigma = self.dp_sigma(q, 1)
            if (spent := self.budget_spent(ledger, sigma, q, 1)) is not None:
                return {"num-examples": len(labels), **spent}
            expected = self.config.upload_samples or len(self.train_set)
            private = PrivateTraining(
                client_part, optimizer, sigma=sigma, max_grad_norm=self.config.max_grad_norm,
                expected_batch_size=expected, sample_rate=q, ledger=ledger,
            )
            client_part, optimizer = private.module, private.optimizer
        client_part.train()
        activations = client_part(x)
        if gradient.shape != activations.shape:
            raise ValueError(
                f"gradient shape {tuple(gradient.shape)} does not match the activations "
                f"{tuple(activations.shape)} of round {server_round}"
            )
        if not bool(torch.isfinite(gradient).all()):
            raise ValueError(f"the server's gradient of round {server_round} holds non-finite values: not applied")
        optimizer.zero_grad(set_to_none=True)
        activations.backward(gradient.to(self.device, activations.dtype))
        optimizer.step()
        if self.config.uses_dp:
            extra = self.dp_metrics(ledger, sigma)
        return {"num-examples": len(labels), **extra}

    # -- evaluation ----------------------------------------------------------------------
    def evaluation_set(self) -> EvaluationSet:
        """(images, labels, what obfuscating cost) of the held-out split as this node
        evaluates it: with VisualMixer, obfuscated once per run from the round-0 seed, so
        every round sees the same copy (the ClientApp keeps it in ``context.state``)."""
        held = self.held_out
        if self.config.eval_samples:
            held = held.subset(torch.arange(min(len(held), self.config.eval_samples)))
        if not self.config.uses_visualmixer:
            return held.images, held.labels, {}
        mixers: list[RecordingMixer] = []

        def mixer_for_seed(seed: int) -> RecordingMixer:
            mixers.append(self.mixer(seed))
            return mixers[-1]

        seed = round_seed(self.config.seed, EVALUATION_ROUND, self.partition_id)
        images = obfuscate_once(held.images, mixer_for_seed, seed, self.device)
        return images, held.labels, obfuscation_cost(mixers)

    def _evaluate(self, model: torch.nn.Module, held: EvaluationSet | None) -> dict:
        images, labels, cost = held if held is not None else self.evaluation_set()
        accuracy, loss = evaluate(model, images, labels, device=self.device)
        return {"num-examples": len(labels), "eval-accuracy": accuracy, "eval-loss": loss, **cost}

    def evaluate_model(self, state: dict[str, torch.Tensor], held: EvaluationSet | None = None) -> dict:
        """Federated evaluation of the global model; ``held`` is :meth:`evaluation_set`'s
        result when the caller kept it (computed here otherwise)."""
        return self._evaluate(self.model(state), held)

    def evaluate_split(
        self, client_part: torch.nn.Module, server_state: dict[str, torch.Tensor], held: EvaluationSet | None = None
    ) -> dict:
        model = self.model()
        cut = self.config.cut_layer
        model[:cut].load_state_dict(client_part.state_dict())
        model[cut:].load_state_dict(server_state)
        return self._evaluate(model, held)
