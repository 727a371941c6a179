"""Deployment integration: a real flower-superlink and two real flower-supernode processes on
127.0.0.1 run the app in each exchange mode for two rounds (marked `deployment`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.deployment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flwr_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_TELEMETRY_ENABLED="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """SuperLink + 2 SuperNodes; every process is stopped by pid at the end."""
    if shutil.which("flower-superlink", path=str(BIN)) is None:
        pytest.skip("flower-superlink is not installed in this environment")
    home = tmp_path_factory.mktemp("flwr-home")
    env = flwr_env(home)
    link_port = free_port()
    logs = home / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        out = open(logs / f"{name}.log", "w")
        procs.append(subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=home))

    start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link_port),
          "--database", str(home / "state.db"))
    for i in range(2):
        start(f"supernode{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
              "--port", str(free_port()), "--node-config", f"partition-id={i} num-partitions=2")
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "e2e"\n\n[superlink.e2e]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    try:
        wait_for_superlink(env, "e2e", logs / "superlink.log")
        yield env, logs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def flwr(env, *args: str, timeout: float = 120) -> str:
    result = subprocess.run([str(BIN / "flwr"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def flwr_json(env, *args: str, timeout: float = 120) -> dict:
    """``flwr ARGS --format json``, parsed. That format exits 0 on failure too (an
    unreachable SuperLink included), so the ``success`` field is what is checked."""
    data = json.loads(flwr(env, *args, "--format", "json", timeout=timeout))
    assert data.get("success") is not False, f"flwr {' '.join(args)}: {data.get('error-message')}"
    return data


def wait_for_superlink(env, connection: str, log: Path, timeout: float = 90) -> None:
    """Until the SuperLink answers `flwr list` (it takes seconds to start on two cores)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = subprocess.run([str(BIN / "flwr"), "list", connection, "--format", "json"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        try:
            if json.loads(result.stdout).get("success"):
                return
        except ValueError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the SuperLink did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.mark.parametrize("exchange", ["weights", "images", "activations"])
def test_real_superlink_and_supernodes(federation, tmp_path, exchange):
    env, logs = federation
    overrides = (
        f"exchange='{exchange}' num-server-rounds=2 local-steps=3 upload-samples=32 server-steps=3 "
        f"eval-samples=40 min-replies=2 round-timeout=120 output-dir='{tmp_path}' run-name='{exchange}'"
    )
    started = flwr_json(env, "run", ".", "e2e", "--run-config", overrides)
    run_id = started["run-id"]
    status, deadline = "", time.time() + 400
    while time.time() < deadline:
        runs = flwr_json(env, "list", "e2e", "--run-id", str(run_id))["runs"]
        status = runs[0]["status"]
        if status.startswith("finished"):
            break
        time.sleep(2)
    log_text = flwr(env, "log", str(run_id), "e2e", "--show")
    assert status == "finished:completed", f"{status}\n{log_text}"
    rows = [json.loads(l) for l in (tmp_path / exchange / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["status"] == "completed" and r["replies"] == 2 and r["vfe-sent"] >= 0.8 for r in rows)
    assert "[round 2/2]" in log_text


def test_console_shows_the_runs_and_supernodes_of_a_real_superlink(federation, tmp_path, monkeypatch):
    """The console's view of a deployment: a run joined with `flwr list` by its Flower run
    id, and both SuperNodes online with their last reply in that run."""
    from fastapi.testclient import TestClient

    from server.console.app import create_app

    env, _ = federation
    overrides = (f"exchange='weights' num-server-rounds=1 local-steps=2 eval-samples=20 min-replies=2 "
                 f"round-timeout=120 output-dir='{tmp_path}' run-name='watched'")
    run_id = flwr_json(env, "run", ".", "e2e", "--run-config", overrides)["run-id"]
    deadline = time.time() + 300
    while not flwr_json(env, "list", "e2e", "--run-id", str(run_id))["runs"][0]["status"].startswith("finished"):
        assert time.time() < deadline
        time.sleep(2)
    for key in ("FLWR_HOME", "PATH"):
        monkeypatch.setenv(key, env[key])
    client = TestClient(create_app(tmp_path, superlink="e2e"))
    runs = client.get("/api/runs").json()
    assert runs["superlink-error"] == ""
    watched = next(r for r in runs["runs"] if r["name"] == "watched")
    assert watched["flower-run-id"] == str(run_id) and watched["status"] == "finished:completed"
    nodes = client.get("/api/nodes?run=watched").json()
    assert nodes["superlink-error"] == ""
    online = [n for n in nodes["nodes"] if n["status"] == "online"]
    assert len(online) == 2, nodes
    assert all(n["last-reply"] and n["last-reply"]["outcome"] == "accepted" for n in online), nodes
