"""A deployed round against the same round simulated: a real ``flower-superlink`` and N
``flower-supernode`` processes on loopback, then ``flwr run`` with the Simulation runtime,
same settings and seed, for each exchange.

    python -m simulations.bench.deployment [--exchanges weights,images,activations] [--nodes 2] [--rounds 4]
        [--node-threads N] [--modes plain,worker,worker-fast-poll]

Deployed modes, each a federation of its own:

* ``plain``: the SuperNodes as they come (a ClientApp process answers each message);
* ``worker``: each SuperNode's node config names a node worker (``client/worker.py``),
  started next to it, and the ClientApp process only forwards;
* ``worker-fast-poll``: as ``worker``, with ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.1`` (the
  SuperNode's executor looks for new tasks every 0.1 s instead of 1 s).

Prints one JSON line per exchange: for each mode the median round seconds from round 2 on
(round 1 starts processes), its ratio to the simulated round, and per message type the
median of what the ClientApp reported of the message (``client/timing.py``). The SuperNodes
(and workers) share this machine's cores, as separate devices would not: each gets
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
STAGES = ("stage-startup", "stage-imports", "stage-setup", "stage-handler", "stage-forward", "cpu-seconds",
          "peak-rss-mb", "forwarder-peak-rss-mb", "obfuscation-seconds")
MODES = ("plain", "worker", "worker-fast-poll")


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
    """A SuperLink and ``nodes`` SuperNodes (partition i of ``nodes``) on 127.0.0.1; with
    ``worker`` each SuperNode has a node worker, and ``task_poll`` sets the SuperNodes'
    ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``."""

    def __init__(self, home: Path, nodes: int, node_threads: int, worker: bool = False,
                 task_poll: float | None = None) -> None:
        self.home, self.env, self.procs = home, environment(home), []
        port = free_port()
        logs = home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self._start(logs / "superlink.log", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port),
                    "--database", str(home / "state.db"))
        self._start_env = {"OMP_NUM_THREADS": str(node_threads)}
        if task_poll is not None:
            self._start_env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(task_poll)
        for i in range(nodes):
            node_config = f"partition-id={i} num-partitions={nodes}"
            if worker:
                sock = home / f"worker{i}.sock"
                self._start(logs / f"worker{i}.log", "python", "-m", "client.worker", "--socket", str(sock))
                node_config += f" worker='{sock}'"
            self._start(logs / f"supernode{i}.log", "flower-supernode", "--insecure", "--superlink",
                        f"127.0.0.1:{port}", "--port", str(free_port()), "--node-config", node_config)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        try:
            self._wait_for_superlink()
        except RuntimeError:
            self.stop()
            raise

    def _wait_for_superlink(self) -> None:
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
        program = sys.executable if command[0] == "python" else str(BIN / command[0])
        self.procs.append(subprocess.Popen([program, *command[1:]], env=env, stdout=out, stderr=subprocess.STDOUT,
                                           cwd=ROOT if command[0] == "python" else self.home))

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
    parser.add_argument("--run-config", default="", help="more run-config overrides for every run")
    parser.add_argument("--node-threads", type=int, default=0, help="OpenMP threads per SuperNode (0: cores / nodes)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"deployed modes, of: {', '.join(MODES)}")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"--modes: unknown mode {unknown[0]!r} (known: {', '.join(MODES)})")
    threads = args.node_threads or max(1, (os.cpu_count() or 1) // args.nodes)
    exchanges = [x for x in args.exchanges.split(",") if x]
    work = Path(tempfile.mkdtemp(prefix="bench-deployment-"))

    def overrides(exchange: str, out: Path) -> str:
        return (f"exchange='{exchange}' num-server-rounds={args.rounds} min-replies={args.nodes} round-timeout=600 "
                f"{args.run_config} output-dir='{out.parent}' run-name='{exchange}'")

    results = {}
    try:
        for exchange in exchanges:  # simulated first, with no federation running beside it
            out = work / "simulated" / exchange
            simulated = subprocess.run(
                [sys.executable, "-m", "simulations.flwr_run", "--num-supernodes", str(args.nodes), "--run-config",
                 overrides(exchange, out)],
                cwd=ROOT, env=environment(work / "simulated-home"), capture_output=True, text=True, check=False,
            )
            rounds = round_seconds(out)
            results[exchange] = {"exchange": exchange, "nodes": args.nodes, "node_threads": threads,
                                 "rounds": args.rounds, "simulated_exit": simulated.returncode,
                                 "simulated_round_seconds": rounds,
                                 "simulated_median_later_rounds": statistics.median(rounds[1:] or rounds),
                                 "deployed": {}}
    finally:
        subprocess.run([sys.executable, "-c", "from server.flwr_cli import stop_local_superlink; from pathlib import Path;"
                        f"stop_local_superlink(Path({str(work / 'simulated-home')!r}))"], cwd=ROOT, check=False)
    for mode in modes:  # one federation at a time: idle SuperNodes poll, and would share the cores
        federation = LocalFederation(work / f"{mode}-home", args.nodes, threads, worker=mode != "plain",
                                     task_poll=0.1 if mode == "worker-fast-poll" else None)
        try:
            for exchange in exchanges:
                out = work / mode / exchange
                status = federation.run(overrides(exchange, out))
                rounds = round_seconds(out)
                later = statistics.median(rounds[1:] or rounds)
                results[exchange]["deployed"][mode] = {
                    "status": status, "round_seconds": rounds, "median_later_rounds": later,
                    "ratio_to_simulated": round(later / results[exchange]["simulated_median_later_rounds"], 2),
                    "messages": message_stages(out),
                }
        finally:
            federation.stop()
    for result in results.values():
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
