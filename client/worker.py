"""A node worker: one long-lived process on an edge node that answers the ClientApp's
messages, started by the node's operator next to ``flower-supernode``.

Flower starts a fresh ClientApp process for every message, which then pays for Python,
torch and the node's data before doing any work. With ``worker='/path/to/socket'`` in the
SuperNode's ``--node-config`` the ClientApp only forwards each message here
(``client/forward.py``, which never imports torch), and this process keeps what a node
reuses between messages: the imports, the decoded data, the run's state (``context.state``,
as tensors) and, on a GPU, the CUDA context and recorded graphs.

It is also the node operator's own installed code: it answers only runs whose defense is
in ``--defenses`` and whose run config meets every ``--require`` (``target-vfe>=0.8``), and
its ``--node-config`` (for example ``data-dir``) overrides the one the forwarded context
carries. A hostile app could still read the node's files itself unless the data is readable
only by the worker's user (see docs/deploy.md).

    visualmixer-node-worker --socket /run/visualmixer/node.sock \
        --node-config "data-dir='/data/images'" --defenses visualmixer --require "target-vfe>=0.8"
"""

from __future__ import annotations

import argparse
import logging
import operator
import os
import re
import socket
import sys
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.config import parse_config_args
from flwr.common.constant import ErrorCode
from flwr.common.serde import context_from_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage

from client.answer import answer
from client.forward import WORKER_KEY
from client.node import Node
from client.timing import StageTimer
from common.config_values import ConfigError
from common.defenses import DEFENSES
from common.run_config import parse_run_config

log = logging.getLogger("visualmixer.worker")

KEEP_RUNS = 2  # runs whose node and state stay in memory; the oldest goes first
COMPARISONS = {">=": operator.ge, "<=": operator.le, "==": operator.eq}


class RunRefused(ValueError):
    """The node's operator does not allow this run (its defense)."""


@dataclass(frozen=True)
class Requirement:
    """A run-config key the node's operator requires: ``key >= value``, ``<=`` or ``==``."""

    key: str
    op: str
    value: float | str

    @classmethod
    def parse(cls, text: str) -> "Requirement":
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(>=|<=|==)\s*(.+?)\s*", text)
        if match is None:
            raise ValueError(f"--require {text!r}: expected KEY>=VALUE, KEY<=VALUE or KEY==VALUE")
        key, op, raw = match.groups()
        try:
            value: float | str = float(raw)
        except ValueError:
            if op != "==":
                raise ValueError(f"--require {text!r}: {op} needs a number") from None
            value = raw.strip("'\"")
        return cls(key, op, value)

    def check(self, run_config: dict) -> None:
        """Raises :class:`RunRefused` naming the key and both values unless the run meets it."""
        actual = run_config.get(self.key)
        if isinstance(self.value, float):
            ok = isinstance(actual, (int, float)) and not isinstance(actual, bool) and COMPARISONS[self.op](
                actual, self.value)
        else:
            ok = str(actual) == self.value
        if not ok:
            raise RunRefused(f"run-config {self.key}={actual!r} is refused on this node (worker requires "
                             f"{self.key}{self.op}{self.value!r})")


@dataclass
class RunState:
    context: Context  # the run's config, the node config in force and the state kept here
    node: Node


