"""``activations`` (split learning, after Flower's vertical-fl example): the node runs the
client layers on its transformed images and sends their activations
(``query.activations``); the server returns the gradient at the cut
(``train.apply_gradients``), the node takes one step and sends its layers back.

The client layers and their optimizer state live in ``context.state`` across rounds, and
so does the transformed batch of the current round: the forward pass is recomputed from it
when the gradient arrives (ClientApp processes are ephemeral). A node that lost that batch
redraws it from the same seed, mixed with the node's secret (``secret_seed``), so the
server cannot replay the shuffle; a node that lost its state altogether draws another
shuffle of the same images.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message

from common.dp import PrivacyLedger
from common.models import split_model
from common.protocol import APPLY_GRADIENTS, GRADIENTS, QUERY_ACTIVATIONS
from common.training import make_optimizer, to_model_input

from .base import ClientExchange

SPLIT_BATCH = "split-batch"
CLIENT_PART = "client-part"
CLIENT_OPTIMIZER = "client-optimizer"


class ActivationsClient(ClientExchange):
    name = "activations"

    def handlers(self) -> dict[str, Callable[[Message], Message]]:
        return {**super().handlers(), QUERY_ACTIVATIONS.type: self.upload, APPLY_GRADIENTS.type: self.apply_gradients}

    # -- messages ----------------------------------------------------------------------------
    def upload(self, msg: Message) -> Message:
        client_part, optimizer = self.restore(msg.content["arrays"])
        server_round = self.server_round(msg)
        activations, labels, metrics, batch = self.client_forward(client_part, server_round)
        self.save(client_part, optimizer)  # first round: keep the layers it started from
        # The backward pass needs the same transformed batch: keep it rather than redo the work.
        self.context.state[SPLIT_BATCH] = ArrayRecord(
            {"images": batch, "labels": labels, "round": torch.tensor([server_round])}
        )
        return self.reply(msg, metrics, {"activations": activations, "labels": labels})

    def apply_gradients(self, msg: Message) -> Message:
        client_part, optimizer = self.restore(None)
        gradient = msg.content["arrays"].to_torch_state_dict()[GRADIENTS]
        server_round = self.server_round(msg)
        ledger = self.ledger()
        metrics = self.client_backward(
            client_part, optimizer, server_round, gradient, ledger, self.stored_batch(server_round)
        )
        self.save(client_part, optimizer)
        self.save_ledger(ledger)
        # The layers after the step go up too: the server keeps their mean for nodes that lose theirs.
        return self.reply(msg, metrics, {k: v.detach().cpu() for k, v in client_part.state_dict().items()})

    def evaluate(self, msg: Message) -> Message:
        """Nodes keep their own client layers; the server sends its part only."""
        client_part, _ = self.restore(None)
        server_state = msg.content["arrays"].to_torch_state_dict()
        model = self.node.model()
        cut = self.node.config.cut_layer
        model[:cut].load_state_dict(client_part.state_dict())
        model[cut:].load_state_dict(server_state)
        return self.reply(msg, self.node.evaluate_built(model, self.evaluation_set()))

    # -- context.state -------------------------------------------------------------------------
    def stored_batch(self, server_round: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The transformed batch this round's forward pass used, if this node still holds it."""
        record = self.context.state.get(SPLIT_BATCH)
        if record is None:
            return None
        tensors = record.to_torch_state_dict()
        if int(tensors["round"][0]) != server_round:
            return None
        return tensors["images"], tensors["labels"]

    def restore(self, init: ArrayRecord | None):
        """The client layers and optimizer from ``context.state`` (or ``init`` on first use)."""
        state = self.context.state
        if CLIENT_PART in state:
            weights = state[CLIENT_PART].to_torch_state_dict()
        elif init is not None:
            weights = init.to_torch_state_dict()
        else:
            raise RuntimeError("no client layers yet: apply_gradients arrived before a query")
        client_part, optimizer = self.client_layers(weights)
        if CLIENT_OPTIMIZER in state:
            blob = state[CLIENT_OPTIMIZER]["state"]
            optimizer.load_state_dict(torch.load(io.BytesIO(blob), weights_only=False))
        return client_part, optimizer

    def save(self, client_part: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.context.state[CLIENT_PART] = ArrayRecord(client_part.state_dict())
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        self.context.state[CLIENT_OPTIMIZER] = ConfigRecord({"state": buffer.getvalue()})

    # -- the client layers ---------------------------------------------------------------------
    def client_layers(self, weights: dict[str, torch.Tensor]):
        config = self.node.config
        client_part, _ = split_model(self.node.model(), config.cut_layer)
        client_part.load_state_dict(weights)
        optimizer = make_optimizer(config.optimizer, client_part.parameters(), config.learning_rate)
        return client_part, optimizer

    def split_batch(self, server_round: int):
        """This round's images as the client layers see them (transformed, still uint8), on
        the device, with their labels and the transform; seeded from the node's secret, so a
        recompute gives the very same shuffle and the server cannot."""
        node = self.node
        images, labels, seed = node.batch(server_round)
        transform = node.transform(self.secret_seed(seed))
        images = images.to(node.device)
        if transform is not None:
            images = transform(images)
        return images, labels, transform

    def client_forward(self, client_part: torch.nn.Module, server_round: int):
        """Activations of the client layers; also returns the transformed batch, which the
        caller keeps for the backward pass instead of transforming it again."""
        images, labels, transform = self.split_batch(server_round)
        client_part.train()
        with torch.no_grad():
            activations = client_part(to_model_input(images)).float().cpu()
        metrics = {"num-examples": len(labels), **self.node.transform_metrics(transform)}
        return activations, labels, metrics, images.cpu()

    def client_backward(
        self, client_part, optimizer, server_round: int, gradient: torch.Tensor,
        ledger: PrivacyLedger | None = None, batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict:
        """Apply the server's gradient at the cut to the client layers: one step, wrapped by
        the defense's private training (recorded in ``ledger``) when it has one. ``batch`` is
        the transformed batch the forward pass used; without it the batch is drawn again."""
        node, config = self.node, self.node.config
        if batch is None:
            images, labels, _ = self.split_batch(server_round)
        else:
            images, labels = batch
        x = to_model_input(images.to(node.device))
        private = node.defense.private_training(
            config, client_part, optimizer, sample_rate=node.split_sample_rate, steps=1,
            expected_batch_size=config.upload_samples or len(node.train_set),
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
        activations.backward(gradient.to(node.device, activations.dtype))
        optimizer.step()
        return {"num-examples": len(labels), **(private.metrics() if private is not None else {})}
