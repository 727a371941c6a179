"""The ClientApp side of a node worker: send one message and its context to the worker
listening on the node's local socket, and return the worker's reply.

Imported by every ClientApp process, so it imports only Flower and the standard library:
a forwarding process never loads torch. The socket carries Flower's own protobuf
serialisation of the message and context, nothing that executes code when read.
"""

from __future__ import annotations

from multiprocessing.connection import Client, Connection

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode
from flwr.common.serde import context_to_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage

# node config key: the path of the worker's Unix socket
WORKER_KEY = "worker"


class WorkerUnavailable(RuntimeError):
    """The node's worker cannot be reached or broke off the exchange."""


def send_request(conn: Connection, msg: Message, context: Context) -> None:
    conn.send_bytes(message_to_proto(msg).SerializeToString())
    conn.send_bytes(context_to_proto(context).SerializeToString())


def forward(msg: Message, context: Context, address: str) -> Message:
    """The worker's answer to ``msg``, as a reply to ``msg`` built in this process."""
    try:
        with Client(address, family="AF_UNIX") as conn:
            send_request(conn, msg, context)
            data = conn.recv_bytes()
    except (OSError, EOFError) as err:
        raise WorkerUnavailable(f"node worker at {WORKER_KEY}={address!r} did not answer: {err}") from err
    proto = ProtoMessage()
    proto.ParseFromString(data)
    answered = message_from_proto(proto)
    if answered.has_error():
        return Message(answered.error, reply_to=msg)
    return Message(answered.content, reply_to=msg)


def unavailable_reply(msg: Message, err: WorkerUnavailable) -> Message:
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(err)), reply_to=msg)
