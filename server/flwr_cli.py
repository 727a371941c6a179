"""The `flwr` CLI and the local SuperLink's processes, as the wrapper scripts and the
operator console use them (the CLI is the supported way to talk to a SuperLink's Control
API: its routes take protobuf bodies)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def flwr_env() -> dict[str, str]:
    """The environment for a `flwr` command: it starts `flower-superlink` by name when no
    local SuperLink answers, so the one installed beside this Python comes first in PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_flwr(*args: str, timeout: float | None = 300) -> subprocess.CompletedProcess[str]:
    """``flwr ARGS`` run from the app's folder; the caller reads the return code."""
    return subprocess.run(
        [str(BIN / "flwr"), *args], cwd=ROOT, text=True, timeout=timeout, capture_output=True, env=flwr_env(),
    )


class FlwrError(RuntimeError):
    """A `flwr` command that failed; the message is Flower's own error text."""


def flwr_json(*args: str, timeout: float | None = 300) -> dict:
    """``flwr ARGS --format json``, parsed. With ``--format json`` the CLI exits 0 even when
    the command failed (an unreachable SuperLink, an unknown run), so success is read from
    the ``success`` field, never from the return code alone."""
    result = run_flwr(*args, "--format", "json", timeout=timeout)
    try:
        data = json.loads(result.stdout or "")
    except ValueError:
        data = None
    if not isinstance(data, dict) or result.returncode != 0 or data.get("success") is False:
        message = data.get("error-message", "") if isinstance(data, dict) else ""
        message = message or (result.stderr or result.stdout or "").strip()[-500:]
        raise FlwrError(f"`flwr {' '.join(args)}` failed: {message.strip()}")
    return data


def _processes() -> dict[int, list[bytes]]:
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                found[int(proc.name)] = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
    return found


def flwr_home(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("FLWR_HOME", Path.home() / ".flwr")).resolve()


def local_superlinks(
    processes: dict[int, list[bytes]] | None = None, home: Path | None = None
) -> dict[int, list[bytes]]:
    """The managed local SuperLink(s) of FLWR_HOME (or ``home``), by pid (found by cmdline)."""
    marker = str((home or flwr_home()) / "local-superlink").encode()
    processes = _processes() if processes is None else processes
    return {
        pid: cmdline for pid, cmdline in processes.items()
        if any(b"flower-superlink" in part for part in cmdline) and any(marker in p for p in cmdline)
    }


def local_superlink_port() -> int:
    """The HTTP port `flwr` gives a managed local SuperLink (Flower's default, or
    ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``)."""
    return int(os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091"))


def foreign_superlink() -> str | None:
    """Why a `flwr run` on the managed local SuperLink would reach another checkout's: a
    process answers on the local port, and it is not this FLWR_HOME's SuperLink. None when
    the port is free or ours."""
    port = local_superlink_port()
    with socket.socket() as probe:
        probe.settimeout(1.0)
        if probe.connect_ex(("127.0.0.1", port)) != 0:
            return None
    if local_superlinks():
        return None
    others = [
        pid for pid, cmdline in _processes().items()
        if any(b"flower-superlink" in part for part in cmdline)
    ]
    who = f"flower-superlink pid {', '.join(map(str, others))}" if others else "another process"
    return (
        f"127.0.0.1:{port} is taken by {who}, which is not the local SuperLink of FLWR_HOME={flwr_home()}: "
        "a run would execute that SuperLink's code and state. Stop it (e.g. pkill -f local-superlink), "
        "or give this checkout its own ports: FLWR_LOCAL_SUPERLINK_HTTP_API_PORT and FLWR_LOCAL_CONTROL_API_PORT"
    )


def session_id(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # fields after "(comm)": state ppid pgrp session


def stop_local_superlink(home: Path | None = None, grace: float = 15.0) -> None:
    """Stop the managed local SuperLink of FLWR_HOME (or ``home``) and everything it
    launched: its SuperExec, the ``flwr-simulation`` process and Ray's processes. A stopped
    run's processes can otherwise linger, stuck, and slow every run after it.

    The SuperLink and its SuperExec each lead a session of their own (the SuperExec's holds
    ``flwr-simulation`` and Ray), so both sessions are ended: SIGTERM to the SuperLink and
    SIGKILL to the simulation, then, after ``grace`` seconds, SIGKILL to whatever of either
    session is left (Ray's agents outlive their raylet otherwise)."""
    processes = _processes()
    sessions: set[int] = set()
    for pid, cmdline in local_superlinks(processes, home).items():
        print(f"stopping the local SuperLink (pid {pid})", file=sys.stderr)
        sessions.add(pid)
        sessions.update(
            sid for child, args in processes.items()
            if b"--parent-pid" in args and args[args.index(b"--parent-pid") + 1:][:1] == [str(pid).encode()]
            and (sid := session_id(child)) is not None
        )
        _kill(pid, signal.SIGTERM)
    if not sessions:
        return
    for pid, args in processes.items():
        if any(b"flwr-simulation" in a for a in args) and session_id(pid) in sessions:
            _kill(pid, signal.SIGKILL)
    # Wait for the SuperLink to go: a command run right after (the next flwr_run) must not
    # find it still answering and take it for a running SuperLink to keep.
    deadline = time.monotonic() + grace
    while any(Path(f"/proc/{pid}").exists() for pid in sessions) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _processes():
        if session_id(pid) in sessions:
            _kill(pid, signal.SIGKILL)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
