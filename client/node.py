"""What one edge node holds and does in every exchange, in plain PyTorch: its data, its
model, its defense's image transform and its evaluation. The client half of each exchange
(``client/exchanges/``) builds on it.

A node holds its partition of the data (simulation) or its own ``data-dir`` (deployment),
and transforms on its own device before anything is returned for upload.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from common.data import ImageSet, client_partition
from common.defenses import Defense, ImageTransform
from common.dp import poisson_batches
from common.models import build_model
from common.run_config import RunConfig, parse_run_config
from common.training import (
    EVALUATION_ROUND,
    evaluate,
    obfuscate_once,
    resolve_device,
    round_seed,
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

    def batch(self, server_round: int) -> tuple[torch.Tensor, torch.Tensor, int]:
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
    def transform_metrics(transform: ImageTransform | None) -> dict[str, float]:
        """What a reply says of its transform (for VisualMixer: mean VFE sent, seconds, retries)."""
        return {} if transform is None else transform.reply_metrics()

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

    def evaluate_built(self, model: torch.nn.Module, held: EvaluationSet | None = None) -> dict:
        """Accuracy and loss of ``model`` on ``held`` (:meth:`evaluation_set` by default)."""
        images, labels, cost = held if held is not None else self.evaluation_set()
        accuracy, loss = evaluate(model, images, labels, device=self.device)
        return {"num-examples": len(labels), "eval-accuracy": accuracy, "eval-loss": loss, **cost}

    def evaluate_model(self, state: dict[str, torch.Tensor], held: EvaluationSet | None = None) -> dict:
        """Federated evaluation of the global model; ``held`` is :meth:`evaluation_set`'s
        result when the caller kept it (computed here otherwise)."""
        return self.evaluate_built(self.model(state), held)
