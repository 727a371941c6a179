"""The node worker (client/worker.py): the ClientApp forwards each message over a Unix
socket to a long-lived process that keeps the node's data and state between messages."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from client.worker import NodeWorker, Requirement, listen, main
from server.messaging import RunFailed
from server.server_app import main as server_main
from tests.fake_grid import FakeGrid
from tests.test_flower_apps import FAST
from tests.test_node_imports import run_python


class Served:
    """A NodeWorker answering on a socket in a background thread of this process."""

    def __init__(self, path: Path, worker: NodeWorker) -> None:
        self.path, self.worker = path, worker
        self.listener = listen(path)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                with self.listener.accept() as conn:
                    self.worker.serve_connection(conn)
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()


def run_with_workers(tmp_path, name: str, workers: dict[int, str], **overrides) -> tuple[list, list, dict]:
    config = {**FAST, "output-dir": str(tmp_path), "run-name": name, **overrides}
    grid = FakeGrid(config, num_nodes=2)
    for node, address in workers.items():
        grid.contexts[node].node_config["worker"] = address
    try:
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
    except RunFailed:
        pass
    folder = tmp_path / name
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    return rows, events, json.loads((folder / "summary.json").read_text())


@pytest.mark.parametrize("exchange", ["weights", "images", "activations"])
def test_a_run_answered_by_node_workers_completes(tmp_path, exchange):
    served = [Served(tmp_path / f"node{i}.sock", NodeWorker()) for i in (1, 2)]
    try:
        rows, events, summary = run_with_workers(
            tmp_path, exchange, {1: str(served[0].path), 2: str(served[1].path)}, exchange=exchange)
    finally:
        for s in served:
            s.close()
    assert summary["status"] == "completed" and [r["replies"] for r in rows] == [2, 2]
    assert all(r["vfe-sent"] >= 0.8 for r in rows)
    accepted = [e for e in events if e.get("outcome") == "accepted"]
    assert accepted and all(e["stage-forward"] > 0 and e["forwarder-peak-rss-mb"] > 0 for e in accepted)
    # Each worker built its node once and keeps the run's state (the evaluation copy) in memory.
    for s in served:
        assert len(s.worker.runs) == 1
        (run,) = s.worker.runs.values()
        assert "eval-set" in run.context.state
    later = [e for e in accepted if e["round"] == 2]
    assert all(e["stage-setup"] < 0.05 for e in later), [e["stage-setup"] for e in later]


def test_a_worker_refuses_a_defense_its_operator_did_not_allow(tmp_path):
    served = Served(tmp_path / "node2.sock", NodeWorker(defenses={"visualmixer"}))
    try:
        rows, events, _ = run_with_workers(tmp_path, "refused", {2: str(served.path)}, defense="none",
                                           **{"min-replies": 1, "num-server-rounds": 1})
    finally:
        served.close()
    failed = [e for e in events if e.get("outcome") == "failed"]
    assert failed and all(e["node"] == "2" for e in failed)
    assert "defense='none' is not allowed on this node" in failed[0]["reason"]
    assert rows[0]["replies"] == 1  # the other node still counted


def test_the_worker_node_config_overrides_the_forwarded_one(tmp_path, shapes_folder):
    """The operator's data-dir wins over what the run's context carries; a folder that
    does not exist is a one-line failure and the worker keeps serving."""
    missing = tmp_path / "no-such-folder"
    worker = NodeWorker({"data-dir": str(missing)})
    served = Served(tmp_path / "node2.sock", worker)
    try:
        _, events, _ = run_with_workers(tmp_path, "override", {2: str(served.path)}, dataset="folder",
                                        **{"data-dir": str(shapes_folder), "min-replies": 1, "num-server-rounds": 1})
    finally:
        served.close()
    reasons = [e["reason"] for e in events if e.get("outcome") == "failed"]
    assert reasons and str(missing) in reasons[0] and "\n" not in reasons[0]


def test_a_node_whose_worker_is_down_fails_its_messages_with_the_socket_named(tmp_path):
    address = str(tmp_path / "absent.sock")
    rows, events, _ = run_with_workers(tmp_path, "down", {2: address}, **{"min-replies": 1, "num-server-rounds": 1})
    reasons = [e["reason"] for e in events if e.get("outcome") == "failed"]
    assert reasons and f"worker={address!r} did not answer" in reasons[0]
    assert rows[0]["replies"] == 1


def test_a_forwarding_client_app_never_imports_torch(tmp_path):
    """The process Flower starts per message loads Flower and this app's light modules only."""
    served = Served(tmp_path / "node1.sock", NodeWorker())
    try:
        result = run_python(f"""
            import sys
            from flwr.app import Context, RecordDict, ConfigRecord, Message
            from tests.fake_grid import set_identity
            set_identity()
            from client.client_app import app
            config = {json.dumps({**FAST, "exchange": "images"})}
            context = Context(run_id=1, node_id=1, node_config={{"worker": {str(served.path)!r}}},
                              state=RecordDict(), run_config=config)
            msg = Message(RecordDict({{"config": ConfigRecord({{"server-round": 1}})}}), dst_node_id=1,
                          message_type="query.images")
            msg.metadata.__dict__["_message_id"] = msg.object_id
            reply = app(msg, context)
            assert not reply.has_error(), reply.error
            print(sorted(m for m in ("torch", "torchvision", "numpy.linalg") if m in sys.modules))
        """)
    finally:
        served.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch" not in result.stdout.strip().splitlines()[-1]


