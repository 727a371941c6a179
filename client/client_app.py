"""The edge ClientApp: obfuscate first, then share images, activations or weights.

Message types (the server drives every round):

* ``train``                   weights exchange: local training on obfuscated images -> weights
* ``query.images``            images exchange: a sample of obfuscated images and labels
* ``query.activations``       split learning: client layers' activations of obfuscated images
* ``train.apply_gradients``   split learning: the gradient at the cut -> update client layers,
                              reply with them
* ``evaluate``                federated evaluation on the client's held-out split

Under DP-SGD each node's privacy ledger (every step's noise multiplier and sample rate) is
kept in ``context.state`` and restored every round, so the reported epsilon is the node's
total so far, not one round's.

Originals never leave this process: under an image defense (``common.defenses``, e.g.
VisualMixer) everything uploaded is computed from the transformed images. In split learning the client
layers and their optimizer state live in ``context.state`` across rounds, and so does the
obfuscated batch of the current round; the forward pass is recomputed from it when the
gradient arrives (ClientApp processes are ephemeral), following Flower's vertical-fl
example. A node that lost that batch (e.g. restarted) redraws it from the same seed.

Federated evaluation uses one obfuscated copy of the node's held-out split for the whole
run (seeded, kept in ``context.state``): every round is scored on the same images, and only
the first round pays for obfuscating them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from client.node import EvaluationSet, Node, transform_cost
from common.data import DataError
from common.dp import PrivacyLedger
from common.protocol import APPLY_GRADIENTS, GRADIENTS, QUERY_ACTIVATIONS, QUERY_IMAGES

log = logging.getLogger("flwr")


def data_errors_as_replies(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """A node whose data cannot be read (missing folder, no readable image) answers every
    message with that reason in one line, and logs that line, instead of a traceback:
    the node stays up and both its operator and the server's see why it never contributes."""
    try:
        return call_next(msg, context)
    except DataError as err:
        reason = f"node data: {err}"
        log.error("%s", reason)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


app = ClientApp(mods=[data_errors_as_replies])
SPLIT_BATCH = "split-batch"
EVAL_SET = "eval-set"
EVAL_CACHE_BYTES = 16 * 2**20  # context.state travels with every message in deployment


@app.train()
def train(msg: Message, context: Context) -> Message:
    node = Node.from_context(context)
    state = msg.content["arrays"].to_torch_state_dict()
    ledger = _ledger(context)
    new_state, metrics = node.train_weights(state, ledger)
    _save_ledger(context, ledger)
    content = RecordDict({"arrays": ArrayRecord(new_state), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)


@app.query(QUERY_IMAGES.action)
def upload_images(msg: Message, context: Context) -> Message:
    node = Node.from_context(context)
    images, labels, metrics = node.obfuscated_upload(int(msg.content["config"]["server-round"]))
    arrays = ArrayRecord({"images": images, "labels": labels})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.query(QUERY_ACTIVATIONS.action)
def upload_activations(msg: Message, context: Context) -> Message:
    node = Node.from_context(context)
    client_part, optimizer = _restore(context, msg.content["arrays"], node)
    server_round = int(msg.content["config"]["server-round"])
    activations, labels, metrics, batch = node.client_forward(client_part, server_round)
    _save(context, client_part, optimizer)  # first round: keep the layers it started from
    # The backward pass needs the same obfuscated batch: keep it rather than redo the work.
    context.state[SPLIT_BATCH] = _images_record(batch, labels, round=torch.tensor([server_round]))
    arrays = ArrayRecord({"activations": activations, "labels": labels})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.train(APPLY_GRADIENTS.action)
def apply_gradients(msg: Message, context: Context) -> Message:
    node = Node.from_context(context)
    client_part, optimizer = _restore(context, None, node)
    gradient = msg.content["arrays"].to_torch_state_dict()[GRADIENTS]
    server_round = int(msg.content["config"]["server-round"])
    ledger = _ledger(context)
    metrics = node.client_backward(
        client_part, optimizer, server_round, gradient, ledger, _split_batch(context, server_round)
    )
    _save(context, client_part, optimizer)
    _save_ledger(context, ledger)
    # The layers after the step go up too: the server keeps their mean for nodes that lose theirs.
    arrays = ArrayRecord({k: v.detach().cpu() for k, v in client_part.state_dict().items()})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    node = Node.from_context(context)
    state = msg.content["arrays"].to_torch_state_dict()
    held = _evaluation_set(context, node)
    if node.config.exchange == "activations":
        client_part, _ = _restore(context, None, node)
        metrics = node.evaluate_split(client_part, state, held)
    else:
        metrics = node.evaluate_model(state, held)
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _evaluation_set(context: Context, node: Node) -> EvaluationSet:
    """The node's transformed held-out copy, made in its first evaluation and kept in
    ``context.state`` when it is at most ``EVAL_CACHE_BYTES`` (a larger one is made again
    each round: same seed, same copy, so only the time differs)."""
    record = context.state.get(EVAL_SET)
    if record is not None:  # kept only under an image defense: this round transformed nothing
        return (*_images_of(record), transform_cost(node.defense, node.config, []))
    images, labels, cost = node.evaluation_set()
    if node.defense.transforms_images and images.numel() * images.element_size() <= EVAL_CACHE_BYTES:
        context.state[EVAL_SET] = _images_record(images, labels)
    return images, labels, cost


def _split_batch(context: Context, server_round: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The obfuscated batch this round's forward pass used, if this node still holds it."""
    record = context.state.get(SPLIT_BATCH)
    if record is None:
        return None
    tensors = record.to_torch_state_dict()
    if int(tensors["round"][0]) != server_round:
        return None
    return tensors["images"], tensors["labels"]


def _images_record(images: torch.Tensor, labels: torch.Tensor, **extra: torch.Tensor) -> ArrayRecord:
    """Images and labels (plus ``extra`` tensors) as a record for ``context.state``."""
    return ArrayRecord({"images": images, "labels": labels, **extra})


def _images_of(record: ArrayRecord) -> tuple[torch.Tensor, torch.Tensor]:
    """The (images, labels) kept by :func:`_images_record`."""
    tensors = record.to_torch_state_dict()
    return tensors["images"], tensors["labels"]


def _restore(context: Context, init: ArrayRecord | None, node: Node):
    """The client layers and optimizer from ``context.state`` (or ``init`` on first use)."""
    if "client-part" in context.state:
        weights = context.state["client-part"].to_torch_state_dict()
    elif init is not None:
        weights = init.to_torch_state_dict()
    else:
        raise RuntimeError("no client layers yet: apply_gradients arrived before a query")
    client_part, optimizer = node.client_layers(weights)
    if "client-optimizer" in context.state:
        blob = context.state["client-optimizer"]["state"]
        optimizer.load_state_dict(torch.load(io.BytesIO(blob), weights_only=False))
    return client_part, optimizer


def _save(context: Context, client_part: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    context.state["client-part"] = ArrayRecord(client_part.state_dict())
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    context.state["client-optimizer"] = ConfigRecord({"state": buffer.getvalue()})


def _ledger(context: Context) -> PrivacyLedger:
    """This node's DP-SGD history so far (empty on its first round)."""
    if "dp-ledger" in context.state:
        return PrivacyLedger.from_lists(context.state["dp-ledger"])
    return PrivacyLedger()


def _save_ledger(context: Context, ledger: PrivacyLedger) -> None:
    if ledger.history:  # Flower records cannot hold an empty list of unknown type
        context.state["dp-ledger"] = ConfigRecord(ledger.to_lists())
