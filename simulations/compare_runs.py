"""Training the arms of :mod:`simulations.compare`: one ``flwr run .`` per arm (Flower's
Simulation runtime, the app users run), several at a time; a completed arm is not run again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from server.flwr_cli import local_superlinks, stop_local_superlink
from simulations.compare_arms import Arm
from simulations.compare_presets import Preset

ROOT = Path(__file__).resolve().parents[1]


def upload_samples(arm: Arm, preset: Preset) -> int:
    """Images each client uploads per round in ``arm`` (0 = all of them)."""
    if arm.exchange == "images" and preset.images_upload_samples is not None:
        return preset.images_upload_samples
    return preset.upload_samples


def run_config(arm: Arm, preset: Preset, data: Path, runs: Path, seed: int) -> str:
    values = {
        "exchange": arm.exchange, "defense": arm.defense, "dataset": "folder", "data-dir": str(data),
        "num-server-rounds": preset.rounds, "local-steps": preset.local_steps,
        "batch-size": preset.batch_size, "upload-samples": upload_samples(arm, preset),
        "server-steps": preset.server_steps, "learning-rate": preset.learning_rate,
        "model": preset.model, "image-size": preset.image_size, "eval-samples": 250, "seed": seed,
        "output-dir": str(runs), "run-name": arm.name,
        "region-size": arm.region_size, "region-scope": arm.region_scope,
        "server-augment": preset.server_augment[arm.defense_plugin.transforms_images],
        **dict(arm.settings),
    }
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in values.items())


def needs_training(arm: Arm, out: Path) -> bool:
    summary = out / "runs" / arm.name / "summary.json"
    return not (summary.exists() and json.loads(summary.read_text())["status"] == "completed")


def train_arm(arm: Arm, preset: Preset, data: Path, out: Path, seed: int, attempts: int = 3) -> str:
    """Run one arm with ``flwr run``; its final status.

    A run that does not finish within ``preset.arm_timeout`` is stopped and tried again
    (resuming from its checkpoint): the local SuperLink occasionally leaves a run pending.
    """
    summary = out / "runs" / arm.name / "summary.json"
    if not needs_training(arm, out):
        return "completed"
    log = out / "logs" / f"{arm.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "simulations.flwr_run", "--num-supernodes", str(preset.clients),
        "--timeout", str(preset.arm_timeout), "--ray-cpus", str(preset.ray_cpus),
        "--run-config", run_config(arm, preset, data, out / "runs", seed),
    ]
    status = "not run"
    for attempt in range(1, attempts + 1):
        with log.open("a") as handle:
            handle.write(f"--- attempt {attempt} ---\n")
            handle.flush()
            result = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, check=False)
        status = json.loads(summary.read_text())["status"] if summary.exists() else (
            f"failed (flwr_run exit {result.returncode}; see {log})"
        )
        if status == "completed":
            break
        tqdm.write(f"[compare] {arm.name}: attempt {attempt} ended {status!r}")
    return status


def share_cores(parallel: int) -> None:
    """Give each of ``parallel`` runs, and the attack stage beside them, an equal share of
    the cores, through the environment every process of a run inherits (the SuperLink
    started here, its ServerApp and Ray's ClientApp actors).

    Left to itself each process starts one OpenMP thread per core; with more busy threads
    than cores they spend much of their time spinning in OpenMP's barriers. A value the
    user set is kept."""
    threads = max(1, (os.cpu_count() or 1) // (parallel + 1))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def train_arms(arms: list[Arm], preset: Preset, data: Path, out: Path, seed: int, parallel: int,
               status_dir: Path) -> dict[str, str]:
    """Train every arm, ``parallel`` ``flwr run``s at a time; each arm's status.

    Each run spends most of its first minute starting processes, Ray and its actors, and
    loading data, with the CPU half idle, so overlapping runs cuts the wall time even on
    two cores. The SuperLink launches every submitted run at once. As each arm ends its
    status goes to ``status_dir`` for the attack stage.
    """
    statuses: dict[str, str] = {}
    started_superlink = False
    if parallel > 1 and any(needs_training(a, out) for a in arms):
        # Every `flwr` command starts the managed local SuperLink when none answers; start
        # it once here, or the first parallel runs race to bind its port and all but one fail.
        from simulations.flwr_run import flwr

        started_superlink = not local_superlinks()
        flwr("list", "--format", "json")
    bar = tqdm(total=len(arms), desc="training (flwr run)", unit="arm")
    try:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            futures = {pool.submit(train_arm, arm, preset, data, out, seed): arm for arm in arms}
            for future in as_completed(futures):
                arm = futures[future]
                statuses[arm.name] = future.result()
                (status_dir / arm.name).write_text(statuses[arm.name])
                bar.set_postfix_str(arm.name)
                bar.update()
                if statuses[arm.name] != "completed":
                    tqdm.write(f"[compare] {arm.name}: {statuses[arm.name]}")
    finally:
        bar.close()
        if started_superlink:  # each arm's flwr_run leaves a SuperLink it did not start
            stop_local_superlink()
    return statuses
