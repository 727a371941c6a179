"""Client and server handlers in-process (no Ray): every exchange mode, bad replies, resume."""

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from common.models import build_model
from common.run_config import ConfigError, parse_run_config
from server.messaging import RunFailed
from server.server_app import main as server_main
from tests.fake_grid import FakeGrid

FAST = {
    "num-server-rounds": 2,
    "local-steps": 3,
    "batch-size": 16,
    "upload-samples": 32,
    "server-steps": 3,
    "server-batch-size": 16,
    "eval-samples": 40,
    "seed": 0,
}


def run(tmp_path, name, num_nodes=2, tamper=None, **overrides):
    config = {**FAST, "output-dir": str(tmp_path), "run-name": name, **overrides}
    grid = FakeGrid(config, num_nodes=num_nodes, tamper=tamper)
    from flwr.app import Context

    try:
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
    except RunFailed:  # a failed round ends the run failed; its files say why
        pass
    folder = tmp_path / name
    rows = [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((folder / "summary.json").read_text())
    return grid, rows, summary, folder


@pytest.mark.parametrize("exchange", ["weights", "images", "activations"])
def test_each_exchange_runs_rounds_and_writes_its_files(tmp_path, exchange):
    grid, rows, summary, folder = run(tmp_path, exchange, exchange=exchange)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["exchange"] == exchange and row["defense"] == "visualmixer"
        assert row["replies"] == 2 and row["bytes-up"] > 0 and row["bytes-down"] > 0
        assert row["vfe-sent"] >= 0.8  # every upload met the target
        assert row["obfuscation-seconds"] > 0  # what privacy cost the clients
        assert 0 <= row["federated-accuracy"] <= 1 and row["federated-nodes"] == 2
        assert np.isfinite(row["train-loss"]) and row["seconds"] > 0
    if exchange != "activations":
        assert 0 <= rows[-1]["central-accuracy"] <= 1
    for name in ("config.json", "final_model.pt", "checkpoint.pt", "summary.json"):
        assert (folder / name).exists()
    assert (folder / "samples.png").exists() == (exchange == "images")
    config = json.loads((folder / "config.json").read_text())
    assert config["run_config"]["exchange"] == exchange and "torch" in config["versions"]


def test_rounds_report_visualmixers_retries(tmp_path):
    """Each round sums the clients' retries: none at a target every first draw meets on
    these images, some at one that sends images back for another draw."""
    rows = {}
    for target in (0.5, 0.99):
        _, rows[target], _, _ = run(tmp_path, f"retries-{target}", exchange="images", **{"target-vfe": target})
    assert all(type(row["obfuscation-retries"]) is int for row in rows[0.5] + rows[0.99])
    assert all(row["obfuscation-retries"] == 0 for row in rows[0.5])
    assert all(row["obfuscation-retries"] > 0 for row in rows[0.99])


def test_images_never_leave_the_client_unobfuscated(tmp_path):
    grid, rows, _, _ = run(tmp_path, "img", exchange="images", **{"num-server-rounds": 1})
    from common.visualmixer import visual_feature_entropy

    queries = [m for m in grid.sent if m.metadata.message_type == "query.images"]
    assert queries and all("arrays" not in m.content for m in queries)  # nothing sent down
    uploads = [r.content["arrays"]["images"].numpy() for r in grid.received if "arrays" in r.content
               and "images" in r.content["arrays"]]
    assert len(uploads) == 2
    for images in uploads:  # every image that reached the server met the target
        assert (visual_feature_entropy(torch.from_numpy(images.copy())) >= 0.8).all()


def test_split_learning_keeps_client_layers_in_context_state(tmp_path):
    grid, rows, _, _ = run(tmp_path, "split", exchange="activations")
    for context in grid.contexts.values():
        assert "client-part" in context.state and "client-optimizer" in context.state
    assert all(r["gradients-applied"] == 2 for r in rows)


def test_split_learning_resume_sends_the_last_mean_client_layers_to_nodes_that_lost_theirs(tmp_path):
    """The server keeps the examples-weighted mean of the layers the nodes acknowledge with,
    checkpoints it, and a resumed run (new nodes, empty state) starts from it, not round 0."""
    first, _, _, folder = run(tmp_path, "split-resume", exchange="activations", **{"num-server-rounds": 2})
    initial = first.sent[0].content["arrays"].to_torch_state_dict()
    acks = [r for r in first.received if r.metadata.message_type == "train.apply_gradients"][-2:]  # round 2
    layers = [a.content["arrays"].to_torch_state_dict() for a in acks]
    counts = [int(a.content["metrics"]["num-examples"]) for a in acks]
    expected = {k: sum(l[k].double() * n for l, n in zip(layers, counts)) / sum(counts) for k in layers[0]}
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.allclose(checkpoint[k].double(), expected[k], atol=1e-6) for k in expected)
    assert any(not torch.equal(checkpoint[k], initial[k]) for k in initial)

    second, rows, _, _ = run(tmp_path, "split-resume", exchange="activations", **{"num-server-rounds": 3})
    sent = [m for m in second.sent if m.metadata.message_type == "query.activations"]
    assert {int(m.content["config"]["server-round"]) for m in sent} == {3}
    down = sent[0].content["arrays"].to_torch_state_dict()
    assert all(torch.equal(down[k], checkpoint[k]) for k in down)
    assert [r["round"] for r in rows] == [1, 2, 3] and rows[-1]["gradients-applied"] == 2


