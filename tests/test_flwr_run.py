"""simulations.flwr_run's refusals, without starting Flower."""

from __future__ import annotations

import socket
import subprocess
import sys

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
