"""A deployed round against the same round simulated: a real ``flower-superlink`` and N
``flower-supernode`` processes on loopback, then ``flwr run`` with the Simulation runtime,
same settings and seed, for each exchange.

    python -m simulations.bench.deployment [--exchanges weights,images,activations] [--nodes 2] [--rounds 4]
        [--node-threads N]

Prints one JSON line per exchange: the median round seconds from round 2 on (round 1
starts processes) deployed and simulated and their ratio, and per message type the median
of what the ClientApp reported of the message (``client/timing.py``: process start to app
loaded, setup, the handler, CPU seconds, peak memory) on the deployed nodes. The
SuperNodes share this machine's cores, as separate devices would not: each gets
``--node-threads`` OpenMP threads (default: cores / nodes), as Ray gives each simulated
ClientApp actor its CPU. Every process started here is stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STAGES = ("stage-startup", "stage-setup", "stage-handler", "cpu-seconds", "peak-rss-mb", "obfuscation-seconds")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(home: Path) -> dict[str, str]:
    return {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def flwr_json(env: dict[str, str], *args: str) -> dict:
    result = subprocess.run([str(BIN / "flwr"), *args, "--format", "json"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    data = json.loads(result.stdout or "{}")
    if data.get("success") is False:
        raise RuntimeError(f"flwr {' '.join(args)}: {data.get('error-message')}")
    return data


class LocalFederation:
    """A SuperLink and ``nodes`` SuperNodes (partition i of ``nodes``) on 127.0.0.1."""

    def __init__(self, home: Path, nodes: int, node_threads: int) -> None:
        self.home, self.env, self.procs = home, environment(home), []
        port = free_port()
        logs = home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self._start(logs / "superlink.log", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port),
                    "--database", str(home / "state.db"))
        for i in range(nodes):
            self._start_env = {"OMP_NUM_THREADS": str(node_threads)}
            self._start(logs / f"supernode{i}.log", "flower-supernode", "--insecure", "--superlink",
                        f"127.0.0.1:{port}", "--port", str(free_port()),
                        "--node-config", f"partition-id={i} num-partitions={nodes}")
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        deadline = time.time() + 120
        while True:
            try:
                if flwr_json(self.env, "list", "bench").get("success"):
                    break
            except (RuntimeError, ValueError):
                pass
            if time.time() > deadline:
                raise RuntimeError("the SuperLink did not answer within 120 s")
            time.sleep(1)

    def _start(self, log: Path, *command: str) -> None:
        out = open(log, "w")
        env = {**self.env, **getattr(self, "_start_env", {})}
        self.procs.append(subprocess.Popen([str(BIN / command[0]), *command[1:]], env=env, stdout=out,
                                           stderr=subprocess.STDOUT, cwd=self.home))

    def run(self, overrides: str, timeout: float = 1800) -> str:
        run_id = flwr_json(self.env, "run", str(ROOT), "bench", "--run-config", overrides)["run-id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = flwr_json(self.env, "list", "bench", "--run-id", str(run_id))["runs"][0]["status"]
            if status.startswith("finished"):
                return status
            time.sleep(2)
        return "timed out"

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def round_seconds(folder: Path) -> list[float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in rows if r.get("status") == "completed"]


def message_stages(folder: Path) -> dict[str, dict[str, float]]:
    """Per message type, the median of each figure the deployed ClientApp reported."""
    per_type: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in (folder / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("outcome") == "accepted" and "stage-handler" in event:
            for key in STAGES:
                if key in event:
                    per_type[event["what"]][key].append(event[key])
    return {kind: {k: round(statistics.median(v), 3) for k, v in figures.items()} for kind, figures in per_type.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exchanges", default="weights,images,activations")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--run-config", default="", help="more run-config overrides for both runs")
    parser.add_argument("--node-threads", type=int, default=0, help="OpenMP threads per SuperNode (0: cores / nodes)")
    args = parser.parse_args(argv)
    threads = args.node_threads or max(1, (os.cpu_count() or 1) // args.nodes)
    work = Path(tempfile.mkdtemp(prefix="bench-deployment-"))
    federation = LocalFederation(work / "deployed-home", args.nodes, threads)
    try:
        for exchange in [x for x in args.exchanges.split(",") if x]:
            common = (f"exchange='{exchange}' num-server-rounds={args.rounds} min-replies={args.nodes} "
                      f"round-timeout=600 {args.run_config}")
            deployed_out, simulated_out = work / "deployed" / exchange, work / "simulated" / exchange
            status = federation.run(f"{common} output-dir='{deployed_out.parent}' run-name='{exchange}'")
            simulated = subprocess.run(
                [sys.executable, "-m", "simulations.flwr_run", "--num-supernodes", str(args.nodes), "--run-config",
                 f"{common} output-dir='{simulated_out.parent}' run-name='{exchange}'"],
                cwd=ROOT, env=environment(work / "simulated-home"), capture_output=True, text=True, check=False,
            )
            deployed_rounds, simulated_rounds = round_seconds(deployed_out), round_seconds(simulated_out)
            later_deployed = statistics.median(deployed_rounds[1:] or deployed_rounds)
            later_simulated = statistics.median(simulated_rounds[1:] or simulated_rounds)
            print(json.dumps({
                "exchange": exchange, "nodes": args.nodes, "node_threads": threads, "rounds": args.rounds,
                "deployed_status": status,
                "simulated_exit": simulated.returncode,
                "deployed_round_seconds": deployed_rounds, "simulated_round_seconds": simulated_rounds,
                "deployed_median_later_rounds": later_deployed, "simulated_median_later_rounds": later_simulated,
                "ratio_deployed_to_simulated": round(later_deployed / later_simulated, 2),
                "deployed_messages": message_stages(deployed_out),
            }), flush=True)
    finally:
        federation.stop()
        subprocess.run([sys.executable, "-c", "from server.flwr_cli import stop_local_superlink; from pathlib import Path;"
                        f"stop_local_superlink(Path({str(work / 'simulated-home')!r}))"], cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