class NodeWorker:
    """Answers forwarded messages, keeping each run's node and state between them."""

    def __init__(self, node_config: dict | None = None, defenses: set[str] | None = None,
                 requirements: list[Requirement] | None = None) -> None:
        unknown = sorted((defenses or set()) - set(DEFENSES))
        if unknown:
            raise ValueError(f"--defenses: unknown defense {unknown[0]!r} (known: {', '.join(DEFENSES)})")
        self.node_config = dict(node_config or {})
        self.defenses = defenses
        self.requirements = list(requirements or [])
        self.runs: OrderedDict[tuple, RunState] = OrderedDict()

    def run_state(self, context: Context, timer: StageTimer) -> RunState:
        """This run's node and state, built on its first message (``timer``'s setup stage)."""
        node_config = {**context.node_config, **self.node_config}
        node_config.pop(WORKER_KEY, None)
        key = (context.run_id, repr(sorted(context.run_config.items())), repr(sorted(node_config.items())))
        if key in self.runs:
            self.runs.move_to_end(key)
            return self.runs[key]
        with timer.stage("setup"):
            config = parse_run_config(context.run_config)
            name = config.active_defense.name
            if self.defenses is not None and name not in self.defenses:
                raise RunRefused(
                    f"defense={name!r} is not allowed on this node (worker --defenses: {', '.join(sorted(self.defenses))})"
                )
            for requirement in self.requirements:
                requirement.check(context.run_config)
            kept = Context(run_id=context.run_id, node_id=context.node_id, node_config=node_config,
                           state=RecordDict(), run_config=context.run_config)
            self.runs[key] = RunState(kept, Node.from_context(kept))
        while len(self.runs) > KEEP_RUNS:
            self.runs.popitem(last=False)
        return self.runs[key]

    def answer(self, msg: Message, context: Context) -> Message:
        """The reply to ``msg``; any failure is an error reply of one line (traceback logged)."""
        timer = StageTimer(count_startup=False)
        try:
            run = self.run_state(context, timer)
            return answer(msg, run.context, timer, run.node)
        except Exception as err:  # noqa: BLE001 - one bad message must not stop the worker
            if not isinstance(err, (RunRefused, ConfigError)):
                log.error("%s failed:\n%s", msg.metadata.message_type, traceback.format_exc())
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            log.warning("%s: %s", msg.metadata.message_type, reason)
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)

    def serve_connection(self, conn: Connection) -> None:
        """One request: the message and its context in, the reply out."""
        proto_msg, proto_context = ProtoMessage(), ProtoContext()
        proto_msg.ParseFromString(conn.recv_bytes())
        proto_context.ParseFromString(conn.recv_bytes())
        reply = self.answer(message_from_proto(proto_msg), context_from_proto(proto_context))
        conn.send_bytes(message_to_proto(reply).SerializeToString())


def listen(path: Path, mode: int = 0o600) -> Listener:
    """A listener on the Unix socket ``path`` with permissions ``mode`` (connecting needs
    write permission). A socket left by a worker that died is replaced; one that a live
    worker serves is not."""
    if path.exists():
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise SystemExit(f"--socket: {str(path)!r} is served by another worker")
        finally:
            probe.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o177)
    try:
        listener = Listener(str(path), family="AF_UNIX")
    finally:
        os.umask(old)
    os.chmod(path, mode)
    return listener


def serve(worker: NodeWorker, path: Path, mode: int = 0o600) -> None:
    with listen(path, mode) as listener:
        log.info("node worker listening on %s", path)
        try:
            while True:
                try:
                    with listener.accept() as conn:
                        worker.serve_connection(conn)
                except (EOFError, OSError) as err:  # the ClientApp went away mid-message
                    log.warning("connection dropped: %s", err)
        finally:
            path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visualmixer-node-worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, type=Path, help="Unix socket path (the node config's worker=)")
    parser.add_argument("--node-config", default="", help="as flower-supernode's; overrides the forwarded one")
    parser.add_argument("--defenses", default="", help="comma-separated defenses this node answers (default: any)")
    parser.add_argument("--require", action="append", default=[], metavar="KEY>=VALUE",
                        help="a run-config value every run must meet (>=, <= or ==); repeatable")
    parser.add_argument("--socket-mode", default="600", help="octal permissions of the socket (660: its group too)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        node_config = parse_config_args([args.node_config]) if args.node_config.strip() else {}
    except Exception as err:  # noqa: BLE001 - Flower's parser raises several types
        parser.error(f"--node-config {args.node_config!r}: {err}")
    if len(os.fsencode(args.socket)) > 100:  # AF_UNIX paths are limited to about 100 bytes
        parser.error(f"--socket {str(args.socket)!r}: a Unix socket path must be under 100 bytes")
    defenses = {d.strip() for d in args.defenses.split(",") if d.strip()} or None
    try:
        mode = int(args.socket_mode, 8)
        worker = NodeWorker(node_config, defenses, [Requirement.parse(r) for r in args.require])
    except ValueError as err:
        parser.error(str(err) if "--" in str(err) else f"--socket-mode {args.socket_mode!r}: not an octal mode")
    try:
        serve(worker, args.socket, mode)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
