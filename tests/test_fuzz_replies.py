"""Property-based fuzzing of every reply the server reads, in every exchange.

Each exchange's replies (train, query.images, query.activations, train.apply_gradients,
evaluate) are recorded once from the real ClientApp. Then, for each drawn example, one
round of the real ServerApp runs on a grid that replays them, with node 2's reply to one
message type mutated (records, metrics, arrays: dropped, added, retyped, reshaped, filled
with NaN, inf or huge values). The properties: no exception escapes the round, which
completes on node 1's reply; a rejected reply leaves the model byte-identical to a round in
which node 2 never answered that message. The test prints the corpus and the outcomes.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.messaging import RunFailed
from server.server_app import main as server_main
from tests.fake_grid import FakeGrid, set_identity
from tests.test_flower_apps import FAST

TYPES = {
    "weights": ("train", "evaluate"),
    "images": ("query.images", "evaluate"),
    "activations": ("query.activations", "train.apply_gradients", "evaluate"),
}
EXAMPLES = 60  # per exchange
VALUES = [float("nan"), float("inf"), -float("inf"), -1.0, 0, 3e38, 10**12, 2**63 - 1, [1.0, 2.0], [3]]


class ReplayGrid:
    """Answers every message with the reply recorded for (node, message type); ``mutate``
    rewrites node 2's reply to ``target``, or (``None``) drops it (node 2 stays silent)."""

    def __init__(self, recorded, target: str, mutate) -> None:
        self.recorded, self.target, self.mutate = recorded, target, mutate

    def get_node_ids(self):
        return [1, 2]

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            content = self.recorded[(node, kind)]
            if node == 2 and kind == self.target:
                content = self.mutate(content)
                if content is None:
                    continue
            replies.append(Message(content, reply_to=msg))
        return replies


def record(exchange: str, tmp_path) -> dict:
    config = {**FAST, "exchange": exchange, "num-server-rounds": 1, "output-dir": str(tmp_path), "run-name": "rec"}
    grid = FakeGrid(config, num_nodes=2)
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
    return {(m.metadata.dst_node_id, m.metadata.message_type): r.content for m, r in zip(grid.sent, grid.received)}


def one_round(exchange: str, tmp_path, name: str, recorded, target: str, mutate) -> tuple[dict, list, bytes]:
    config = {**FAST, "exchange": exchange, "num-server-rounds": 1, "output-dir": str(tmp_path), "run-name": name}
    set_identity()
    torch.manual_seed(0)
    try:
        server_main(ReplayGrid(recorded, target, mutate),
                    Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
    except RunFailed:
        pass  # judged below: the round must have completed
    folder = tmp_path / name
    summary = json.loads((folder / "summary.json").read_text())
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    state = torch.load(folder / "checkpoint.pt", weights_only=False)["model"]
    return summary, events, b"".join(v.numpy().tobytes() for v in state.values())


@st.composite
def mutations(draw, content: RecordDict):
    """A function that returns a mutated copy of a reply's content, and its name."""
    records = {name: record for name, record in content.items()}
    arrays = {k: a.numpy() for k, a in records["arrays"].items()} if "arrays" in records else None
    metrics = dict(records["metrics"]) if "metrics" in records else {}
    kinds = ["drop record", "extra record", "metric value", "drop metric", "extra metric"]
    if arrays:
        kinds += ["array dtype", "array shape", "array values", "drop array", "extra array"]
    kind = draw(st.sampled_from(kinds))
    if kind == "drop record":
        records.pop(draw(st.sampled_from(sorted(records))))
    elif kind == "extra record":
        records["extra"] = draw(st.sampled_from([ConfigRecord({"x": 1}), MetricRecord({"x": 1.0}),
                                                 ArrayRecord({"x": Array(np.zeros(2, np.float32))})]))
    elif kind == "metric value" and metrics:
        metrics[draw(st.sampled_from(sorted(metrics)))] = draw(st.sampled_from(VALUES))
    elif kind == "drop metric" and metrics:
        metrics.pop(draw(st.sampled_from(sorted(metrics))))
    elif kind == "extra metric":
        metrics[draw(st.sampled_from(["note", "vfe-claimed", "epsilon"]))] = draw(st.sampled_from([1.0, 7]))
    elif arrays:
        key = draw(st.sampled_from(sorted(arrays)))
        value = arrays[key]
        if kind == "array dtype":
            arrays[key] = value.astype(draw(st.sampled_from([np.float64, np.float16, np.int32, np.uint8, np.int64])))
        elif kind == "array shape":
            arrays[key] = draw(st.sampled_from([value[:0], value[:1], value.reshape(-1), value[None], np.concatenate([value, value])]))
        elif kind == "array values" and value.dtype.kind == "f":
            arrays[key] = np.full(value.shape, draw(st.sampled_from([np.nan, np.inf, -np.inf, 3e38, -1e6])), value.dtype)
        elif kind == "array values":  # labels and uint8 images: out of range, wrapped to the dtype
            arrays[key] = np.full(value.shape, draw(st.sampled_from([-1, 255, 10**6])), np.int64).astype(value.dtype)
        elif kind == "drop array":
            arrays.pop(key)
        else:
            arrays["originals"] = value
    if "metrics" in records:
        records["metrics"] = MetricRecord(metrics)
    if arrays is not None and "arrays" in records:
        records["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return kind, lambda _: RecordDict(dict(records))


@pytest.mark.parametrize("exchange", sorted(TYPES))
def test_fuzzed_replies_never_end_the_round_nor_touch_the_model_when_rejected(exchange, tmp_path, capsys):
    recorded = record(exchange, tmp_path)
    silent = {kind: one_round(exchange, tmp_path, f"silent-{kind}", recorded, kind, lambda c: None)[2]
              for kind in TYPES[exchange]}
    outcomes: Counter = Counter()
    count = iter(range(10**6))

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(data=st.data())
    def check(data):
        kind = data.draw(st.sampled_from(TYPES[exchange]))
        name, mutate = data.draw(mutations(recorded[(2, kind)]))
        summary, events, model = one_round(exchange, tmp_path, f"fuzz-{next(count)}", recorded, kind, mutate)
        assert summary["status"] == "completed", (kind, name, summary)
        mine = [e for e in events if e["node"] == "2" and e.get("what") and e["outcome"] != "accepted"]
        outcome = "rejected" if any(e["outcome"] == "rejected" for e in mine) else "accepted"
        outcomes[(kind, outcome)] += 1
        if outcome == "rejected":
            assert model == silent[kind], (kind, name)  # byte-identical to node 2 staying silent

    check()
    total = sum(outcomes.values())
    with capsys.disabled():
        print(f"\n[fuzz {exchange}] {total} mutated replies: " +
              ", ".join(f"{kind} {outcome} {n}" for (kind, outcome), n in sorted(outcomes.items())))
    assert total >= EXAMPLES
