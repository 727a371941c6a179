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

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from client.exchanges import client_exchange
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
    """Any message of the protocol, answered by the run's exchange."""
    return client_exchange(context).handle(msg)


for _message in MESSAGES.values():
    _register = getattr(app, _message.category)
    (_register(_message.action) if _message.action else _register())(handle)
