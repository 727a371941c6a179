"""The ServerApp: drives every round, validates every reply, trains the shared DNN.

* ``weights``: the chosen Message-API strategy (FedAvg by default) configures the round and
  aggregates the replies that passed validation.
* ``images``: ``query.images`` to every node; the server trains on the obfuscated uploads.
* ``activations``: ``query.activations`` up, the server trains its layers and sends the
  gradient at the cut down with ``train.apply_gradients`` (Flower's vertical-fl pattern).

A reply that fails validation is logged with its node id and dropped; the round goes on
with the rest when at least ``min-replies`` passed, otherwise it is recorded as failed and
the run stops, keeping its checkpoint.
"""

from __future__ import annotations

import math

import logging
import time

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as strategies

from common.payloads import (
    PayloadError,
    check_activations,
    check_images,
    check_num_examples,
    check_weights,
)
from common.run_config import RunConfig, parse_run_config
from server.trainer import ServerTrainer

log = logging.getLogger("flwr")
app = ServerApp()

STRATEGY_CLASSES = {
    "fedavg": strategies.FedAvg,
    "fedavgm": strategies.FedAvgM,
    "fedadam": strategies.FedAdam,
    "fedyogi": strategies.FedYogi,
    "fedadagrad": strategies.FedAdagrad,
    "fedmedian": strategies.FedMedian,
    "fedtrimmedavg": strategies.FedTrimmedAvg,
}


class RoundFailed(RuntimeError):
    pass


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = parse_run_config(context.run_config)
    trainer = ServerTrainer(config)
    started = time.time()
    strategy = make_strategy(config)
    log.info(
        "VisualMixer run %r: exchange=%s defense=%s dataset=%s rounds %d..%d -> %s",
        config.run_name, config.exchange, config.defense, config.dataset,
        trainer.start_round, config.num_server_rounds, trainer.store.path,
    )
    for server_round in range(trainer.start_round, config.num_server_rounds + 1):
        round_start = time.time()
        try:
            row = run_round(grid, config, trainer, strategy, server_round)
        except RoundFailed as err:
            trainer.store.append_metrics({"round": server_round, "status": "failed", "reason": str(err)})
            summary = trainer.finish("failed", f"round {server_round} failed: {err}", started)
            log.error("Stopping: %s (checkpoint of round %d kept)", summary["message"], server_round - 1)
            return
        row["seconds"] = round(time.time() - round_start, 2)
        trainer.finish_round(server_round, row)
        log.info("[round %d/%d] %s", server_round, config.num_server_rounds, _progress(row))
    summary = trainer.finish("completed", "all rounds completed", started)
    log.info("Run %r finished: %s", config.run_name, summary["last"])


def make_strategy(config: RunConfig):
    if config.exchange != "weights":
        return None
    return STRATEGY_CLASSES[config.strategy](
        fraction_train=1.0,
        fraction_evaluate=0.0,  # federated evaluation is driven below for every exchange
        min_train_nodes=config.min_replies,
        min_available_nodes=config.min_replies,
    )


def run_round(grid: Grid, config: RunConfig, trainer: ServerTrainer, strategy, server_round: int) -> dict:
    traffic = Traffic()
    if config.exchange == "weights":
        train_metrics = weights_round(grid, config, trainer, strategy, server_round, traffic)
    elif config.exchange == "images":
        train_metrics = images_round(grid, config, trainer, server_round, traffic)
    else:
        train_metrics = activations_round(grid, config, trainer, server_round, traffic)
    federated = federated_evaluate(grid, config, trainer, server_round, traffic)
    central = trainer.evaluate_central()
    return {
        "round": server_round,
        "status": "completed",
        "exchange": config.exchange,
        "defense": config.defense,
        **train_metrics,
        **{f"federated-{k}": v for k, v in federated.items()},
        **central,
        "bytes-up": traffic.up,
        "bytes-down": traffic.down,
    }


class Traffic:
    """Bytes of array payloads sent down to and received up from the nodes."""

    def __init__(self) -> None:
        self.up = 0
        self.down = 0

    @staticmethod
    def size(msg: Message) -> int:
        if not msg.has_content():
            return 0
        return sum(record.count_bytes() for record in msg.content.array_records.values())


def exchange(grid: Grid, messages: list[Message], config: RunConfig, traffic: Traffic) -> list[Message]:
    """Send, wait (bounded by round-timeout), and return the replies that carry content."""
    traffic.down += sum(Traffic.size(m) for m in messages)
    replies = list(grid.send_and_receive(messages, timeout=config.round_timeout))
    answered = {r.metadata.src_node_id for r in replies}
    for m in messages:
        if m.metadata.dst_node_id not in answered:
            log.warning("Node %d did not reply within %.0f s", m.metadata.dst_node_id, config.round_timeout)
    good = []
    for reply in replies:
        traffic.up += Traffic.size(reply)
        if reply.has_error():
            log.warning("Node %d failed: %s", reply.metadata.src_node_id, reply.error.reason)
        else:
            good.append(reply)
    return good