def test_split_backward_reuses_the_stored_batch_or_redraws_the_same_one(tmp_path):
    """The backward pass trains on exactly the obfuscated batch the server saw activations
    of: the one kept in context.state, or (when a node lost it) the same seeded redraw."""
    from client.exchanges import client_exchange
    from client.exchanges.activations import SPLIT_BATCH

    grid, _, _, _ = run(tmp_path, "split-batch", exchange="activations", **{"num-server-rounds": 1})
    context = grid.contexts[1]
    exchange = client_exchange(context)
    stored = exchange.stored_batch(1)
    assert stored is not None and exchange.stored_batch(2) is None  # keyed by round
    uploads = [r.content["arrays"] for r in grid.received if "arrays" in r.content]
    redrawn, labels, _ = exchange.split_batch(1)  # on the node's device (CUDA where present)
    assert torch.equal(redrawn.cpu(), stored[0]) and torch.equal(labels.cpu(), stored[1])
    assert any(torch.equal(torch.from_numpy(u["labels"].numpy()), stored[1]) for u in uploads)
    assert context.state[SPLIT_BATCH]["images"].numpy().dtype == np.uint8
    # The server knows the run's seed, the round and the partitions: replaying the transform
    # from them alone gives another shuffle, since the node mixed in a secret of its own.
    images, _, seed = exchange.node.batch(1)
    replayed = exchange.node.transform(seed)(images.to(exchange.node.device)).cpu()
    assert torch.equal(torch.sort(replayed.flatten())[0], torch.sort(stored[0].flatten())[0])  # same values
    assert not torch.equal(replayed, stored[0])


def _evaluation_metrics(grid) -> dict[int, list[dict]]:
    """Per node, the metrics of its evaluate replies in round order."""
    out: dict[int, list[dict]] = {}
    for reply in grid.received:
        if reply.metadata.message_type == "evaluate" and reply.has_content():
            out.setdefault(reply.metadata.src_node_id, []).append(dict(reply.content["metrics"]))
    return out


