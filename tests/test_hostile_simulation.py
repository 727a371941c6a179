"""Hostile nodes through Flower's Simulation runtime: the app as shipped on the server, one
node of three running ``tests/hostile_client.py`` (run-config ``hostile`` picks the payloads),
against an honest run at the same seed. Each run completes, the hostile replies are
rejected or counted fairly with a reason, and the model ends where the honest one does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_deployment import ROOT

pytestmark = pytest.mark.deployment
SETTINGS = {"num-server-rounds": "5", "eval-samples": "200", "defense": "'none'", "model": "'small-cnn'", "seed": "3"}


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory) -> Path:
    """A copy of the app whose ClientApp is the hostile one."""
    app = tmp_path_factory.mktemp("hostile-app") / "app"
    shutil.copytree(ROOT, app, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".flwr", "outputs", "docs", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info"))
    pyproject = app / "pyproject.toml"
    text = pyproject.read_text().replace('clientapp = "client.client_app:app"', 'clientapp = "tests.hostile_client:app"')
    # Flower accepts only run-config keys the app declares; the shipped app has no `hostile`.
    text = text.replace("[tool.flwr.app.config]\n", '[tool.flwr.app.config]\nhostile = ""\n')
    assert "tests.hostile_client:app" in text and 'hostile = ""' in text
    pyproject.write_text(text)
    return app


def simulate(env, app: Path, out: Path, name: str, **overrides: str) -> list[dict]:
    # Flower refuses a run config that sets one key twice: overrides replace SETTINGS' values.
    values = {**SETTINGS, "output-dir": f"'{out}'", "run-name": f"'{name}'", **overrides}
    config = " ".join(f"{key}={value}" for key, value in values.items())
    result = subprocess.run(
        [sys.executable, "-m", "simulations.flwr_run", "--num-supernodes", "3", "--run-config", config],
        cwd=app, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]


def events(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / name / "events.jsonl").read_text().splitlines()]


def test_one_hostile_node_of_three_does_not_ruin_weights(simulation_env, hostile_app, tmp_path):  # noqa: F811
    honest = simulate(simulation_env, hostile_app, tmp_path, "honest")
    hostile = simulate(simulation_env, hostile_app, tmp_path, "hostile",
                       hostile="'scale-weights,claim-examples,lie-evaluation'")
    outcomes = events(tmp_path, "hostile")
    updates = [e for e in outcomes if e["outcome"] == "rejected" and e["what"] == "train"]
    lies = [e for e in outcomes if e["outcome"] == "rejected" and e["what"] == "evaluate"]
    assert len(updates) == len(lies) == 5, outcomes
    assert all("update-bound" in e["reason"] for e in updates)
    assert len({e["node"] for e in updates + lies}) == 1  # one node, named each time
    assert all(r["federated-accuracy"] < 0.99 and r["federated-nodes"] == 2 for r in hostile)
    # Not ruined: the attack unopposed leaves the model at chance (0.1). Runs at one seed are
    # not reproducible through Ray (honest ones measured 0.58-0.71, docs/deploy.md), so the
    # bound allows that spread: within 15 points of the honest run, and well above chance.
    floor = max(0.3, honest[-1]["central-accuracy"] - 0.15)
    assert hostile[-1]["central-accuracy"] >= floor, (honest[-1], hostile[-1])


@pytest.mark.slow
@pytest.mark.parametrize("exchange, mode", [("activations", "scale-activations"), ("images", "blue-checkerboard"),
                                            ("images", "checker-noise")])
def test_one_hostile_node_of_three_in_split_learning_and_images(simulation_env, hostile_app, tmp_path, exchange, mode):  # noqa: F811
    rows = simulate(simulation_env, hostile_app, tmp_path, mode, exchange=f"'{exchange}'", defense="'visualmixer'",
                    hostile=f"'{mode}'")
    assert len(rows) == 5 and all(r["status"] == "completed" for r in rows)
    if exchange == "activations":
        assert all(r["rejected"] == 1 for r in rows) and all(r["train-loss"] < 5 for r in rows)
    else:
        assert all(r["rejected"] == 1 or r["vfe-guard-dropped"] >= 0.85 * 256 for r in rows), rows
