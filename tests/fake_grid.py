"""In-process stand-ins for Flower's runtime, for tests and benchmarks: the real ClientApp and
ServerApp code runs, but messages go through a fake Grid instead of a SuperLink (no Ray, no
processes), one node after the other."""

from __future__ import annotations

import time
from collections.abc import Callable

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app as client_app


def set_identity() -> None:
    """Messages built outside a run need a run id (Flower reads it from the process)."""
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1


class FakeGrid:
    """Routes every message to the ClientApp of its node, each node with its own Context."""

    def __init__(
        self,
        run_config: dict,
        num_nodes: int = 2,
        tamper: dict[int, Callable[[Message], Message | None]] | None = None,
    ) -> None:
        set_identity()
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": node - 1, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for node in range(1, num_nodes + 1)
        }
        self.tamper = tamper or {}
        self.sent: list[Message] = []
        self.received: list[Message] = []  # every reply that reached the server
        # (server round, seconds inside the ClientApp, reply or None) for every message
        self.log: list[tuple[int, float, Message | None]] = []

    @property
    def client_seconds(self) -> float:
        """Time spent inside ClientApp handlers, all rounds."""
        return sum(seconds for _, seconds, _ in self.log)

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # as Flower's grid does on push
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            start = time.perf_counter()
            reply = client_app(msg, self.contexts[node])
            seconds = time.perf_counter() - start
            if node in self.tamper:
                reply = self.tamper[node](msg, reply)
            self.log.append((_server_round(msg), seconds, reply))
            if reply is not None:  # None = the node timed out
                replies.append(reply)
                self.received.append(reply)
        return replies


def _server_round(msg: Message) -> int:
    """The round a server message belongs to (every message this app sends carries it)."""
    if "config" not in msg.content or "server-round" not in msg.content["config"]:
        return 0
    return int(msg.content["config"]["server-round"])


def one_round_of_each_exchange() -> list[dict]:
    """One tiny in-process round of every exchange under the default defense, through the
    real ServerApp and ClientApp; each run's metrics row (two nodes must have replied)."""
    import json
    import tempfile

    from server.server_app import main as server_main

    rows = []
    for exchange in ("weights", "images", "activations"):
        out = tempfile.mkdtemp()
        config = {"output-dir": out, "run-name": "r", "num-server-rounds": 1, "local-steps": 2,
                  "upload-samples": 16, "server-steps": 2, "eval-samples": 16, "exchange": exchange}
        server_main(FakeGrid(config, num_nodes=2),
                    Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
        with open(f"{out}/r/metrics.jsonl") as f:
            rows.append(json.loads(f.read().splitlines()[-1]))
        assert rows[-1]["replies"] == 2 and rows[-1]["vfe-sent"] >= 0.8, rows[-1]
    return rows