@pytest.mark.parametrize("keep", [True, False])
def test_federated_evaluation_uses_one_obfuscated_copy_per_run(tmp_path, monkeypatch, keep):
    """A node obfuscates its held-out split once (seeded) and keeps the copy in
    context.state; one too large to keep is made again each round, identical."""
    from client.exchanges import base as client_base
    from client.node import Node
    from common.visualmixer import visual_feature_entropy

    if not keep:
        monkeypatch.setattr(client_base, "EVAL_CACHE_BYTES", 0)
    grid, rows, _, _ = run(tmp_path, f"eval-{keep}", exchange="images")
    for node, metrics in _evaluation_metrics(grid).items():
        assert len(metrics) == 2 and metrics[0]["obfuscation-seconds"] > 0
        assert (metrics[1]["obfuscation-seconds"] == 0) == keep
        assert metrics[0]["obfuscation-retries"] >= 0 and (metrics[1]["obfuscation-retries"] == 0 or not keep)
        context = grid.contexts[node]
        assert (client_base.EVAL_SET in context.state) == keep
        images, labels, _ = Node.from_context(context).evaluation_set()
        if keep:
            record = context.state[client_base.EVAL_SET]
            assert torch.equal(torch.from_numpy(record["images"].numpy()), images)
            assert torch.equal(torch.from_numpy(record["labels"].numpy()), labels)
        assert bool((visual_feature_entropy(images) >= 0.8).all())


def test_central_evaluation_scores_the_same_obfuscated_copy_every_round(tmp_path):
    from common.run_config import parse_run_config
    from server.trainer import ServerTrainer

    config = parse_run_config({**FAST, "output-dir": str(tmp_path), "run-name": "central"})
    trainer = ServerTrainer(config)
    copy = trainer.central_eval_images()
    assert copy is trainer.central_eval_images()  # made once per run
    assert copy.shape == trainer.test_set.images.shape and not torch.equal(copy, trainer.test_set.images)
    assert torch.equal(copy, ServerTrainer(config).central_eval_images())  # a resumed run: the same
    assert trainer.evaluate_central() == trainer.evaluate_central()


def _replace_arrays(key, value):
    def tamper(msg, reply):
        arrays = {k: a.numpy() for k, a in reply.content["arrays"].items()}
        arrays[key] = value(arrays)
        content = RecordDict(
            {"arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
             "metrics": reply.content["metrics"]}
        )
        return Message(content, reply_to=msg)

    return tamper


