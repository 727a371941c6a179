"""What every exchange shares: the round's shape (configure, collect and validate, update)
and the rows it reports."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from flwr.app import ArrayRecord, Message

from common.payloads import PayloadError, check_metrics
from common.protocol import EVALUATE, expected_metrics, metric_specs
from common.run_config import RunConfig
from server.messaging import Messenger, RoundFailed, check_records, log, reply_metrics
from server.robustness import above_bound, fair_counts
from server.trainer import ServerTrainer

Kept = list[tuple[Message, Any]]  # (reply, what validate() returned) per accepted reply


class Exchange(ABC):
    """One way clients take part. A round is :meth:`configure` (the messages to send),
    :meth:`validate` on every reply (raise ``PayloadError`` to reject it), then
    :meth:`update` on the accepted ones, which returns the round's metrics."""

    name: ClassVar[str]  # the run-config value of ``exchange``

    def __init__(self, config: RunConfig, trainer: ServerTrainer) -> None:
        self.config = config
        self.trainer = trainer

    @abstractmethod
    def configure(self, server_round: int, messenger: Messenger) -> list[Message]: ...

    @abstractmethod
    def validate(self, reply: Message) -> Any: ...

    @abstractmethod
    def update(self, server_round: int, kept: Kept, messenger: Messenger) -> dict[str, Any]: ...

    def checked_metrics(self, reply: Message, message_type: str, arrays: bool) -> dict[str, Any]:
        """The reply's records and metrics checked against the protocol of ``message_type``
        under this run's defense (``common.protocol.expected_metrics``)."""
        check_records(reply, arrays)
        metrics = reply_metrics(reply)
        defense = self.config.active_defense
        return check_metrics(metrics, expected_metrics(message_type, defense, metrics), metric_specs(defense))

    def reject_above(self, kept: list, norms: list[float], multiple: float, what: str, messenger: Messenger) -> list:
        """The entries of ``kept`` (reply, payload) whose norm is at most ``multiple`` x the
        round's median (``server.robustness``); the others are rejected, each with an event."""
        median, outside = above_bound(norms, multiple)
        keep = []
        for (reply, payload), norm, reject in zip(kept, norms, outside, strict=True):
            if not reject:
                keep.append((reply, payload))
                continue
            messenger.rejected += 1
            messenger.event(
                "rejected", reply.metadata.src_node_id, reply.metadata.message_type,
                f"{what} {norm:.4g} is above {multiple} x the round's median {median:.4g}",
            )
        return keep

    def train_round(self, server_round: int, messenger: Messenger) -> dict[str, Any]:
        replies = messenger.send_and_collect(self.configure(server_round, messenger))
        return self.update(server_round, messenger.accept(replies, self.validate, self.name), messenger)

    def evaluation_arrays(self) -> ArrayRecord:
        """What a node needs to evaluate the model: the whole model (split learning overrides)."""
        return ArrayRecord(self.trainer.state_dict())

    def _evaluation(self, reply: Message) -> tuple[float, float, int]:
        metrics = self.checked_metrics(reply, EVALUATE.type, arrays=False)
        asked = self.config.eval_samples
        if asked and metrics["num-examples"] > asked:
            raise PayloadError(f"num-examples={metrics['num-examples']} but the server asked for eval-samples={asked}")
        return metrics["eval-accuracy"], metrics["eval-loss"], metrics["num-examples"]

    def evaluate_round(self, server_round: int, messenger: Messenger) -> dict[str, Any]:
        """Federated evaluation (``federated-*``) and, where the server holds the whole
        model and a test split, central evaluation (``central-*``)."""
        try:
            messages = messenger.to_every_node(EVALUATE.type, server_round, self.evaluation_arrays())
        except RoundFailed as err:
            log.warning("Federated evaluation skipped: %s", err)
            messages = []
        replies = messenger.send_and_collect(messages) if messages else []
        kept = messenger.accept(replies, self._evaluation, "evaluation", required=False)
        row: dict[str, Any] = {}
        if kept:
            # A node's say in the average is at most examples-share x the median count.
            counts = fair_counts([n for _, (_, _, n) in kept], self.config.examples_share)
            results = [(acc, loss, n) for (_, (acc, loss, _)), n in zip(kept, counts, strict=True)]
            row = {
                "federated-accuracy": weighted_mean([(acc, n) for acc, _, n in results]),
                "federated-loss": weighted_mean([(loss, n) for _, loss, n in results]),
                "federated-nodes": len(results),
            }
        return {**row, **self.trainer.evaluate_central()}




def weighted_mean(values: list[tuple[float, int]]) -> float | None:
    total = sum(w for _, w in values)
    return sum(v * w for v, w in values) / total if total else None


def client_train_metrics(replies: list[tuple[int, dict[str, Any]]], config: RunConfig) -> dict[str, Any]:
    """The round's row from (node id, metrics) of the accepted replies: how many, the mean
    train loss (weighted by ``num-examples``), and the defense's own figures (for VisualMixer
    the mean VFE sent and its cost summed; for DP-SGD each node's epsilon so far)."""
    row: dict[str, Any] = {"replies": len(replies)}
    loss = weighted_mean([(float(m["train-loss"]), int(m["num-examples"])) for _, m in replies if "train-loss" in m])
    if loss is not None:
        row["train-loss"] = loss
    return {**row, **config.active_defense.round_metrics(replies)}


def progress_line(row: dict[str, Any]) -> str:
    """The figures of a round's row that the log shows."""
    keys = ("train-loss", "federated-accuracy", "central-accuracy", "vfe-sent", "epsilon-max", "bytes-up", "seconds")
    parts = []
    for key in keys:
        if key in row:
            value = row[key]
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)
