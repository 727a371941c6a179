"""What one edge node does, in plain PyTorch (no Flower types): the ClientApp calls these.

A node holds its partition of the data (simulation) or its own ``data-dir`` (deployment),
and obfuscates on its own device before anything is returned for upload.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from common.data import ImageSet, client_partition
from common.defenses import Defense, ImageTransform
from common.dp import PrivacyLedger, poisson_batches
from common.models import build_model, split_model
from common.run_config import RunConfig, parse_run_config
from common.training import (
    EVALUATION_ROUND,
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

# (images, labels, what transforming them cost: transform_cost's metrics) of a node's
# evaluation set
EvaluationSet = tuple[torch.Tensor, torch.Tensor, dict[str, float]]


def transform_cost(defense: Defense, config: RunConfig, transforms: list[ImageTransform]) -> dict[str, float]:
    """What the client reports of its image transform's cost on an evaluation set, summed
    over ``transforms`` (zeros when none ran); nothing when the defense has no transform."""
    fresh = defense.image_transform(config, 0)
    if fresh is None:
        return {}
    totals = dict.fromkeys(fresh.cost_metrics(), 0)
    for transform in transforms:
        for key, value in transform.cost_metrics().items():
            totals[key] += value
    return totals


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
    @property
    def defense(self) -> Defense:
        return self.config.active_defense

    def transform(self, seed: int | None = None) -> ImageTransform | None:
        """The defense's image transform (None: images are used as they are)."""
        return self.defense.image_transform(self.config, seed)

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

        Under a defense that trains privately the sample is Poisson (each image kept with
        probability q = upload-samples / N), as DP accounting assumes.
        """
        seed = round_seed(self.config.seed, server_round, self.partition_id)
        generator = torch.Generator().manual_seed(seed)
        if self.defense.trains_privately:
            index = next(poisson_batches(len(self.train_set), self.split_sample_rate, 1, generator))
        else:
            count = self.config.upload_samples or len(self.train_set)
            index = torch.randperm(len(self.train_set), generator=generator)[:count]
        return self.train_set.images[index], self.train_set.labels[index], seed

    @property
    def split_sample_rate(self) -> float:
        return min(1.0, (self.config.upload_samples or len(self.train_set)) / len(self.train_set))

    @staticmethod
    def _transform_metrics(transform: ImageTransform | None) -> dict[str, float]:
        """What a reply says of its transform (for VisualMixer: mean VFE sent, seconds, retries)."""
        return {} if transform is None else transform.reply_metrics()

    # -- exchange = weights --------------------------------------------------------------
    def train_weights(
        self, state: dict[str, torch.Tensor], ledger: PrivacyLedger | None = None
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """Local training from the global ``state``, wrapped by the defense's private
        training (recorded in ``ledger``) when it has one."""
        model = self.model(state)
        optimizer = make_optimizer(self.config.optimizer, model.parameters(), self.config.learning_rate)
        transform = self.transform()
        images, labels = self.train_set.images, self.train_set.labels
        steps = self.config.local_steps
        q = min(1.0, self.config.batch_size / len(labels))
        private = self.defense.private_training(
            self.config, model, optimizer, sample_rate=q, steps=steps,
            expected_batch_size=self.config.batch_size, ledger=ledger if ledger is not None else PrivacyLedger(),
        )
        extra: dict = {}
        if private is not None and private.stopped is not None:
            return {k: v.cpu() for k, v in state.items()}, {"num-examples": len(labels), **private.stopped}
        if private is not None:
            batches = poisson_batches(len(labels), q, steps)
            losses = train_on_batches(private.module, images, labels, private.optimizer, batches, transform, self.device)
            new_state = private.state_dict()
            extra = private.metrics()
        else:
            losses = train_steps(model, images, labels, optimizer, steps, self.config.batch_size, transform, self.device)
            new_state = {k: v.cpu() for k, v in model.state_dict().items()}
        loss, skipped = mean_loss(losses)
        if skipped:
            log.warning("Skipped %d of %d local steps: non-finite loss or gradient", skipped, len(losses))
        metrics = {"num-examples": len(labels), "train-loss": loss}
        return new_state, {**metrics, **self._transform_metrics(transform), **extra}

    # -- exchange = images ---------------------------------------------------------------
    def obfuscated_upload(self, server_round: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        images, labels, _ = self._batch(server_round)
        transform = self.transform()
        if transform is not None:
            images = transform(images.to(self.device)).cpu()
        return images, labels, {"num-examples": len(labels), **self._transform_metrics(transform)}

    # -- exchange = activations (split learning) -----------------------------------------
    def client_layers(self, weights: dict[str, torch.Tensor]):
        client_part, _ = split_model(self.model(), self.config.cut_layer)
        client_part.load_state_dict(weights)
        optimizer = make_optimizer(self.config.optimizer, client_part.parameters(), self.config.learning_rate)
        return client_part, optimizer

    def split_batch(self, server_round: int) -> tuple[torch.Tensor, torch.Tensor, ImageTransform | None]:
        """This round's images as the client layers see them (transformed, still uint8), on
        the device, with their labels; seeded, so a recompute gives the very same shuffle."""
        images, labels, seed = self._batch(server_round)
        transform = self.transform(seed)
        images = images.to(self.device)
        if transform is not None:
            images = transform(images)
        return images, labels, transform

    def client_forward(self, client_part: torch.nn.Module, server_round: int):
        """Activations of the client layers; also returns the obfuscated batch, which the
        caller keeps for the backward pass instead of obfuscating it again."""
        images, labels, transform = self.split_batch(server_round)
        client_part.train()
        with torch.no_grad():
            activations = client_part(to_model_input(images)).float().cpu()
        metrics = {"num-examples": len(labels), **self._transform_metrics(transform)}
        return activations, labels, metrics, images.cpu()

    def client_backward(
        self, client_part, optimizer, server_round: int, gradient: torch.Tensor,
        ledger: PrivacyLedger | None = None, batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict:
        """Apply the server's gradient at the cut to the client layers: one step, wrapped by
        the defense's private training (recorded in ``ledger``) when it has one. ``batch`` is
        the transformed batch the forward pass used; without it the batch is drawn again."""
        if batch is None:
            images, labels, _ = self.split_batch(server_round)
        else:
            images, labels = batch
        x = to_model_input(images.to(self.device))
        private = self.defense.private_training(
            self.config, client_part, optimizer, sample_rate=self.split_sample_rate, steps=1,
            expected_batch_size=self.config.upload_samples or len(self.train_set),
            ledger=ledger if ledger is not None else PrivacyLedger(),
        )
        if private is not None and private.stopped is not None:
            return {"num-examples": len(labels), **private.stopped}
        if private is not None:
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
        return {"num-examples": len(labels), **(private.metrics() if private is not None else {})}

    # -- evaluation ----------------------------------------------------------------------
    def evaluation_set(self) -> EvaluationSet:
        """(images, labels, what transforming cost) of the held-out split as this node
        evaluates it: under an image defense, transformed once per run from the round-0 seed,
        so every round sees the same copy (the ClientApp keeps it in ``context.state``)."""
        held = self.held_out
        if self.config.eval_samples:
            held = held.subset(torch.arange(min(len(held), self.config.eval_samples)))
        if not self.defense.transforms_images:
            return held.images, held.labels, {}
        transforms: list[ImageTransform] = []

        def transform_for_seed(seed: int) -> ImageTransform:
            transforms.append(self.transform(seed))
            return transforms[-1]

        seed = round_seed(self.config.seed, EVALUATION_ROUND, self.partition_id)
        images = obfuscate_once(held.images, transform_for_seed, seed, self.device)
        return images, held.labels, transform_cost(self.defense, self.config, transforms)

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
