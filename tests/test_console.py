"""The operator console's endpoints (FastAPI's TestClient), its path safety, the malformed
lines of a run still being written, the token, and the terminal view."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from server.console.app import create_app
from server.console.auth import load_or_create_token, needs_token, token_path
from server.console.runs import RunFolder
from server.console.text import follow, render
from server.run_store import RunStore

ROUND = {"round": 1, "status": "completed", "exchange": "images", "defense": "visualmixer", "replies": 2,
         "rejected": 1, "train-loss": 2.1, "federated-accuracy": 0.4, "central-accuracy": 0.5,
         "vfe-sent": 0.83, "bytes-up": 1000, "bytes-down": 2000, "seconds": 1.5}
CONFIG = {"exchange": "images", "defense": "visualmixer", "dataset": "shapes", "model": "small-cnn",
          "num-server-rounds": 3, "target-vfe": 0.8}


def make_run(root: Path, name: str, rounds: int = 1, summary: bool = True) -> RunStore:
    store = RunStore(str(root), name)
    store.write_config(CONFIG, flower_run_id=7964759194684252889)
    for k in range(1, rounds + 1):
        store.append_metrics({**ROUND, "round": k})
    store.append_event({"round": 1, "node": "11", "what": "query.images", "outcome": "accepted"})
    store.append_event({"round": 1, "node": "12", "what": "query.images", "outcome": "rejected",
                        "reason": "<b>vfe</b>=0.1 is below the target"})
    (store.path / "samples.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    if summary:
        store.summarise("completed", "all rounds completed")
    return store


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "outputs"
    make_run(root, "alpha", rounds=2)
    make_run(root, "beta", rounds=1, summary=False)
    return root


@pytest.fixture
def client(runs) -> TestClient:
    return TestClient(create_app(runs))


def test_runs_lists_every_run_with_its_status_and_figures(client):
    body = client.get("/api/runs").json()
    rows = {r["name"]: r for r in body["runs"]}
    assert set(rows) == {"alpha", "beta"}
    assert rows["alpha"]["status"] == "finished:completed" and rows["alpha"]["rounds-done"] == 2
    assert rows["alpha"]["rounds-planned"] == 3 and rows["alpha"]["federated-accuracy"] == 0.4
    assert rows["alpha"]["flower-run-id"] == "7964759194684252889"  # a string: 64-bit ids survive JavaScript
    assert rows["beta"]["status"] == "running"  # no summary yet, written just now
    assert body["superlink"] is None and body["comparisons"] == []


def test_run_detail_has_rounds_events_config_and_files(client):
    body = client.get("/api/runs/alpha").json()
    assert [r["round"] for r in body["rounds"]] == [1, 2]
    assert body["run-config"]["target-vfe"] == 0.8
    assert body["nodes"]["12"]["outcome"] == "rejected"
    assert {"config.json", "metrics.jsonl", "events.jsonl", "summary.json", "samples.png"} <= set(body["files"])
    download = client.get("/api/runs/alpha/files/metrics.jsonl")
    assert download.status_code == 200 and len(download.text.splitlines()) == 2
    assert client.get("/runs/alpha").status_code == 200 and "console.js" in client.get("/runs/alpha").text


def test_pages_are_served_and_need_nothing_from_elsewhere(client):
    for path in ("/", "/compare", "/nodes", "/static/console.js", "/static/console.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "http://" not in response.text.replace("http://www.w3.org/2000/svg", "") and "https://" not in response.text


@pytest.mark.parametrize("path", [
    "/api/runs/alpha/files/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/runs/alpha/files/%2Fetc%2Fpasswd",
    "/api/runs/..%2Falpha/files/config.json",
    "/api/runs/alpha%2F..%2Fbeta",
    "/api/runs/alpha/files/checkpoint.pt",  # not a file the console serves
    "/api/runs/..",
    "/api/runs/.hidden",
    "/runs/no-such-run",
    "/api/compare/alpha",
    "/api/compare/..%2F..%2Fetc/files/passwd",
])
def test_nothing_outside_the_runs_dir_is_served(client, path):
    assert client.get(path).status_code == 404


def test_symlinks_pointing_outside_are_not_followed(runs, tmp_path):
    outside = tmp_path / "outside"
    make_run(tmp_path, "outside")
    (runs / "linked").symlink_to(outside, target_is_directory=True)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    (runs / "alpha" / "samples.png").unlink()
    (runs / "alpha" / "samples.png").symlink_to(secret)
    client = TestClient(create_app(runs))
    assert "linked" not in {r["name"] for r in client.get("/api/runs").json()["runs"]}
    assert client.get("/api/runs/linked").status_code == 404
    assert client.get("/api/runs/alpha/files/samples.png").status_code == 404


def test_half_written_and_malformed_lines_are_skipped_with_a_note(runs, client):
    with open(runs / "alpha" / "metrics.jsonl", "a") as f:
        f.write('not json\n[1, 2]\n{"round": 3, "status": "comp')  # a crash mid-line, and a line being written
    body = client.get("/api/runs/alpha").json()
    assert [r["round"] for r in body["rounds"]] == [1, 2]
    notes = " ".join(body["skipped-lines"])
    assert "line 3: not valid JSON" in notes and "line 4: not a JSON object" in notes and "line 5: incomplete" in notes
    assert client.get("/api/runs").status_code == 200


def test_a_comparison_folder_is_shown_as_a_table(runs):
    folder = runs / "compare"
    folder.mkdir()
    (folder / "results.csv").write_text("arm,accuracy\nimages-none,0.5\nimages-vm,0.4\n")
    client = TestClient(create_app(runs))
    assert client.get("/api/runs").json()["comparisons"] == ["compare"]
    body = client.get("/api/compare/compare").json()
    assert body["columns"] == ["arm", "accuracy"] and body["rows"][1]["arm"] == "images-vm"
    assert client.get("/api/compare/compare/files/results.csv").status_code == 200
    assert client.get("/compare/compare").status_code == 200


def test_stop_needs_a_superlink_and_the_console_header(client):
    assert client.post("/api/runs/beta/stop").status_code == 400  # no X-Console header: refused
    response = client.post("/api/runs/beta/stop", headers={"X-Console": "stop"})
    assert response.status_code == 409 and "--superlink" in response.json()["detail"]


def test_nodes_without_a_superlink_come_from_the_run(client):
    body = client.get("/api/nodes?run=alpha").json()
    assert body["run"] == "alpha"
    assert {n["node-id"]: n["last-reply"]["outcome"] for n in body["nodes"]} == {"11": "accepted", "12": "rejected"}


def test_off_loopback_every_request_needs_the_token(runs):
    assert not needs_token("127.0.0.1") and not needs_token("::1") and not needs_token("localhost")
    assert needs_token("127.0.0.2") and needs_token("0.0.0.0")
    token, created = load_or_create_token(runs)
    assert created and stat.S_IMODE(os.stat(token_path(runs)).st_mode) == 0o600
    assert token_path(runs).parent == runs.parent  # beside the runs dir: never served as a run file
    assert load_or_create_token(runs) == (token, False)
    client = TestClient(create_app(runs, token=token))
    for path in ("/", "/api/runs", "/api/runs/alpha", "/static/console.js", "/api/runs/alpha/files/config.json"):
        assert client.get(path).status_code == 401, path
    assert client.post("/api/runs/alpha/stop", headers={"X-Console": "stop"}).status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.get("/login?token=wrong").status_code == 401
    login = client.get(f"/login?token={token}", follow_redirects=False)
    assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
    assert client.get("/api/runs").status_code == 200  # the cookie now


def test_resumed_run_forgets_its_old_summary(runs):
    store = RunStore(str(runs), "alpha")
    assert store.mark_stopped("stopped") is None  # a summary already there is kept
    store.clear_summary()
    summary = store.mark_stopped("stopped from the console")
    assert summary["status"] == "stopped" and summary["rounds_completed"] == 2


def test_text_view_shows_the_rounds_and_returns_when_the_run_ends(runs):
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False)
    console.print(render(RunFolder("beta", runs / "beta")))
    text = out.getvalue()
    assert "beta" in text and "0.4000" in text and "rejected query.images" in text

    def finish_later():
        time.sleep(0.5)
        RunStore(str(runs), "beta").append_metrics({**ROUND, "round": 2})
        RunStore(str(runs), "beta").summarise("completed", "all rounds completed")

    thread = threading.Thread(target=finish_later)
    thread.start()
    started = time.monotonic()
    assert follow(runs / "beta", refresh=0.1, console=Console(file=io.StringIO()), timeout=30) == 0
    thread.join()
    assert time.monotonic() - started < 30
    with pytest.raises(FileNotFoundError, match="no config.json"):
        follow(runs / "missing")


def test_cli_text_mode_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    from server.console.cli import main

    assert main(["--text", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_metrics_written_by_the_store_are_strict_json(runs):
    RunStore(str(runs), "alpha").append_metrics({"round": 9, "train-loss": float("nan")})
    assert json.loads((runs / "alpha" / "metrics.jsonl").read_text().splitlines()[-1])["train-loss"] is None


def test_superlink_status_wins_and_its_empty_details_do_not_hide_the_reason(runs):
    run = RunFolder("alpha", runs / "alpha")
    run.path.joinpath("summary.json").unlink()
    RunStore(str(runs), "alpha").mark_stopped("stopped from the console")
    flower = {"7964759194684252889": {"status": "finished:stopped", "status-details": "N/A"}}
    row = run.overview(flower)
    assert row["status"] == "finished:stopped" and row["reason"] == "stopped from the console"
    flower["7964759194684252889"] = {"status": "running", "status-details": ""}
    assert run.overview(flower)["status"] == "running"  # resumed: Flower knows better than an old file


def test_a_local_superlink_that_is_not_running_is_not_started(tmp_path, monkeypatch):
    from server.console.flower import FlowerLink, SuperLinkError

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[superlink.local]\naddress = ":local:"\n'
                                          '[superlink.prod]\naddress = "10.0.0.5:8000"\n')
    local = FlowerLink("local")
    assert local.is_local() and not FlowerLink("prod").is_local()
    ok, why = local.available()
    assert not ok and "not running" in why
    with pytest.raises(SuperLinkError, match="not running"):
        local.runs()


def test_text_view_returns_when_the_superlink_says_the_run_ended(runs):
    class StoppedElsewhere:  # a SuperLink that saw `flwr stop`: the run wrote no summary
        def runs(self):
            return {"7964759194684252889": {"status": "finished:stopped", "status-details": ""}}

    started = time.monotonic()
    assert follow(runs / "beta", refresh=0.1, console=Console(file=io.StringIO()), timeout=30, link=StoppedElsewhere()) == 1
    assert time.monotonic() - started < 5