def test_the_worker_command_checks_its_arguments_and_its_socket(tmp_path):
    with pytest.raises(SystemExit):
        main(["--socket", str(tmp_path / "s"), "--defenses", "visualmixer,nonsense"])
    with pytest.raises(SystemExit):
        main(["--socket", str(tmp_path / "s"), "--socket-mode", "rw"])
    live = tmp_path / "live.sock"
    served = Served(live, NodeWorker())
    assert live.stat().st_mode & 0o777 == 0o600  # only the worker's user may connect
    try:
        with pytest.raises(SystemExit, match="served by another worker"):
            listen(live)
    finally:
        served.close()
    # A socket file left by a worker that died is replaced.
    stale = tmp_path / "stale.sock"
    proc = subprocess.Popen([sys.executable, "-m", "client.worker", "--socket", str(stale)],
                            cwd=Path(__file__).resolve().parents[1])
    deadline = time.time() + 120
    while not stale.exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert stale.exists()
    listen(stale).close()


def test_a_worker_refuses_a_run_below_its_operator_s_required_settings(tmp_path):
    """A node's operator can hold any run to a floor on a run-config value, whatever app the
    SuperLink sent: a run at target-vfe 0.3 is refused, with both values named."""
    served = Served(tmp_path / "node2.sock", NodeWorker(requirements=[Requirement.parse("target-vfe>=0.8")]))
    try:
        rows, events, _ = run_with_workers(tmp_path, "weak", {2: str(served.path)}, exchange="images",
                                           **{"target-vfe": 0.3, "min-replies": 1, "num-server-rounds": 1})
    finally:
        served.close()
    reasons = [e["reason"] for e in events if e.get("outcome") == "failed"]
    assert reasons and "target-vfe=0.3 is refused on this node (worker requires target-vfe>=0.8)" in reasons[0]
    assert rows[0]["replies"] == 1


@pytest.mark.parametrize("text, error", [("target-vfe>0.8", "expected KEY>=VALUE"), ("defense>=high", "needs a number")])
def test_a_requirement_that_cannot_be_read_is_an_error_naming_it(text, error):
    with pytest.raises(ValueError, match=error):
        Requirement.parse(text)
    assert Requirement.parse("defense=='visualmixer'").value == "visualmixer"
