"""A run's log as an operator reads it: one line per event, no DEBUG unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The real ServerApp and ClientApp in a fresh process (logging set up as a Flower process
# has it), over the in-process grid; DP-SGD so that Opacus is imported mid-run.
SCRIPT = """
import sys
from flwr.app import Context, RecordDict
from server.server_app import main
from tests.fake_grid import FakeGrid
config = {"num-server-rounds": 3, "local-steps": 2, "batch-size": 16, "eval-samples": 20,
          "defense": "visualmixer+dp-sgd", "output-dir": sys.argv[1]}
main(FakeGrid(config), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
"""


def run_log(tmp_path, level: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FLWR_LOG_LEVEL"}
    if level:
        env["FLWR_LOG_LEVEL"] = level
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_each_round_is_logged_once_and_no_debug_line_leaks(tmp_path):
    log = run_log(tmp_path, None)
    for k in (1, 2, 3):
        assert sum(f"[round {k}/3]" in line for line in log.splitlines()) == 1, log
    assert "DEBUG" not in log
    # Federated evaluation runs (the exchanges drive it), so Flower must not say it is skipped.
    assert "Federated evaluation will be skipped" not in log


@pytest.mark.parametrize("level, shown", [("WARNING", False), ("INFO", True)])
def test_flwr_log_level_is_honoured(tmp_path, level, shown):
    assert ("[round 1/3]" in run_log(tmp_path, level)) == shown