BAD_IMAGES = {
    "float images": _replace_arrays("images", lambda a: a["images"].astype(np.float32)),
    "wrong shape": _replace_arrays("images", lambda a: a["images"][:, :, :16]),
    "labels out of range": _replace_arrays("labels", lambda a: a["labels"] + 100),
    "labels wrong dtype": _replace_arrays("labels", lambda a: a["labels"].astype(np.int32)),
    "too many samples": _replace_arrays("images", lambda a: np.concatenate([a["images"]] * 3)),
    "missing labels": lambda msg, reply: Message(
        RecordDict({"arrays": ArrayRecord({"images": reply.content["arrays"]["images"]}),
                    "metrics": reply.content["metrics"]}), reply_to=msg),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_replies_are_rejected_and_the_round_goes_on(tmp_path, caplog, case):
    _, rows, summary, _ = run(
        tmp_path, "bad", tamper={2: lambda m, r: BAD_IMAGES[case](m, r) if m.metadata.message_type == "query.images" else r},
        exchange="images", **{"num-server-rounds": 1},
    )
    assert summary["status"] == "completed"
    assert rows[0]["replies"] == 1
    assert any("Rejected images from node 2" in r.message for r in caplog.records)


BAD_ACTIVATIONS = {
    "non-finite": _replace_arrays("activations", lambda a: np.full_like(a["activations"], np.nan)),
    "wrong size": _replace_arrays("activations", lambda a: a["activations"][:, :8]),
    "float64": _replace_arrays("activations", lambda a: a["activations"].astype(np.float64)),
}


@pytest.mark.parametrize("case", sorted(BAD_ACTIVATIONS))
def test_bad_activation_replies_are_rejected(tmp_path, caplog, case):
    tamper = {2: lambda m, r: BAD_ACTIVATIONS[case](m, r) if m.metadata.message_type == "query.activations" else r}
    _, rows, summary, _ = run(tmp_path, "bad", tamper=tamper, exchange="activations", **{"num-server-rounds": 1})
    assert summary["status"] == "completed" and rows[0]["replies"] == 1
    assert rows[0]["gradients-applied"] == 1
    assert any("Rejected activations from node 2" in r.message for r in caplog.records)


# The first tensor of the model the default config trains.
WEIGHT = next(iter(build_model(parse_run_config({}).model).state_dict()))

BAD_WEIGHTS = {
    "nan weights": _replace_arrays(WEIGHT, lambda a: np.full_like(a[WEIGHT], np.nan)),
    "wrong shape": _replace_arrays(WEIGHT, lambda a: a[WEIGHT][:1]),
    "missing key": lambda msg, reply: Message(
        RecordDict({"arrays": ArrayRecord({"x": Array(np.zeros(1, np.float32))}),
                    "metrics": reply.content["metrics"]}), reply_to=msg),
    "no num-examples": lambda msg, reply: Message(
        RecordDict({"arrays": reply.content["arrays"], "metrics": MetricRecord({"train-loss": 1.0})}),
        reply_to=msg),
}


@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_bad_weight_replies_are_rejected_and_aggregation_uses_the_rest(tmp_path, caplog, case):
    tamper = {2: lambda m, r: BAD_WEIGHTS[case](m, r) if m.metadata.message_type == "train" else r}
    _, rows, summary, folder = run(tmp_path, "bad", tamper=tamper, exchange="weights", **{"num-server-rounds": 1})
    assert summary["status"] == "completed" and rows[0]["replies"] == 1
    assert any("Rejected weights from node 2" in r.message for r in caplog.records)
    state = torch.load(folder / "final_model.pt")
    assert all(torch.isfinite(v).all() for v in state.values())


def test_failed_and_silent_nodes(tmp_path, caplog):
    def fail(msg, reply):
        if msg.metadata.message_type != "train":
            return reply
        from flwr.app import Error
        return Message(Error(code=0, reason="out of memory"), reply_to=msg)

    tamper = {2: fail, 3: lambda m, r: None}  # node 2 errors, node 3 never answers
    _, rows, summary, _ = run(tmp_path, "faulty", num_nodes=3, tamper=tamper, **{"num-server-rounds": 1})
    assert summary["status"] == "completed" and rows[0]["replies"] == 1
    messages = " ".join(r.message for r in caplog.records)
    assert "Node 2 failed: out of memory" in messages and "Node 3 did not reply" in messages


def test_a_failed_nodes_traceback_is_stored_as_one_plain_line(tmp_path, caplog):
    """events.jsonl and the console get the exception's line without terminal codes; the
    server log keeps the whole traceback."""
    traceback = (
        "\x1b[36m(ClientAppActor pid=42)\x1b[0m Traceback (most recent call last):\n"
        '  File "client_app.py", line 9, in train\n    raise RuntimeError("CUDA out of memory")\n'
        "\x1b[31mRuntimeError: CUDA out of memory\x1b[0m\n"
    )

    def fail(msg, reply):
        from flwr.app import Error

        return Message(Error(code=0, reason=traceback), reply_to=msg)

    _, _, _, folder = run(tmp_path, "traceback", num_nodes=2, tamper={2: fail}, **{"num-server-rounds": 1})
    events = [json.loads(l) for l in (folder / "events.jsonl").read_text().splitlines()]
    reasons = {e["reason"] for e in events if e["outcome"] == "failed"}
    assert reasons == {"RuntimeError: CUDA out of memory"}
    assert any('line 9, in train' in r.message for r in caplog.records)


def test_a_run_with_a_round_missing_from_its_metrics_is_not_completed(tmp_path):
    """However it happened, a run whose metrics.jsonl lacks a completed round is failed."""
    run(tmp_path, "gap", **{"num-server-rounds": 2})
    metrics = tmp_path / "gap" / "metrics.jsonl"
    metrics.write_text("\n".join(metrics.read_text().splitlines()[1:]) + "\n")  # round 1's row lost
    _, rows, summary, _ = run(tmp_path, "gap", **{"num-server-rounds": 3})
    assert summary["status"] == "failed" and "rounds [1] have no completed row" in summary["message"]


def test_a_lost_node_is_logged_once_by_its_own_id(tmp_path, caplog):
    """The SuperLink answers for a node it lost with an error whose source is the SuperLink
    itself: the server names the node it asked, once, and does not also call it silent."""
    def lost(msg, reply):
        from flwr.app import Error

        error = Message(Error(code=1, reason="the node is unavailable"), reply_to=msg)
        error.metadata.__dict__["_src_node_id"] = 0  # the SuperLink's own id
        return error

    _, rows, _, folder = run(tmp_path, "lost", num_nodes=3, tamper={3: lost}, **{"num-server-rounds": 1})
    lines = [r.message for r in caplog.records if "Node" in r.message]
    assert lines.count("Node 3 failed: the node is unavailable") == 2  # train and evaluation
    assert not any("Node 0" in line or "Node 3 did not reply" in line for line in lines), lines
    events = [json.loads(l) for l in (folder / "events.jsonl").read_text().splitlines()]
    assert [e["what"] for e in events if e["node"] == "3"] == ["train", "evaluate"]


def test_too_few_valid_replies_stop_the_run_and_keep_the_checkpoint(tmp_path):
    silent = lambda m, r: None
    _, rows, summary, folder = run(tmp_path, "stop", **{"num-server-rounds": 1})
    before = (folder / "checkpoint.pt").read_bytes()
    _, rows, summary, folder = run(
        tmp_path, "stop", tamper={1: silent, 2: silent}, **{"num-server-rounds": 2}
    )
    assert summary["status"] == "failed" and "round 2 failed" in summary["message"]
    grid = FakeGrid({**FAST, "output-dir": str(tmp_path), "run-name": "stop", "num-server-rounds": 3},
                    tamper={1: silent, 2: silent})
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=grid.contexts[1].run_config)
    with pytest.raises(RunFailed, match="round 2 failed: 0 valid weights replies"):
        server_main(grid, context)  # Flower records a ServerApp that raises as finished:failed
    assert rows[-1] == {"round": 2, "status": "failed", "reason": rows[-1]["reason"]}
    assert (folder / "checkpoint.pt").read_bytes() == before


