"""A hostile ClientApp, for tests only: the real ClientApp's replies, tampered on the node
of partition 0 as run-config ``hostile`` says (a comma-separated list; the real app ignores
the key). The other nodes answer honestly.

* ``scale-weights``: ``train`` weights x 1000.
* ``claim-examples``: ``train`` claims 10,000 examples.
* ``lie-evaluation``: ``evaluate`` reports accuracy 1.0, loss 0 and 10^9 examples.
* ``scale-activations``: ``query.activations`` activations x 1000.
* ``blue-checkerboard`` / ``checker-noise``: ``query.images`` sends originals whose blue
  channel is a 0/255 checkerboard, or with a +-12 checkerboard added to every channel.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.client_app import app as honest
from common.shapes import generate_shapes
from simulations.bench.guard_payloads import blue_checkerboard, checker_noise

app = ClientApp()


def modes(context: Context) -> set[str]:
    if int(context.node_config.get("partition-id", -1)) != 0:
        return set()
    return {m.strip() for m in str(context.run_config.get("hostile", "")).split(",") if m.strip()}


def _reply(msg: Message, arrays: dict[str, np.ndarray] | None, metrics: dict, reply: Message) -> Message:
    content = {"metrics": MetricRecord(metrics)}
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return Message(RecordDict(content), reply_to=msg)


def _arrays(reply: Message) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in reply.content["arrays"].items()}


def tampered_images(mode: str, count: int, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` originals (32x32 shapes) as ``mode`` dresses them, and their labels."""
    images, labels = generate_shapes(count, seed=seed)
    if side != images.shape[-1]:
        raise ValueError("the hostile node's originals are 32x32 shapes")
    dressed = blue_checkerboard(images) if mode == "blue-checkerboard" else checker_noise(images, 12)
    return dressed.numpy(), labels.numpy()


def tamper(msg: Message, reply: Message, hostile: set[str]) -> Message:
    """``reply`` as the hostile node sends it (``hostile``: the modes in the docstring)."""
    kind = msg.metadata.message_type
    if not hostile or reply is None or reply.has_error():
        return reply
    metrics = dict(reply.content["metrics"])
    if kind == "train" and hostile & {"scale-weights", "claim-examples"}:
        arrays = _arrays(reply)
        if "scale-weights" in hostile:
            arrays = {k: v * 1000 if v.dtype.kind == "f" else v for k, v in arrays.items()}
        if "claim-examples" in hostile:
            metrics["num-examples"] = 10_000
        return _reply(msg, arrays, metrics, reply)
    if kind == "evaluate" and "lie-evaluation" in hostile:
        return _reply(msg, None, {**metrics, "eval-accuracy": 1.0, "eval-loss": 0.0, "num-examples": 10**9}, reply)
    if kind == "query.images" and (image_modes := hostile & {"blue-checkerboard", "checker-noise"}):
        arrays = _arrays(reply)
        images, labels = tampered_images(image_modes.pop(), len(arrays["labels"]), arrays["images"].shape[-1], seed=99)
        return _reply(msg, {"images": images, "labels": labels}, metrics, reply)
    if kind == "query.activations" and "scale-activations" in hostile:
        arrays = _arrays(reply)
        arrays["activations"] = arrays["activations"] * 1000
        return _reply(msg, arrays, metrics, reply)
    return reply


@app.train()
def train(msg: Message, context: Context) -> Message:
    return tamper(msg, honest(msg, context), modes(context))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return tamper(msg, honest(msg, context), modes(context))


@app.query("images")
def query_images(msg: Message, context: Context) -> Message:
    return tamper(msg, honest(msg, context), modes(context))


@app.query("activations")
def query_activations(msg: Message, context: Context) -> Message:
    return tamper(msg, honest(msg, context), modes(context))


@app.train("apply_gradients")
def apply_gradients(msg: Message, context: Context) -> Message:
    return honest(msg, context)
