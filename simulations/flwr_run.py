"""Run the app with ``flwr run`` and exit non-zero unless the run really completed.

    python -m simulations.flwr_run [--superlink NAME] [--num-supernodes N] [--run-config "k=v ..."]

``flwr run --stream`` exits 0 even when the run fails, so this submits the run, follows
its log (per-round progress), then asks ``flwr list --format json`` for the final status
and returns 0 only for ``finished:completed``. Without ``--superlink`` it uses Flower's
managed local SuperLink (simulation) with ``--num-supernodes`` simulated clients, and stops
that SuperLink at the end when this command started it (one that was already running is
left alone). A run still going after ``--timeout`` seconds, or still pending after
``--start-timeout``, is stopped with ``flwr stop``; a managed local SuperLink that left a
run pending is stopped too, so the next ``flwr run`` starts a fresh one. A run this command
stops (``--timeout``, Ctrl-C, SIGTERM) gets a ``summary.json`` with status ``stopped``. It
refuses to start when the local SuperLink's port answers for another FLWR_HOME (another
checkout's SuperLink would run its own code and state).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from server.flwr_cli import (
    BIN,
    ROOT,
    FlwrError,
    flwr_env,
    flwr_json,
    foreign_superlink,
    local_superlinks,
    run_flwr,
    stop_local_superlink,
)

# Seconds between `flwr list` polls while the log still streams: each poll is a CLI start
# (about 1.5 CPU-seconds), and the end of the stream already triggers an immediate check.
POLL_SECONDS = 30


def flwr(*args: str, timeout: float | None = 300) -> str:
    result = run_flwr(*args, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"flwr {' '.join(args)} failed:\n{result.stdout or ''}{result.stderr or ''}")
    return result.stdout or ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--superlink", default=None, metavar="NAME",
        help="a SuperLink connection of $FLWR_HOME/config.toml (default: the managed local one, simulation)",
    )
    parser.add_argument("--num-supernodes", type=int, default=4, help="simulated clients (local SuperLink only)")
    parser.add_argument("--run-config", default="", help='overrides of [tool.flwr.app.config], as "key=value ..."')
    parser.add_argument("--ray-cpus", type=int, default=0,
                        help="CPUs Ray may use in simulation, i.e. ClientApp actors (default: all)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before the run is stopped")
    parser.add_argument("--start-timeout", type=float, default=180, help="seconds a run may stay pending")
    args = parser.parse_args(argv)

    command = ["run", "."]
    local_running = bool(local_superlinks())
    if not args.superlink and (crossing := foreign_superlink()):
        print(f"refusing to run: {crossing}", file=sys.stderr)
        return 2
    if args.superlink:
        command.append(args.superlink)
    else:
        sizing = f"num-supernodes={args.num_supernodes} client-resources-num-cpus=1"
        if args.ray_cpus:
            sizing += f" init-args-num-cpus={args.ray_cpus}"
        command += ["--federation-config", sizing]
    if args.run_config:
        command += ["--run-config", args.run_config]
    try:
        submitted = flwr_json(*command)
    except FlwrError as err:
        raise SystemExit(f"flwr run did not start a run: {err}") from None
    if "run-id" not in submitted:
        raise SystemExit(f"flwr run did not start a run: {submitted}")
    run_id = submitted["run-id"]
    print(f"run {run_id} submitted; following its log", flush=True)
    target = [args.superlink] if args.superlink else []
    # Ctrl-C or SIGTERM stops the run too: otherwise it goes on without anyone following it.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        status = follow(run_id, target, args.timeout, args.start_timeout)
    except KeyboardInterrupt:
        print(f"interrupted: stopping run {run_id}", file=sys.stderr)
        flwr("stop", str(run_id), *target, timeout=60)
        mark_stopped(args.run_config, f"stopped on an interrupt of simulations.flwr_run (Flower run {run_id})")
        if not args.superlink and not local_running:
            stop_local_superlink()
        return 130
    if not status.startswith("finished"):  # follow() stopped it
        mark_stopped(args.run_config, f"stopped by simulations.flwr_run while {status} (--timeout "
                                      f"{args.timeout:g} s, --start-timeout {args.start_timeout:g} s)")
    # Asked before the SuperLink is stopped: any `flwr` command starts a managed local
    # SuperLink when none answers.
    details = run_details(run_id, target) if status != "finished:completed" else ""
    if not args.superlink and (not local_running or not status.startswith("finished")):
        # Stop what this command started. A managed local SuperLink that left a run pending
        # is stopped too: it sometimes stops launching runs (its SuperExec died, or
        # "database is locked"), and the next `flwr run` starts a fresh one.
        stop_local_superlink()
    print(f"run {run_id}: {status}")
    if status != "finished:completed":
        print(f"run {run_id} did not complete: {details or status}", file=sys.stderr)
    return 0 if status == "finished:completed" else 1


def mark_stopped(run_config: str, message: str) -> None:
    """``summary.json`` (status ``stopped``) for a run this command stopped: its ServerApp
    was ended from outside and wrote none. Only a run folder this machine can see."""
    from flwr.common.config import parse_config_args

    from common.run_config import app_defaults
    from server.run_store import RunStore

    values = {**app_defaults(), **parse_config_args([run_config] if run_config else [])}
    output_dir = Path(str(values["output-dir"])).expanduser()
    output_dir = output_dir if output_dir.is_absolute() else ROOT / output_dir
    if (output_dir / str(values["run-name"]) / "config.json").is_file():
        RunStore(str(output_dir), str(values["run-name"])).mark_stopped(message)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_row(run_id: int, target: list[str], attempts: int = 5) -> dict:
    """``flwr list --run-id`` for one run: its status, status details, times, traffic. A
    SuperLink busy past the CLI's 30 s request timeout (a loaded two-core machine) is asked
    again, a few times, before the run is given up on."""
    for attempt in range(attempts):
        try:
            return flwr_json("list", *target, "--run-id", str(run_id))["runs"][0]
        except FlwrError as err:
            if attempt == attempts - 1:
                raise SystemExit(f"cannot read the status of run {run_id}: {err}") from None
            print(f"{err}; asking again", file=sys.stderr)
            time.sleep(5)
    raise AssertionError("unreachable")


def run_status(run_id: int, target: list[str]) -> str:
    return run_row(run_id, target)["status"]


def run_details(run_id: int, target: list[str]) -> str:
    """Why a run ended as it did (Flower's status details: a failed ServerApp's exception)."""
    return run_row(run_id, target).get("status-details", "")


def follow(run_id: int, target: list[str], timeout: float, start_timeout: float) -> str:
    """Stream the run's log until it finishes; stop it after ``timeout`` seconds, or after
    ``start_timeout`` seconds still pending. Returns the last status seen."""
    started = time.time()
    log = subprocess.Popen([str(BIN / "flwr"), "log", str(run_id), *target], cwd=ROOT, env=flwr_env())
    status = "pending"
    try:
        while True:
            # The log stream can end before the run does, so the status decides. Each
            # `flwr list` is a CLI start, so poll slowly while the log is still streaming,
            # and at once when it ends (usually because the run finished).
            if log.poll() is None:
                try:
                    log.wait(timeout=POLL_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(2)
            status = run_status(run_id, target)
            waited = time.time() - started
            if status.startswith("finished"):
                return status
            if waited > timeout or (status == "pending" and waited > start_timeout):
                flwr("stop", str(run_id), *target)
                print(f"run {run_id} still {status} after {waited:.0f} s: stopped it", file=sys.stderr)
                return status
    finally:
        try:
            log.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.terminate()


if __name__ == "__main__":
    sys.exit(main())
