"""What every client half of an exchange shares: dispatch by message type, federated
evaluation on one transformed copy of the held-out split, and the DP ledger in
``context.state``.

Flower starts a fresh ClientApp process per message in deployment, so everything a node
keeps between messages lives in ``context.state``: the privacy ledger (every DP step's
noise multiplier and sample rate, so the reported epsilon is the node's total so far) and
the transformed evaluation copy (only the first round pays for transforming it).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import ClassVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.node import EvaluationSet, Node, transform_cost
from common.dp import PrivacyLedger
from common.protocol import EVALUATE

EVAL_SET = "eval-set"
LEDGER = "dp-ledger"
NODE_SECRET = "node-secret"
EVAL_CACHE_BYTES = 16 * 2**20  # context.state travels with every message in deployment


class ClientExchange:
    """The client half of one exchange (``common.protocol.EXCHANGES[name]``): one method per
    message type of its protocol (:meth:`handlers`); :meth:`handle` dispatches."""

    name: ClassVar[str]

    def __init__(self, node: Node, context: Context) -> None:
        self.node = node
        self.context = context

    def handlers(self) -> dict[str, Callable[[Message], Message]]:
        return {EVALUATE.type: self.evaluate}

    def handle(self, msg: Message) -> Message:
        kind = msg.metadata.message_type
        handler = self.handlers().get(kind)
        if handler is None:
            raise ValueError(f"message type {kind!r} is not part of exchange {self.name!r}")
        return handler(msg)

    @staticmethod
    def server_round(msg: Message) -> int:
        return int(msg.content["config"]["server-round"])

    @staticmethod
    def reply(msg: Message, metrics: dict, arrays: dict[str, torch.Tensor] | None = None) -> Message:
        content = {"metrics": MetricRecord(metrics)}
        if arrays is not None:
            content["arrays"] = ArrayRecord(arrays)
        return Message(RecordDict(content), reply_to=msg)

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, msg: Message) -> Message:
        """Federated evaluation of the global model sent down."""
        state = msg.content["arrays"].to_torch_state_dict()
        return self.reply(msg, self.node.evaluate_model(state, self.evaluation_set()))

    def evaluation_set(self) -> EvaluationSet:
        """The node's transformed held-out copy, made in its first evaluation and kept in
        ``context.state`` when it is at most ``EVAL_CACHE_BYTES`` (a larger one is made again
        each round: same seed, same copy, so only the time differs)."""
        node, state = self.node, self.context.state
        record = state.get(EVAL_SET)
        if record is not None:  # kept only under an image defense: this round transformed nothing
            tensors = record.to_torch_state_dict()
            return tensors["images"], tensors["labels"], transform_cost(node.defense, node.config, [])
        images, labels, cost = node.evaluation_set()
        if node.defense.transforms_images and images.numel() * images.element_size() <= EVAL_CACHE_BYTES:
            state[EVAL_SET] = ArrayRecord({"images": images, "labels": labels})
        return images, labels, cost

    # -- randomness the server cannot reproduce ------------------------------------------------
    def secret_seed(self, seed: int) -> int:
        """``seed`` mixed with a secret drawn on this node once per run and kept in its
        ``context.state`` (which never leaves the node). A transform seeded from the run
        config alone could be replayed by the server, which chooses that config: it would
        know where every pixel went."""
        record = self.context.state.get(NODE_SECRET)
        if record is None:
            record = self.context.state[NODE_SECRET] = ConfigRecord({"value": secrets.randbits(62)})
        return (seed * 0x9E3779B1 + int(record["value"])) % 2**62

    # -- privacy ledger ----------------------------------------------------------------------
    def ledger(self) -> PrivacyLedger:
        """This node's DP history so far (empty on its first round)."""
        if LEDGER in self.context.state:
            return PrivacyLedger.from_lists(self.context.state[LEDGER])
        return PrivacyLedger()

    def save_ledger(self, ledger: PrivacyLedger) -> None:
        if ledger.history:  # Flower records cannot hold an empty list of unknown type
            self.context.state[LEDGER] = ConfigRecord(ledger.to_lists())
