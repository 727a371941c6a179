"""simulations.flwr_run's refusals, without starting Flower."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.test_deployment import ROOT, flwr_env


def test_a_local_superlink_of_another_checkout_is_not_used(tmp_path):
    """Something else answers on the local SuperLink's port: the run is refused, naming the
    port and how to get ports of one's own, instead of running another checkout's code."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = flwr_env(tmp_path / "home")
        env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(port)
        result = subprocess.run([sys.executable, "-m", "simulations.flwr_run"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"127.0.0.1:{port} is taken" in result.stderr
    assert "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT" in result.stderr


def test_a_failed_json_command_raises_with_flowers_message(tmp_path, monkeypatch):
    """`flwr ... --format json` exits 0 when it fails; flwr_json reads `success` instead, so
    an unreachable SuperLink is an error naming the command, not a dict without runs."""
    from server.flwr_cli import FlwrError, flwr_json
    from tests.test_deployment import free_port

    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "gone"\n\n[superlink.gone]\naddress = "127.0.0.1:{free_port()}"\ninsecure = true\n'
    )
    monkeypatch.setenv("FLWR_HOME", str(home))
    with pytest.raises(FlwrError, match="`flwr list gone` failed") as failure:
        flwr_json("list", "gone", timeout=120)
    assert "unavailable" in str(failure.value)
