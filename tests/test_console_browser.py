"""The console in a real browser (Debian's chromium, driven by Playwright) against real
Flower runs: a run listed as running, a round appearing without a reload, the gallery, a
stop from the page that `flwr list` confirms, two runs compared, and the token demanded
off loopback. Screenshots of each page land in the test's tmp dir (and in
``$CONSOLE_SCREENSHOTS`` when set, which is how docs/console/ is made)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.test_deployment import ROOT, flwr_json, free_port

pytestmark = pytest.mark.console

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

SMALL = "exchange='images' upload-samples=32 server-steps=8 eval-samples=40 local-steps=2"


def start_run(env, runs: Path, name: str, rounds: int, timeout: int = 600) -> subprocess.Popen:
    config = f"num-server-rounds={rounds} output-dir='{runs}' run-name='{name}' {SMALL}"
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.flwr_run", "--num-supernodes", "2", "--timeout", str(timeout),
         "--run-config", config],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def start_console(env, runs: Path, host: str, port: int, superlink: str | None = "local") -> subprocess.Popen:
    link = ["--superlink", superlink] if superlink else []
    process = subprocess.Popen(
        [sys.executable, "-m", "server.console.cli", "--runs-dir", str(runs), *link,
         "--host", host, "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://{host}:{port}/static/console.css", timeout=2)
            return process
        except urllib.error.HTTPError:
            return process  # it answers (401 off loopback)
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"the console exited: {process.stdout.read()}")
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("the console did not answer within 60 s")


def flwr_status(env, run_id: str) -> str:
    return flwr_json(env, "list", "--run-id", run_id)["runs"][0]["status"]


def shoot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    if os.environ.get("CONSOLE_SCREENSHOTS"):
        target = Path(os.environ["CONSOLE_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"{name}.png", target / f"{name}.png")


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_every_page_draws_without_a_script_error(simulation_env, tmp_path, browser):
    """Each page over a written run folder, with no Flower process: the quick check that
    the front end loads and draws (a script error would leave every page blank)."""
    from server.run_store import RunStore
    from tests.test_console import CONFIG, ROUND, make_run

    runs = tmp_path / "outputs"
    make_run(runs, "alpha", rounds=3)
    with (runs / "alpha" / "events.jsonl").open("a") as events:  # what a node said of its cost
        events.write(json.dumps({"round": 3, "node": "13", "what": "train", "outcome": "accepted", "stage-startup": 4.2,
                                 "stage-setup": 0.31, "stage-handler": 1.5, "cpu-seconds": 5.0, "peak-rss-mb": 912.4}) + "\n")
        events.write(json.dumps({"round": 3, "node": "14", "what": "train", "outcome": "accepted", "stage-startup": 2.5,
                                 "stage-setup": 0.0, "stage-handler": 1.2, "stage-forward": 1.25, "cpu-seconds": 1.1,
                                 "peak-rss-mb": 860.0, "forwarder-peak-rss-mb": 145.6}) + "\n")
    make_run(runs, "beta", rounds=2, summary=False)
    dp = RunStore(str(runs), "gamma")  # a DP-SGD run: epsilon per node against the budget
    dp.write_config({**CONFIG, "defense": "dp-sgd", "exchange": "weights", "target-epsilon": 8.0})
    for k in (1, 2):
        warning = {"warning": "not learning: train-loss stayed near ln(10)"} if k == 2 else {}
        dp.append_metrics({**ROUND, "round": k, "epsilon-max": 2.0 * k, "epsilon-per-node": {"5": 2.0 * k, "6": 1.5 * k},
                           **warning})
    (runs / "study").mkdir()
    (runs / "study" / "results.csv").write_text("arm,test-accuracy\nimages-none,0.5\n")
    port = free_port()
    console = start_console({**simulation_env, "FLWR_HOME": str(tmp_path / "no-flower")}, runs, "127.0.0.1", port,
                            superlink=None)
    try:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        base = f"http://127.0.0.1:{port}"
        for path, ready in [("/", "#runs"), ("/runs/alpha", "#chart-accuracy svg"), ("/compare?runs=alpha,beta", "#chart-compare svg"),
                            ("/nodes?run=alpha", "#nodes"), ("/runs/gamma", "#chart-epsilon svg"), ("/compare/study", "#results")]:
            page.goto(base + path)
            page.wait_for_selector(ready, timeout=20_000)
        page.goto(base + "/nodes?run=alpha")
        page.wait_for_selector("#nodes")
        assert "start 4.20 s, setup 0.31 s, work 1.50 s; CPU 5.00 s, 912 MB" in page.inner_text("#nodes")
        assert ("start 2.50 s, setup 0.00 s, work 1.20 s; CPU 1.10 s, 860 MB; worker: forward 1.25 s, ClientApp 146 MB"
                in page.inner_text("#nodes"))
        # What a client wrote in a reason is shown as text, never run as HTML.
        page.goto(base + "/runs/alpha")
        page.wait_for_selector("#events")
        assert "<b>vfe</b>" in page.inner_text("#events") and page.locator("#events b").count() == 0
        page.goto(base + "/runs/gamma")
        page.wait_for_selector("#chart-epsilon svg")
        assert page.locator("#chart-epsilon svg path").count() == 2  # one line per node
        assert "budget 8" in page.inner_text("#chart-epsilon")
        assert page.inner_text(".warning") == "round 2: not learning: train-loss stayed near ln(10)"
        assert not errors, errors
    finally:
        console.terminate()
        console.wait(timeout=30)


def test_follow_compare_and_stop_a_live_run(simulation_env, tmp_path, browser):
    env = simulation_env
    runs = tmp_path / "outputs"
    short = start_run(env, runs, "short", rounds=2)
    out, _ = short.communicate(timeout=600)
    assert short.returncode == 0, out[-3000:]
    long = start_run(env, runs, "live", rounds=400)
    console_port = free_port()
    console = start_console(env, runs, "127.0.0.1", console_port)
    url = f"http://127.0.0.1:{console_port}"
    errors: list[str] = []
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        # Runs page: the live run is listed as running (Flower's status), the short one completed.
        page.goto(url + "/")
        page.wait_for_selector('tr[data-run="live"] [data-status="running"]', timeout=240_000)
        page.wait_for_selector('tr[data-run="short"] [data-status="finished:completed"]')
        shoot(page, tmp_path, "runs")

        # Run page: a new round appears without a reload (a marker set in the page survives).
        page.goto(url + "/runs/live")
        page.wait_for_selector("#rounds-done[data-rounds]")
        page.wait_for_function("Number(document.querySelector('#rounds-done').dataset.rounds) >= 1", timeout=120_000)
        seen = int(page.get_attribute("#rounds-done", "data-rounds"))
        page.evaluate("window.__notReloaded = true")
        page.wait_for_function(
            f"window.__notReloaded === true && Number(document.querySelector('#rounds-done').dataset.rounds) > {seen}",
            timeout=120_000,
        )
        assert page.locator("#chart-accuracy svg path").count() >= 1
        # The gallery: what the server received, as an image the browser decoded.
        page.wait_for_function("document.querySelector('#gallery') && document.querySelector('#gallery').naturalWidth > 0",
                               timeout=60_000)
        shoot(page, tmp_path, "run")

        # Stop from the page, confirming the dialog; the page shows it stopped and Flower agrees.
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#stop")
        page.wait_for_selector('h1 [data-status="finished:stopped"]', timeout=120_000)
        assert page.locator("#stop").count() == 0
        run_id = json.loads((runs / "live" / "config.json").read_text())["flower-run-ids"][-1]
        assert flwr_status(env, str(run_id)) == "finished:stopped"
        assert json.loads((runs / "live" / "summary.json").read_text())["status"] == "stopped"
        shoot(page, tmp_path, "run-stopped")

        # Compare the two runs: one curve each.
        page.goto(url + "/compare?runs=short,live&metric=federated-accuracy")
        page.wait_for_selector("#chart-compare svg")
        assert page.locator("#chart-compare svg path").count() == 2
        assert page.locator("#compare-table tr").count() == 3
        shoot(page, tmp_path, "compare")

        page.goto(url + "/nodes")
        page.wait_for_selector("h1")
        shoot(page, tmp_path, "nodes")
        assert not errors, errors
    finally:
        console.terminate()
        long.terminate()  # the wrapper stops its run on SIGTERM
        long.wait(timeout=120)
        console.wait(timeout=30)


def test_off_loopback_the_browser_needs_the_token(simulation_env, tmp_path, browser):
    runs = tmp_path / "outputs"
    runs.mkdir()
    port = free_port()
    console = start_console(simulation_env, runs, "127.0.0.2", port)
    try:
        page = browser.new_page()
        response = page.goto(f"http://127.0.0.2:{port}/")
        assert response.status == 401
        token = (tmp_path / "outputs.console-token").read_text().strip()
        response = page.goto(f"http://127.0.0.2:{port}/login?token={token}")
        assert response.status == 200 and page.url.endswith(":%d/" % port)
        page.wait_for_selector("h1:text('Runs')")
        assert page.goto(f"http://127.0.0.2:{port}/api/runs").status == 200  # the cookie, from now on
    finally:
        console.terminate()
        console.wait(timeout=30)


def test_tls_with_the_superlink_certificates_and_the_token(tmp_path):
    """The console with the certificate files docs/deploy/generate-certs.sh makes for the
    SuperLink, bound off loopback: HTTPS only, and the token still required."""
    import ssl

    certs = tmp_path / "certs"
    subprocess.run(["bash", str(ROOT / "docs/deploy/generate-certs.sh"), str(certs), "127.0.0.2", "0"],
                   check=True, capture_output=True, timeout=120)
    runs = tmp_path / "outputs"
    runs.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "server.console.cli", "--runs-dir", str(runs), "--host", "127.0.0.2",
         "--port", str(port), "--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        url = f"https://127.0.0.2:{port}/api/runs"
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url, context=context, timeout=5)
                raise AssertionError("answered without the token")
            except urllib.error.HTTPError as err:
                assert err.code == 401
                break
            except urllib.error.URLError:
                assert time.time() < deadline and process.poll() is None, "the console did not start"
                time.sleep(0.3)
        token = (tmp_path / "outputs.console-token").read_text().strip()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        assert json.loads(urllib.request.urlopen(request, context=context, timeout=5).read())["runs"] == []
        with pytest.raises(OSError):  # plain HTTP gets no page (the connection is dropped)
            urllib.request.urlopen(f"http://127.0.0.2:{port}/api/runs", timeout=5)
    finally:
        process.terminate()
        process.wait(timeout=30)