def accepted(replies: list[Message], check, config: RunConfig, what: str) -> list:
    """Run ``check`` on every reply; log and drop the bad ones; enforce min-replies."""
    kept = []
    for reply in replies:
        try:
            kept.append((reply, check(reply)))
        except (PayloadError, KeyError, TypeError, ValueError) as err:
            log.warning("Rejected %s from node %d: %s", what, reply.metadata.src_node_id, err)
    if len(kept) < config.min_replies:
        raise RoundFailed(f"{len(kept)} valid {what} replies, fewer than min-replies={config.min_replies}")
    return kept


def _nodes(grid: Grid, config: RunConfig) -> list[int]:
    deadline = time.time() + config.round_timeout
    while len(nodes := list(grid.get_node_ids())) < config.min_replies:
        if time.time() > deadline:
            raise RoundFailed(f"{len(nodes)} nodes connected, fewer than min-replies={config.min_replies}")
        time.sleep(1)
    return nodes


def _messages(grid: Grid, config: RunConfig, message_type: str, arrays: ArrayRecord | None, server_round: int, extra=None):
    content = {"config": ConfigRecord({"server-round": server_round, **(extra or {})})}
    if arrays is not None:
        content["arrays"] = arrays
    return [
        Message(RecordDict(dict(content)), dst_node_id=node, message_type=message_type)
        for node in _nodes(grid, config)
    ]


def _metrics(reply: Message) -> dict:
    records = list(reply.content.metric_records.values())
    if len(records) != 1:
        raise PayloadError(f"expected one MetricRecord, got {len(records)}")
    return dict(records[0])


def _mean(values: list[tuple[float, int]]) -> float | None:
    total = sum(w for _, w in values)
    return sum(v * w for v, w in values) / total if total else None


# -- exchange = weights --------------------------------------------------------------------
def weights_round(grid, config, trainer, strategy, server_round, traffic) -> dict:
    reference = {k: v.numpy() for k, v in trainer.state_dict().items()}
    messages = list(
        strategy.configure_train(
            server_round, ArrayRecord(trainer.state_dict()), ConfigRecord({"lr": config.learning_rate}), grid
        )
    )
    replies = exchange(grid, messages, config, traffic)

    def check(reply: Message):
        records = reply.content.array_records
        if set(records) != {"arrays"}:
            raise PayloadError(f"expected one ArrayRecord 'arrays', got {sorted(records)}")
        check_weights({k: a.numpy() for k, a in records["arrays"].items()}, reference)
        metrics = _metrics(reply)
        check_num_examples(metrics)
        if metrics.get("dp-budget-spent"):
            raise PayloadError(
                f"privacy budget spent (epsilon {float(metrics['epsilon']):.3f}, next round would "
                f"exceed target-epsilon={config.target_epsilon}); not aggregated"
            )
        return metrics

    kept = accepted(replies, check, config, "weights")
    arrays, _ = strategy.aggregate_train(server_round, [reply for reply, _ in kept])
    if arrays is None:
        raise RoundFailed("the strategy returned no aggregate")
    trainer.set_weights(arrays.to_torch_state_dict())
    return {**_client_train_metrics(kept), **_privacy([(r.metadata.src_node_id, m) for r, m in kept])}


def _privacy(replies: list[tuple[int, dict]]) -> dict:
    """Each node's total epsilon so far (DP-SGD arms only)."""
    per_node = {str(node): float(m["epsilon"]) for node, m in replies if "epsilon" in m}
    if not per_node:
        return {}
    row = {"epsilon-max": max(per_node.values()), "epsilon-per-node": per_node}
    sigmas = [float(m["noise-multiplier"]) for _, m in replies if "noise-multiplier" in m]
    if sigmas:
        row["noise-multiplier-min"] = min(sigmas)
    spent = [node for node, m in replies if m.get("dp-budget-spent")]
    if spent:
        row["dp-budget-spent-nodes"] = len(spent)
    return row


def _client_train_metrics(kept) -> dict:
    counts = [(m, int(m["num-examples"])) for _, m in kept]
    row = {"replies": len(kept)}
    for key, name in (("train-loss", "train-loss"), ("vfe", "vfe-sent")):
        value = _mean([(float(m[key]), n) for m, n in counts if key in m])
        if value is not None:
            row[name] = value
    # What privacy cost the clients this round: seconds inside VisualMixer and its retries
    # (extra attempts for images that fell short of the target), summed.
    for key, digits in (("obfuscation-seconds", 4), ("obfuscation-retries", None)):  # None: an int
        values = [m.get(key) for m, _ in counts]
        values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0]
        if values:
            row[key] = round(sum(values), digits)
    return row