def test_restart_with_the_same_run_name_resumes(tmp_path):
    run(tmp_path, "resume", **{"num-server-rounds": 1})
    grid, rows, summary, _ = run(tmp_path, "resume", **{"num-server-rounds": 3})
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert summary["rounds_completed"] == 3
    train_messages = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert {int(m.content["config"]["server-round"]) for m in train_messages} == {2, 3}


@pytest.mark.parametrize(
    "key, value",
    [("exchange", "images"), ("defense", "none"), ("target-vfe", 0.6), ("seed", 1), ("learning-rate", 0.01)],
)
def test_resume_refuses_a_change_of_what_the_model_learns_and_overwrites_nothing(tmp_path, key, value):
    _, _, _, folder = run(tmp_path, "mine", **{"num-server-rounds": 1})
    before = {name: (folder / name).read_bytes() for name in ("checkpoint.pt", "config.json", "metrics.jsonl")}
    old = parse_run_config({**FAST}).to_dict()[key]
    with pytest.raises(ConfigError, match=f"{key}={old!r} -> {value!r}.*another run-name"):
        run(tmp_path, "mine", **{key: value, "num-server-rounds": 2})
    assert {name: (folder / name).read_bytes() for name in before} == before


def test_resume_allows_operational_changes(tmp_path):
    run(tmp_path, "ops", **{"num-server-rounds": 1})
    _, rows, summary, _ = run(tmp_path, "ops", **{"num-server-rounds": 2, "round-timeout": 30.0, "eval-samples": 20})
    assert [r["round"] for r in rows] == [1, 2] and summary["status"] == "completed"


def test_under_dp_sgd_with_noise_from_the_budget_the_planned_rounds_are_fixed(tmp_path):
    dp = {"defense": "dp-sgd", "num-server-rounds": 1}
    run(tmp_path, "dp", **dp)
    with pytest.raises(ConfigError, match="num-server-rounds=1 -> 2"):
        run(tmp_path, "dp", **{**dp, "num-server-rounds": 2})


