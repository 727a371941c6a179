"""End to end through Flower's Simulation runtime: `flwr run .` (Ray) on `shapes`, each
exchange mode for two small rounds, status checked with `flwr list` (marked `deployment`,
like the other tests that start Flower processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.flwr_cli import local_superlinks, session_id
from tests.test_deployment import ROOT

pytestmark = pytest.mark.deployment


def run_sessions(home: Path) -> set[int]:
    """Session ids of the local SuperLink of ``home`` and of its SuperExec (which holds
    ``flwr-simulation`` and Ray's processes)."""
    links = local_superlinks(home=home)
    children = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                if session_id(pid) is not None and any(str(link) == _parent(pid) for link in links)]
    return {s for s in (*map(session_id, links), *map(session_id, children)) if s is not None}


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after "(comm)": state, ppid, pgrp, session, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return ["", ""]


def _parent(pid: int) -> str:
    return _stat(pid)[1]


def superlink_pids(port: int) -> list[int]:
    """The background flower-superlink that `flwr run` started on ``port``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"flower-superlink" in part for part in cmdline) and str(port).encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def flwr_run(env: dict[str, str], tmp_path: Path, overrides: str) -> subprocess.CompletedProcess:
    """``simulations.flwr_run`` with 2 simulated clients, small settings and ``overrides``."""
    config = f"num-server-rounds=2 local-steps=3 eval-samples=40 output-dir='{tmp_path}' {overrides}"
    return subprocess.run(
        [sys.executable, "-m", "simulations.flwr_run", "--num-supernodes", "2", "--run-config", config],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.parametrize("exchange", ["weights", "images", "activations"])
def test_flwr_run_simulation(simulation_env, tmp_path, exchange):
    overrides = f"exchange='{exchange}' upload-samples=32 server-steps=3 run-name='{exchange}'"
    result = flwr_run(simulation_env, tmp_path, overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "finished:completed" in result.stdout
    # The wrapper stops the local SuperLink it started (none was running before it).
    port = int(simulation_env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"])
    deadline = time.time() + 20
    while superlink_pids(port) and time.time() < deadline:
        time.sleep(0.5)
    assert not superlink_pids(port)
    rows = [json.loads(l) for l in (tmp_path / exchange / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["replies"] == 2 and r["vfe-sent"] >= 0.8 for r in rows)
    assert json.loads((tmp_path / exchange / "summary.json").read_text())["status"] == "completed"


def test_a_failed_round_makes_a_failed_run(simulation_env, tmp_path):
    """Three valid replies asked of two clients: the round fails, summary.json says why,
    Flower records the run finished:failed with that reason, and the wrapper exits 1."""
    result = flwr_run(simulation_env, tmp_path, "min-replies=3 round-timeout=3 run-name='failing'")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "finished:failed" in result.stdout
    assert "round 1 failed: 2 nodes connected, fewer than min-replies=3" in result.stderr
    summary = json.loads((tmp_path / "failing" / "summary.json").read_text())
    assert summary["status"] == "failed" and "fewer than min-replies=3" in summary["message"]


def test_a_run_stopped_by_timeout_or_ctrl_c_says_so(simulation_env, tmp_path):
    """--timeout stops the run and writes summary.json (status stopped); so does Ctrl-C,
    which also stops the run instead of leaving it going unfollowed."""
    config = (f"num-server-rounds=500 exchange='images' upload-samples=16 server-steps=2 eval-samples=20 "
              f"output-dir='{tmp_path}' run-name='timed'")
    result = subprocess.run(
        [sys.executable, "-m", "simulations.flwr_run", "--num-supernodes", "2", "--timeout", "30", "--run-config", config],
        cwd=ROOT, env=simulation_env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((tmp_path / "timed" / "summary.json").read_text())
    assert summary["status"] == "stopped" and "--timeout 30" in summary["message"]
    rows = (tmp_path / "timed" / "metrics.jsonl").read_text().splitlines()
    assert summary["rounds_completed"] <= len(rows)

    # Output to a file, not a pipe: a process the run starts (the SuperLink) may inherit a
    # pipe and keep it open after flwr_run has exited. SIGINT's default action is restored
    # in the child, as a terminal has it: a suite started in the background of a
    # non-interactive shell (CI's `cmd &`) passes SIGINT down ignored.
    log = (tmp_path / "interrupted.log").open("w")
    interrupted = subprocess.Popen(
        [sys.executable, "-m", "simulations.flwr_run", "--num-supernodes", "2",
         "--run-config", config.replace("'timed'", "'interrupted'")],
        cwd=ROOT, env=simulation_env, stdout=log, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while not (tmp_path / "interrupted" / "metrics.jsonl").exists():
        assert time.time() < deadline and interrupted.poll() is None
        time.sleep(1)
    sessions = run_sessions(Path(simulation_env["FLWR_HOME"]))
    assert len(sessions) == 2, sessions  # the SuperLink's, and its SuperExec's (simulation, Ray)
    interrupted.send_signal(signal.SIGINT)
    interrupted.wait(timeout=300)
    log.close()
    out = (tmp_path / "interrupted.log").read_text()
    assert interrupted.returncode == 130, out[-3000:]
    summary = json.loads((tmp_path / "interrupted" / "summary.json").read_text())
    assert summary["status"] == "stopped" and "interrupt" in summary["message"]
    left = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if session_id(pid) in sessions and _stat(pid)[0] != "Z"]  # zombies are dead, awaiting init
    assert not left, f"processes of the stopped run still alive: {left}"  # Ray's agents, before
