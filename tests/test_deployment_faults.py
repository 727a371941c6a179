"""Faults an operator meets, on real flower-superlink and flower-supernode processes on
127.0.0.1 (marked `deployment`): a SuperNode killed mid-run and started again, a SuperNode
stalled past the round timeout and then resumed, the SuperLink killed and restarted with
its database, and TLS with SuperNode authentication
(a registered node takes part; an unregistered one, one without a key and one without the
CA do not)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_deployment import BIN, ROOT, flwr, flwr_env, flwr_json, free_port, wait_for_superlink

pytestmark = pytest.mark.deployment
SMALL = "exchange='weights' local-steps=2 eval-samples=20 batch-size=16"


class Federation:
    """A SuperLink (with ``--database``) and SuperNodes by name, each stoppable on its own."""

    def __init__(self, home: Path, certs: Path | None = None) -> None:
        self.home, self.certs = home, certs
        self.env = flwr_env(home)
        self.port = free_port()
        self.logs = home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        security = f'root-certificates = "{certs / "ca.crt"}"' if certs else "insecure = true"
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "fed"\n\n[superlink.fed]\naddress = "127.0.0.1:{self.port}"\n{security}\n'
        )

    def _start(self, name: str, *args: str) -> None:
        log = open(self.logs / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen([str(BIN / args[0]), *args[1:]], env=self.env, cwd=self.home,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_superlink(self, *extra: str) -> None:
        tls = (["--ssl-ca-certfile", str(self.certs / "ca.crt"), "--ssl-certfile", str(self.certs / "server.pem"),
                "--ssl-keyfile", str(self.certs / "server.key")] if self.certs else ["--insecure"])
        self._start("superlink", "flower-superlink", *tls, "--host", "127.0.0.1", "--port", str(self.port),
                    "--database", str(self.home / "state.db"), *extra)
        wait_for_superlink(self.env, "fed", self.logs / "superlink.log")

    def start_supernode(self, name: str, partition: int, partitions: int, *extra: str) -> None:
        security = ["--root-certificates", str(self.certs / "ca.crt")] if self.certs else ["--insecure"]
        if "--no-ca" in extra:
            security, extra = [], tuple(e for e in extra if e != "--no-ca")
        self._start(name, "flower-supernode", *security, "--superlink", f"127.0.0.1:{self.port}",
                    "--port", str(free_port()), *extra,
                    "--node-config", f"partition-id={partition} num-partitions={partitions}")

    def kill(self, name: str) -> None:
        """SIGKILL the process and everything it started (its session), as a crash would."""
        process = self.procs.pop(name)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)

    def pause(self, name: str) -> None:
        """SIGSTOP the process and its children: a device that has stalled (swapping, a
        saturated link) and answers nothing until :meth:`resume`."""
        os.killpg(self.procs[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGCONT)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def run(self, output: Path, name: str, overrides: str) -> str:
        config = f"{SMALL} output-dir='{output}' run-name='{name}' {overrides}"
        return flwr_json(self.env, "run", ".", "fed", "--run-config", config)["run-id"]

    def status(self, run_id: str) -> str:
        return flwr_json(self.env, "list", "fed", "--run-id", str(run_id))["runs"][0]["status"]

    def wait_finished(self, run_id: str, timeout: float = 600) -> str:
        deadline = time.time() + timeout
        while not (status := self.status(run_id)).startswith("finished"):
            assert time.time() < deadline, f"run {run_id} still {status}"
            time.sleep(2)
        return status


def completed_rounds(folder: Path) -> list[int]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["round"] for line in path.read_text().splitlines()
            if json.loads(line).get("status") == "completed"]


def wait_for_round(folder: Path, k: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while len(completed_rounds(folder)) < k:
        assert time.time() < deadline, f"round {k} did not complete"
        time.sleep(1)


@pytest.fixture
def federation(tmp_path):
    fed = Federation(tmp_path / "home")
    yield fed
    fed.stop_all()


def test_a_supernode_killed_mid_run_is_logged_and_one_that_comes_back_takes_part(federation, tmp_path):
    fed = federation
    fed.start_superlink()
    for i in range(3):
        fed.start_supernode(f"node{i}", i, 3)
    output = tmp_path / "runs"
    # round-timeout bounds each round's wait for the dead node, which the SuperLink lists as
    # online until its heartbeat expires; the restarted node's first reply (a fresh ClientApp
    # process loading its data) must fit in it too.
    run_id = fed.run(output, "killed", "num-server-rounds=5 min-replies=1 round-timeout=45")
    folder = output / "killed"
    wait_for_round(folder, 1)
    fed.kill("node2")
    wait_for_round(folder, 2)
    fed.start_supernode("node2", 2, 3)  # the device comes back (a new node id)
    assert fed.wait_finished(run_id, timeout=900) == "finished:completed", flwr(fed.env, "log", run_id, "fed", "--show")[-3000:]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5] and all(r["status"] == "completed" for r in rows)
    assert rows[0]["replies"] == 3 and rows[1]["replies"] == 2  # round 2 went on without it
    assert rows[-1]["replies"] == 3  # it takes part again
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    lost = [e for e in events if e["outcome"] in ("failed", "silent")]
    assert lost and all(e["node"] != "0" and e["node"] != "1" for e in lost)  # named by its own id


def test_a_node_slower_than_the_round_timeout_is_left_out_and_takes_part_when_it_catches_up(federation, tmp_path):
    fed = federation
    fed.start_superlink()
    for i in range(3):
        fed.start_supernode(f"node{i}", i, 3)
    output = tmp_path / "runs"
    # Rounds to spare after the resume: the node first works through what it was sent while
    # stalled (each a fresh ClientApp process on a busy machine) before a reply is on time.
    run_id = fed.run(output, "slow", "num-server-rounds=8 min-replies=1 round-timeout=45")
    folder = output / "slow"
    wait_for_round(folder, 1)
    fed.pause("node2")
    wait_for_round(folder, 3)  # two rounds end at the timeout without it
    fed.resume("node2")
    assert fed.wait_finished(run_id, timeout=900) == "finished:completed", flwr(fed.env, "log", run_id, "fed", "--show")[-3000:]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, 9)) and all(r["status"] == "completed" for r in rows)
    assert rows[0]["replies"] == 3 and rows[1]["replies"] == 2  # round 2 went on without it
    assert any(r["replies"] == 3 for r in rows[3:]), rows  # it caught up and takes part again
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    # Left out with a reason: "silent" when round-timeout ends first, "failed" when the
    # SuperLink has already marked the node offline (missed heartbeats) and answers for it.
    assert any(e["round"] == 2 and e["outcome"] in ("silent", "failed") for e in events), events


def test_a_restarted_superlink_with_its_database_resumes_the_run_with_no_round_lost(federation, tmp_path):
    fed = federation
    fed.start_superlink()
    for i in range(2):
        fed.start_supernode(f"node{i}", i, 2)
    output = tmp_path / "runs"
    # A node reconnecting after the restart may take more than a minute on a busy 2-core machine.
    config = "num-server-rounds=5 min-replies=2 round-timeout=180"
    fed.run(output, "restarted", config)
    folder = output / "restarted"
    wait_for_round(folder, 2)
    fed.kill("superlink")
    before = completed_rounds(folder)
    fed.start_superlink()  # same --database and port; the SuperNodes reconnect by themselves
    run_id = fed.run(output, "restarted", config)
    assert fed.wait_finished(run_id) == "finished:completed", flwr(fed.env, "log", run_id, "fed", "--show")[-3000:]
    after = completed_rounds(folder)
    assert after[: len(before)] == before  # nothing completed before the crash is lost
    assert sorted(after) == [1, 2, 3, 4, 5] and len(after) == len(set(after))


def test_tls_and_supernode_auth_admit_only_registered_nodes_with_the_ca(tmp_path):
    certs = tmp_path / "certs"
    subprocess.run(["bash", str(ROOT / "docs/deploy/generate-certs.sh"), str(certs), "127.0.0.1", "2"],
                   check=True, capture_output=True, timeout=120)
    fed = Federation(tmp_path / "home", certs)
    try:
        fed.start_superlink("--enable-supernode-auth")
        flwr(fed.env, "supernode", "register", str(certs / "node1.pub"), "fed")
        fed.start_supernode("registered", 0, 2, "--auth-supernode-private-key", str(certs / "node1"))
        fed.start_supernode("unregistered", 1, 2, "--auth-supernode-private-key", str(certs / "node2"))
        fed.start_supernode("no-key", 1, 2)
        fed.start_supernode("no-ca", 1, 2, "--no-ca", "--auth-supernode-private-key", str(certs / "node1"))
        output = tmp_path / "runs"
        run_id = fed.run(output, "tls", "num-server-rounds=1 min-replies=1 round-timeout=60")
        assert fed.wait_finished(run_id) == "finished:completed", flwr(fed.env, "log", run_id, "fed", "--show")[-3000:]
        rows = [json.loads(line) for line in (output / "tls" / "metrics.jsonl").read_text().splitlines()]
        assert rows[0]["replies"] == 1
        nodes = flwr_json(fed.env, "supernode", "list", "fed")["nodes"]
        assert [n["status"] for n in nodes] == ["online"], nodes
        assert "2004" in (fed.logs / "unregistered.log").read_text()  # refused: not registered
        assert "2001" in (fed.logs / "no-key.log").read_text()  # refused: no key at all
        deadline = time.time() + 60  # a SuperNode without the CA fails the handshake and exits (305)
        while fed.procs["no-ca"].poll() is None and time.time() < deadline:
            time.sleep(1)
        assert "SSL/TLS handshake error" in (fed.logs / "no-ca.log").read_text()
    finally:
        fed.stop_all()
