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

from client.exchanges import client_exchange
from client.timing import StageTimer
from common.data import DataError
from common.protocol import MESSAGES

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


def handle(msg: Message, context: Context) -> Message:
    """Any message of the protocol, answered by the run's exchange; the reply's metrics
    also say where the message's time went (``client/timing.py``)."""
    timer = StageTimer()
    with timer.stage("setup"):
        exchange = client_exchange(context)
    with timer.stage("handler"):
        reply = exchange.handle(msg)
    stages = timer.finish()
    log.debug("%s: %s", msg.metadata.message_type, " ".join(f"{k}={v:g}" for k, v in stages.items()))
    if reply.has_content() and "metrics" in reply.content:
        reply.content["metrics"] = MetricRecord({**dict(reply.content["metrics"]), **stages})
    return reply


for _message in MESSAGES.values():
    _register = getattr(app, _message.category)
    (_register(_message.action) if _message.action else _register())(handle)
