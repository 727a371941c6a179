"""Run the app with ``flwr run`` and exit non-zero unless the run really completed.

    python -m simulations.flwr_run [--federation NAME] [--num-supernodes N] [--run-config "k=v ..."]

``flwr run --stream`` exits 0 even when the run fails, so this submits the run, follows
its log (per-round progress), then asks ``flwr list --format json`` for the final status
and returns 0 only for ``finished:completed``. Without ``--federation`` it uses the managed
local SuperLink (simulation) with ``--num-supernodes`` simulated clients.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def flwr(*args: str, capture: bool = True, timeout: float | None = 300) -> str:
    result = subprocess.run(
        [str(BIN / "flwr"), *args], cwd=ROOT, text=True, timeout=timeout,
        capture_output=capture,
    )
    if result.returncode != 0:
        raise SystemExit(f"flwr {' '.join(args)} failed:\n{result.stdout or ''}{result.stderr or ''}")
    return result.stdout or ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--federation", default=None, help="SuperLink connection in config.toml")
    parser.add_argument("--num-supernodes", type=int, default=4)
    parser.add_argument("--run-config", default="")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before the run is stopped")
    args = parser.parse_args(argv)
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"

    command = ["run", "."]
    if args.federation:
        command.append(args.federation)
    else:
        command += ["--federation-config", f"num-supernodes={args.num_supernodes} client-resources-num-cpus=1"]
    if args.run_config:
        command += ["--run-config", args.run_config]
    submitted = json.loads(flwr(*command, "--format", "json"))
    if "run-id" not in submitted:
        raise SystemExit(f"flwr run did not start a run: {submitted.get('error-message', submitted)}")
    run_id = submitted["run-id"]
    print(f"run {run_id} submitted; following its log", flush=True)
    target = [args.federation] if args.federation else []
    deadline = time.time() + args.timeout
    try:
        flwr("log", str(run_id), *target, capture=False, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"run {run_id} still going after {args.timeout:.0f} s", file=sys.stderr)
    # The log stream can end before the run does (e.g. while the simulation is still
    # starting), so the status decides, polled until the run finishes or the timeout.
    while True:
        runs = json.loads(flwr("list", *target, "--run-id", str(run_id), "--format", "json"))["runs"]
        status = runs[0]["status"]
        if status.startswith("finished") or time.time() > deadline:
            break
        time.sleep(2)
    if not status.startswith("finished"):
        # Do not leave it running beside whatever the caller starts next.
        flwr("stop", str(run_id), *target)
        print(f"run {run_id}: {status} after {args.timeout:.0f} s; stopped it", file=sys.stderr)
        status = f"stopped ({status})"
    print(f"run {run_id}: {status}")
    return 0 if status == "finished:completed" else 1


if __name__ == "__main__":
    sys.exit(main())