# -- exchange = images ---------------------------------------------------------------------
def images_round(grid, config, trainer, server_round, traffic) -> dict:
    replies = exchange(grid, _messages(grid, config, "query.images", None, server_round), config, traffic)
    shape = (trainer.channels, 32, 32)
    limit = config.upload_samples or 10**9

    def check(reply: Message):
        arrays = {k: a.numpy() for k, a in reply.content["arrays"].items()}
        images, labels = check_images(arrays, shape, trainer.num_classes, limit)
        metrics = _metrics(reply)
        if check_num_examples(metrics) != len(labels):
            raise PayloadError(f"num-examples={metrics['num-examples']} but {len(labels)} images")
        return images, labels, metrics

    kept = accepted(replies, check, config, "images")
    loss = trainer.train_on_uploads([(images, labels) for _, (images, labels, _) in kept])
    row = _client_train_metrics([(r, m) for r, (_, _, m) in kept])
    row.pop("train-loss", None)
    return {**row, "train-loss": loss}


# -- exchange = activations ----------------------------------------------------------------
def activations_round(grid, config, trainer, server_round, traffic) -> dict:
    init = ArrayRecord({k: Array(v.numpy()) for k, v in trainer.state_dict(trainer.client_part).items()})
    replies = exchange(grid, _messages(grid, config, "query.activations", init, server_round), config, traffic)
    shape = trainer.activation_shape()
    limit = upload_limit(config)

    def check(reply: Message):
        arrays = {k: a.numpy() for k, a in reply.content["arrays"].items()}
        activations, labels = check_activations(arrays, shape, trainer.num_classes, limit)
        metrics = _metrics(reply)
        check_num_examples(metrics)
        return activations, labels, metrics

    kept = accepted(replies, check, config, "activations")
    activations = torch.cat([torch.from_numpy(a.copy()) for _, (a, _, _) in kept])
    labels = torch.cat([torch.from_numpy(y.copy()) for _, (_, y, _) in kept])
    gradient, loss = trainer.train_top(activations, labels)

    sizes = [len(y) for _, (_, y, _) in kept]
    downs = []
    for (reply, _), grad in zip(kept, gradient.split(sizes), strict=True):
        arrays = ArrayRecord({"gradients": Array(grad.numpy())})
        downs.append(
            Message(
                RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})}),
                dst_node_id=reply.metadata.src_node_id,
                message_type="train.apply_gradients",
            )
        )
    acks = exchange(grid, downs, config, traffic)
    ack_metrics = []
    for ack in acks:
        try:
            ack_metrics.append((ack.metadata.src_node_id, _metrics(ack)))
        except PayloadError as err:
            log.warning("Rejected gradient acknowledgement from node %d: %s", ack.metadata.src_node_id, err)
    row = _client_train_metrics([(r, m) for r, (_, _, m) in kept])
    row.pop("train-loss", None)
    applied = sum(1 for _, m in ack_metrics if not m.get("dp-budget-spent"))
    return {**row, "train-loss": loss, "gradients-applied": applied, **_privacy(ack_metrics)}


def upload_limit(config: RunConfig) -> int:
    """Most samples one node may send per round. Under DP-SGD the client's batch is Poisson
    with mean ``upload-samples``, so the cap sits 6 standard deviations above it."""
    if not config.upload_samples:
        return 10**9
    if config.uses_dp:
        return int(config.upload_samples + 6 * config.upload_samples**0.5) + 1
    return config.upload_samples


# -- federated evaluation ------------------------------------------------------------------
def federated_evaluate(grid, config, trainer, server_round, traffic) -> dict:
    part = trainer.server_part if config.exchange == "activations" else None
    arrays = ArrayRecord({k: Array(v.numpy()) for k, v in trainer.state_dict(part).items()})
    try:
        replies = exchange(grid, _messages(grid, config, MessageType.EVALUATE, arrays, server_round), config, traffic)
    except RoundFailed as err:
        log.warning("Federated evaluation skipped: %s", err)
        return {}
    results = []
    for reply in replies:
        try:
            metrics = _metrics(reply)
            n = check_num_examples(metrics)
            results.append((float(metrics["eval-accuracy"]), float(metrics["eval-loss"]), n))
        except (PayloadError, KeyError, TypeError, ValueError) as err:
            log.warning("Rejected evaluation from node %d: %s", reply.metadata.src_node_id, err)
    if not results:
        return {}
    return {
        "accuracy": _mean([(a, n) for a, _, n in results]),
        "loss": _mean([(l, n) for _, l, n in results]),
        "nodes": len(results),
    }


def _progress(row: dict) -> str:
    keys = ("train-loss", "federated-accuracy", "central-accuracy", "vfe-sent", "epsilon-max", "bytes-up", "seconds")
    parts = []
    for key in keys:
        if key in row:
            value = row[key]
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)



