"""The messages of each exchange: one place for their types, array keys and metric keys,
read by the ClientApp's handlers, the server's exchanges and reply validation.

A reply's metrics are exactly its message's :attr:`Message.metrics` plus what the run's
defense adds (:meth:`common.defenses.Defense.reply_metrics`); a reply that trained nothing on
the defense's account (a spent DP budget) carries ``num-examples`` and the defense's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.defenses import Defense


@dataclass(frozen=True)
class Message:
    """One message type: Flower's category (``train``, ``query``, ``evaluate``) and action
    (``None``: the category alone), the arrays each way (``None``: the model's state-dict
    keys) and the metric keys every reply carries."""

    category: str
    action: str | None
    sends: frozenset[str] | None
    replies: frozenset[str] | None
    metrics: frozenset[str]

    @property
    def type(self) -> str:
        """Flower's ``message_type``."""
        return self.category if self.action is None else f"{self.category}.{self.action}"


GRADIENTS = "gradients"  # the array of ``train.apply_gradients``: d loss / d activations at the cut

TRAIN = Message("train", None, None, None, frozenset({"num-examples", "train-loss"}))
QUERY_IMAGES = Message("query", "images", frozenset(), frozenset({"images", "labels"}), frozenset({"num-examples"}))
QUERY_ACTIVATIONS = Message(
    "query", "activations", None, frozenset({"activations", "labels"}), frozenset({"num-examples"})
)
APPLY_GRADIENTS = Message("train", "apply_gradients", frozenset({GRADIENTS}), None, frozenset({"num-examples"}))
EVALUATE = Message("evaluate", None, None, frozenset(), frozenset({"num-examples", "eval-accuracy", "eval-loss"}))

@dataclass(frozen=True)
class Exchange:
    """One way clients take part: the messages of one round, in order, and what the server
    trains itself (``model``: the whole model on uploads; ``top``: the layers after the cut;
    ``None``: nothing, it aggregates)."""

    name: str
    messages: tuple[Message, ...]
    server_trains: str | None

    @property
    def server_holds_model(self) -> bool:
        """Whether the server holds every layer (and so can score the model centrally)."""
        return self.server_trains != "top"


# Run-config ``exchange`` -> its protocol.
EXCHANGES: dict[str, Exchange] = {
    e.name: e
    for e in (
        Exchange("images", (QUERY_IMAGES, EVALUATE), "model"),
        Exchange("activations", (QUERY_ACTIVATIONS, APPLY_GRADIENTS, EVALUATE), "top"),
        Exchange("weights", (TRAIN, EVALUATE), None),
    )
}
MESSAGES: dict[str, Message] = {m.type: m for e in EXCHANGES.values() for m in e.messages}

# Every metric a reply may carry besides a defense's own: (type, lowest, highest).
METRICS: dict[str, tuple[type, float, float | None]] = {
    "num-examples": (int, 1, None),
    "train-loss": (float, 0.0, None),
    "eval-accuracy": (float, 0.0, 1.0),
    "eval-loss": (float, 0.0, None),
}
# What the ClientApp says of its own cost (client/timing.py): any reply may carry them, none
# must. The server keeps them in events.jsonl; nothing is computed from them.
STAGE_METRICS: dict[str, tuple[type, float, float | None]] = {
    key: (float, 0.0, None)
    for key in ("stage-startup", "stage-imports", "stage-setup", "stage-handler", "stage-forward", "cpu-seconds",
                "peak-rss-mb", "forwarder-peak-rss-mb")
}


def expected_metrics(message_type: str, defense: Defense, metrics: Mapping[str, Any]) -> frozenset[str]:
    """The exact metric keys a well-formed reply to ``message_type`` carries under ``defense``,
    given the reply's own ``metrics`` (a reply saying it trained nothing carries fewer)."""
    if message_type not in MESSAGES:
        raise ValueError(f"no metrics are defined for message type {message_type!r}")
    stopped = defense.stopped_reply(message_type, metrics)
    if stopped is not None:
        return frozenset({"num-examples"}) | stopped
    return MESSAGES[message_type].metrics | defense.reply_metrics(message_type)


def metric_specs(defense: Defense) -> dict[str, tuple[type, float, float | None]]:
    """(type, lowest, highest) of every metric a reply may carry under ``defense``."""
    return {**METRICS, **STAGE_METRICS, **defense.metric_specs}