@pytest.mark.parametrize("exchange", ["images", "activations", "weights"])
def test_a_64_pixel_run_trains_on_64_pixel_images_end_to_end(tmp_path, exchange):
    grid, rows, summary, folder = run(tmp_path, f"s64-{exchange}", exchange=exchange, **{"image-size": 64})
    assert summary["status"] == "completed" and len(rows) == 2
    assert all(row["vfe-sent"] >= 0.8 for row in rows)
    config = json.loads((folder / "config.json").read_text())["run_config"]
    assert config["image-size"] == 64 and config["region-size"] == 16
    if exchange == "images":  # the gallery of what the server received: 8 per row, 1-px padding
        from PIL import Image

        assert Image.open(folder / "samples.png").width == 8 * (64 + 1) + 1


def test_a_224_pixel_folder_run_resizes_photos_and_completes(tmp_path, shapes_folder):
    grid, rows, summary, folder = run(
        tmp_path, "s224", exchange="images", dataset="folder", **{"data-dir": str(shapes_folder), "image-size": 224,
                                                                  "upload-samples": 8, "server-batch-size": 8,
                                                                  "server-steps": 1, "num-server-rounds": 1,
                                                                  "eval-samples": 8}
    )
    assert summary["status"] == "completed", summary
    assert rows[0]["vfe-sent"] >= 0.8 and rows[0]["bytes-up"] > 2 * 8 * 3 * 224 * 224  # two nodes' uploads


def _replace_metrics(change):
    """A tamper that rewrites the reply's metrics with ``change(metrics)``, keeping its arrays."""
    def tamper(msg, reply):
        metrics = change(dict(reply.content["metrics"]))
        content = {"metrics": MetricRecord(metrics)}
        if "arrays" in reply.content.array_records:
            content["arrays"] = reply.content["arrays"]
        return Message(RecordDict(content), reply_to=msg)

    return tamper


def _originals(count: int) -> np.ndarray:
    """Unobfuscated images, as a client that skips VisualMixer would send them."""
    from common.shapes import generate_shapes

    return generate_shapes(count, seed=99)[0].numpy()


def _add_record(msg, reply):
    content = {name: record for name, record in reply.content.items()}
    return Message(RecordDict({**content, "extra": ConfigRecord({"note": "x"})}), reply_to=msg)


# (exchange, message type tampered, tamper, what the log must say)
BAD_REPLIES = {
    "metric of the wrong type": ("weights", "train", _replace_metrics(lambda m: {**m, "train-loss": [1.0, 2.0]}),
                                 "metric 'train-loss' must be a number, got list"),
    "NaN vfe": ("weights", "train", _replace_metrics(lambda m: {**m, "vfe": float("nan")}),
                "metric 'vfe' must be finite, got nan"),
    "unknown metric": ("weights", "train", _replace_metrics(lambda m: {**m, "note": 1.0}),
                       "unexpected ['note']"),
    "missing metric": ("images", "query.images", _replace_metrics(lambda m: {k: v for k, v in m.items() if k != "vfe"}),
                       "missing ['vfe']"),
    "negative seconds": ("images", "query.images",
                         _replace_metrics(lambda m: {**m, "obfuscation-seconds": -1.0}),
                         "metric 'obfuscation-seconds' must be >= 0.0, got -1.0"),
    "originals beside the images": ("images", "query.images",
                                    _replace_arrays("originals", lambda a: a["images"]),
                                    "unexpected ['originals']"),
    "an extra record": ("images", "query.images", _add_record, "the reply's records are"),
    "originals, not obfuscated": ("images", "query.images",
                                  _replace_arrays("images", lambda a: _originals(len(a["images"]))),
                                  "whatever the reply claims: not obfuscated"),
    "huge activations": ("activations", "query.activations",
                         _replace_arrays("activations", lambda a: np.full_like(a["activations"], 3e38)),
                         "activations holds a value of magnitude 3e+38, above max-abs-value=10000"),
    "huge weights": ("weights", "train", _replace_arrays(WEIGHT, lambda a: np.full_like(a[WEIGHT], 1e30)),
                     f"weights['{WEIGHT}'] holds a value of magnitude 1e+30, above max-abs-value=10000"),
    "num-examples beyond the data set": ("weights", "train", _replace_metrics(lambda m: {**m, "num-examples": 10**12}),
                                         "num-examples=1000000000000 is more than a node can hold (max-examples-per-reply=10000)"),
    "activations count": ("activations", "query.activations",
                          _replace_metrics(lambda m: {**m, "num-examples": 10**12}),
                          "num-examples=1000000000000 but 32 activations"),
}


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_replies_that_break_the_protocol_are_rejected_with_a_reason(tmp_path, caplog, case):
    exchange, message_type, change, reason = BAD_REPLIES[case]
    tamper = {2: lambda m, r: change(m, r) if m.metadata.message_type == message_type else r}
    _, rows, summary, _ = run(tmp_path, "bad", tamper=tamper, exchange=exchange, **{"num-server-rounds": 1})
    assert summary["status"] == "completed" and rows[0]["replies"] == 1
    rejections = [r.message for r in caplog.records if r.message.startswith("Rejected")]
    assert len(rejections) == 1 and "from node 2" in rejections[0] and reason in rejections[0], rejections
    # The same outcome, machine-readable, for the console: one rejected reply, with its reason.
    events = [json.loads(line) for line in (tmp_path / "bad" / "events.jsonl").read_text().splitlines()]
    rejected = [e for e in events if e["outcome"] == "rejected"]
    assert len(rejected) == 1 and rejected[0]["node"] == "2" and reason in rejected[0]["reason"], rejected
    assert rows[0]["rejected"] == 1


