"""The edge ClientApp: transform first, then share images, activations or weights.

Every message type of every exchange (``common.protocol``) goes to the client half of the
run's exchange (``client/exchanges/``):

* ``train``                   weights: local training on transformed images -> weights
* ``query.images``            images: a sample of transformed images and labels
* ``query.activations``       split learning: client layers' activations of transformed images
* ``train.apply_gradients``   split learning: the gradient at the cut -> update client layers,
                              reply with them
* ``evaluate``                federated evaluation on the node's held-out split

Originals never leave this process: under an image defense (``common.defenses``, e.g.
VisualMixer) everything uploaded is computed from the transformed images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Error, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from client.forward import WORKER_KEY, WorkerUnavailable, forward, unavailable_reply
from client.timing import StageTimer
from common.protocol import MESSAGES

log = logging.getLogger("flwr")


def data_errors_as_replies(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """A node whose data cannot be read (missing folder, no readable image) answers every
    message with that reason in one line, and logs that line, instead of a traceback:
    the node stays up and both its operator and the server's see why it never contributes."""
    try:
        return call_next(msg, context)
    except Exception as err:
        from common.data import DataError  # only a failing message pays for importing it

        if not isinstance(err, DataError):
            raise
        reason = f"node data: {err}"
        log.error("%s", reason)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


app = ClientApp(mods=[data_errors_as_replies])


def handle(msg: Message, context: Context) -> Message:
    """Any message of the protocol, answered by the run's exchange in this process, or by the
    node's worker when the node config names one (``worker``); the reply's metrics also say
    where the message's time went (``client/timing.py``).

    This module imports neither torch nor the exchanges: a process that forwards never
    loads them, and one that answers itself imports them here (``stage-imports``)."""
    timer = StageTimer()
    address = context.node_config.get(WORKER_KEY)
    if address:
        return forwarded(msg, context, str(address), timer)
    with timer.stage("imports"):
        from client.answer import answer
    return answer(msg, context, timer)


def forwarded(msg: Message, context: Context, address: str, timer: StageTimer) -> Message:
    with timer.stage("forward"):
        try:
            reply = forward(msg, context, address)
        except WorkerUnavailable as err:
            log.error("%s", err)
            return unavailable_reply(msg, err)
    if reply.has_content() and "metrics" in reply.content:
        own = {k: timer.metrics[k] for k in ("stage-startup", "stage-forward")}
        metrics = {**dict(reply.content["metrics"]), **own, "forwarder-peak-rss-mb": timer.peak_rss_mb()}
        reply.content["metrics"] = MetricRecord({k: round(v, 4) if isinstance(v, float) else v
                                                 for k, v in metrics.items()})
    return reply


for _message in MESSAGES.values():
    _register = getattr(app, _message.category)
    (_register(_message.action) if _message.action else _register())(handle)
