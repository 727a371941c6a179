"""Message plumbing shared by every exchange: build, send and collect, count the bytes, and
keep only the replies that pass validation.

A reply that fails validation is logged with its node id and dropped; the round goes on
with the rest when at least ``min-replies`` passed, otherwise :class:`RoundFailed` ends it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from common.payloads import PayloadError
from common.protocol import STAGE_METRICS
from common.run_config import RunConfig

# Seconds between two pulls of replies. Flower's own ``Grid.send_and_receive`` waits 3 s
# between pulls, which a deployed round pays once per message type; a pull is one cheap
# call to the SuperLink.
REPLY_POLL_SECONDS = 0.2


def send_and_receive(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """Push ``messages`` and pull their replies every :data:`REPLY_POLL_SECONDS` until all
    have answered or ``timeout`` seconds have passed; the replies that came."""
    if not isinstance(grid, Grid):  # an in-process stand-in (tests, benchmarks) answers at once
        return list(grid.send_and_receive(messages, timeout=timeout))
    waiting = set(grid.push_messages(messages))
    deadline = time.time() + timeout
    replies: list[Message] = []
    while waiting:
        pulled = list(grid.pull_messages(waiting))
        replies.extend(pulled)
        waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
        if not waiting or time.time() >= deadline:
            break
        time.sleep(REPLY_POLL_SECONDS)
    return replies

log = logging.getLogger("flwr")
Checked = TypeVar("Checked")


class RoundFailed(RuntimeError):
    """Too few valid replies (or nodes) for the round to count."""


class RunFailed(RuntimeError):
    """Raised out of the ServerApp after a failed round, once ``summary.json`` says why, so
    that Flower records the run as ``finished:failed`` (and ``flwr list`` shows the reason)."""


def payload_bytes(msg: Message) -> int:
    """Bytes of the array records a message carries (what the round's traffic counts)."""
    if not msg.has_content():
        return 0
    return sum(record.count_bytes() for record in msg.content.array_records.values())


def check_records(reply: Message, arrays: bool) -> None:
    """The reply holds exactly the records its protocol names: a MetricRecord ``metrics``
    and, when ``arrays``, an ArrayRecord ``arrays``; nothing else is accepted or stored."""
    content = reply.content
    found = {
        "array": sorted(content.array_records), "metric": sorted(content.metric_records),
        "config": sorted(content.config_records),
    }
    expected = {"array": ["arrays"] if arrays else [], "metric": ["metrics"], "config": []}
    if found != expected:
        raise PayloadError(f"the reply's records are {found}, but the protocol names {expected}")


def stage_metrics(reply: Message) -> dict[str, float]:
    """The ClientApp's timings of its reply (``common.protocol.STAGE_METRICS``), already
    checked by the reply's validation."""
    metrics = reply_metrics(reply)
    return {k: float(metrics[k]) for k in STAGE_METRICS if k in metrics}


def reply_metrics(reply: Message) -> dict[str, Any]:
    """The reply's MetricRecord ``metrics``, as a dict."""
    if "metrics" not in reply.content.metric_records:
        raise PayloadError(f"the reply has no MetricRecord 'metrics' (it has {sorted(reply.content.metric_records)})")
    return dict(reply.content.metric_records["metrics"])


def reply_arrays(reply: Message) -> dict[str, torch.Tensor]:
    """The reply's ArrayRecord ``arrays`` as torch tensors."""
    if "arrays" not in reply.content.array_records:
        raise PayloadError(f"the reply has no ArrayRecord 'arrays' (it has {sorted(reply.content.array_records)})")
    return reply.content["arrays"].to_torch_state_dict()


def rejection_reason(error: Exception) -> str:
    """A sentence for the log: what was missing or wrong in a reply."""
    if isinstance(error, PayloadError):
        return str(error)
    if isinstance(error, KeyError):
        return f"it lacks the key {error}"
    return f"reading it failed with {type(error).__name__}: {error}"


ANSI_CODES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
MAX_REASON_CHARS = 300


def one_line(reason: str) -> str:
    """A node's error as one line of plain text: terminal codes removed, and of a traceback
    only its last line (the exception and its message), cut to ``MAX_REASON_CHARS``."""
    lines = [line.strip() for line in ANSI_CODES.sub("", reason).splitlines() if line.strip()]
    if not lines:
        return "no reason given"
    line = lines[-1] if any("Traceback (most recent call last)" in line for line in lines) else " ".join(lines)
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


Event = dict[str, Any]


class Messenger:
    """One round's link to the nodes: sends, waits at most ``round-timeout`` and counts the
    bytes of array payloads in each direction (``up``: received, ``down``: sent).

    What became of every reply is also handed to ``record`` as an event (``outcome``:
    accepted, rejected, failed or silent, with the node id, the message type and the
    reason), so an operator's console can show it without parsing the log."""

    def __init__(
        self, grid: Grid, config: RunConfig, server_round: int = 0, record: Callable[[Event], None] | None = None
    ) -> None:
        self.grid = grid
        self.config = config
        self.server_round = server_round
        self._record = record
        self.up = 0
        self.down = 0
        self.rejected = 0

    def event(self, outcome: str, node: int, what: str, reason: str = "", **extra: float) -> None:
        """``extra``: figures the reply gave of itself (the ClientApp's stage timings)."""
        if self._record is not None:
            # Node ids are 64-bit: kept as strings so JSON readers without 64-bit integers
            # (JavaScript's numbers) do not round them.
            row = {"round": self.server_round, "node": str(node), "what": what, "outcome": outcome, "time": round(time.time(), 3)}
            self._record({**row, **({"reason": reason} if reason else {}), **extra})

    def node_ids(self) -> list[int]:
        """The connected nodes, waiting up to ``round-timeout`` for ``min-replies`` of them."""
        deadline = time.time() + self.config.round_timeout
        while len(nodes := list(self.grid.get_node_ids())) < self.config.min_replies:
            if time.time() > deadline:
                raise RoundFailed(
                    f"{len(nodes)} nodes connected, fewer than min-replies={self.config.min_replies}"
                )
            time.sleep(1)
        return nodes

    def to_every_node(
        self, message_type: str, server_round: int, arrays: ArrayRecord | None = None
    ) -> list[Message]:
        """The same message (config ``server-round``, optional ``arrays``) for every node."""
        content = {"config": ConfigRecord({"server-round": server_round})}
        if arrays is not None:
            content["arrays"] = arrays
        return [
            Message(RecordDict(dict(content)), dst_node_id=node, message_type=message_type)
            for node in self.node_ids()
        ]

    def send_and_collect(self, messages: list[Message]) -> list[Message]:
        """Send, wait, and return the replies that carry content; log silent and failed nodes."""
        self.down += sum(payload_bytes(m) for m in messages)
        replies = send_and_receive(self.grid, messages, self.config.round_timeout)
        # Sending gave each message its id. A reply names the node by the message it answers:
        # an error the SuperLink makes for a lost node carries the SuperLink's own id as source.
        sent = {m.metadata.message_id: m for m in messages if m.metadata.message_id}

        def origin(reply: Message) -> Message | None:
            return sent.get(reply.metadata.reply_to_message_id)

        answered = {m.metadata.dst_node_id if (m := origin(r)) else r.metadata.src_node_id for r in replies}
        for m in messages:
            if m.metadata.dst_node_id not in answered:
                log.warning("Node %d did not reply within %.0f s", m.metadata.dst_node_id, self.config.round_timeout)
                self.event("silent", m.metadata.dst_node_id, m.metadata.message_type,
                           f"no reply within {self.config.round_timeout:.0f} s")
        good = []
        for reply in replies:
            self.up += payload_bytes(reply)
            if reply.has_error():
                asked = origin(reply)
                node = asked.metadata.dst_node_id if asked else reply.metadata.src_node_id
                kind = asked.metadata.message_type if asked else reply.metadata.message_type
                log.warning("Node %d failed: %s", node, reply.error.reason)  # the whole traceback
                self.event("failed", node, kind, one_line(reply.error.reason))
            else:
                good.append(reply)
        return good

    def accept(
        self, replies: list[Message], check: Callable[[Message], Checked], what: str, required: bool = True
    ) -> list[tuple[Message, Checked]]:
        """(reply, ``check(reply)``) for every reply that passes; the others are logged and
        dropped, whatever ``check`` raised, so no one reply can end the run. With
        ``required``, fewer than ``min-replies`` valid ones fail the round."""
        kept = []
        for reply in replies:
            node = reply.metadata.src_node_id
            try:
                kept.append((reply, check(reply)))
            except Exception as err:  # noqa: BLE001 - a client must not be able to crash the server
                reason = rejection_reason(err)
                log.warning("Rejected %s from node %d: %s", what, node, reason)
                self.rejected += 1
                self.event("rejected", node, reply.metadata.message_type, reason)
            else:
                self.event("accepted", node, reply.metadata.message_type, **stage_metrics(reply))
        if required and len(kept) < self.config.min_replies:
            raise RoundFailed(f"{len(kept)} valid {what} replies, fewer than min-replies={self.config.min_replies}")
        return kept