def test_evaluation_metrics_out_of_range_are_not_averaged(tmp_path, caplog):
    tamper = {2: lambda m, r: _replace_metrics(lambda x: {**x, "eval-accuracy": 7.5})(m, r)
              if m.metadata.message_type == "evaluate" else r}
    _, rows, _, _ = run(tmp_path, "eval", tamper=tamper, **{"num-server-rounds": 1})
    assert rows[0]["federated-nodes"] == 1 and 0 <= rows[0]["federated-accuracy"] <= 1
    assert "metric 'eval-accuracy' must be in [0.0, 1.0], got 7.5" in caplog.text


def test_non_finite_figures_are_written_as_strict_json(tmp_path):
    from server.run_store import RunStore

    store = RunStore(str(tmp_path), "nan")
    store.append_metrics({"round": 1, "train-loss": float("nan"), "per-node": {"1": float("inf")}})
    line = (tmp_path / "nan" / "metrics.jsonl").read_text()
    assert json.loads(line) == {"round": 1, "train-loss": None, "per-node": {"1": None}}
    assert "NaN" not in line and "Infinity" not in line


def test_every_reply_says_where_its_time_went_and_the_server_keeps_it(tmp_path):
    """Stage timings (client/timing.py) ride on every reply and land in events.jsonl; a
    reply may leave them out, and one out of range is rejected like any bad metric."""
    grid, _, _, folder = run(tmp_path, "stages", exchange="activations", **{"num-server-rounds": 1})
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    accepted = [e for e in events if e.get("outcome") == "accepted"]
    assert {e["what"] for e in accepted} == {"query.activations", "train.apply_gradients", "evaluate"}
    for event in accepted:
        assert event["stage-handler"] > 0 and event["stage-setup"] >= 0 and event["peak-rss-mb"] > 0
        assert event["stage-startup"] >= 0 and event["cpu-seconds"] >= 0
    from common.payloads import PayloadError, check_metrics
    from common.protocol import STAGE_METRICS

    spec = {"num-examples": (int, 1, None), **STAGE_METRICS}
    assert check_metrics({"num-examples": 3}, frozenset({"num-examples"}), spec) == {"num-examples": 3}
    with pytest.raises(PayloadError, match="'stage-setup' must be >= 0.0"):
        check_metrics({"num-examples": 3, "stage-setup": -1.0}, frozenset({"num-examples"}), spec)
