"""VisualMixer against DP-SGD and the other defenses, per exchange: accuracy, time, and
attacks actually run.

    python -m simulations.compare --preset quick --dataset folder --data-dir /tmp/cifar --out DIR
    python -m simulations.compare --preset quick --out DIR          # embedded `shapes`
    python -m simulations.compare --preset my-preset.toml --out DIR # a copy of simulations/presets/*.toml
    python -m simulations.compare --preset standard --seeds 3 --out DIR  # DIR/seed-0..2, DIR/frontier.md

One job per module:

1. Arms (:mod:`simulations.compare_arms`): every registered defense at the settings it
   sweeps, in every exchange it does not refuse; a preset names the arms it runs.
2. Data (:mod:`simulations.compare_data`): the victims' images in ``DIR/data``, a disjoint
   public set for the attacker.
3. Training (:mod:`simulations.compare_runs`): one ``flwr run .`` per arm into
   ``DIR/runs/<arm>``; an arm whose run already completed is not run again.
4. Attacks (:mod:`simulations.compare_attacks`) on each trained arm, on test images, in a
   second process that overlaps the training of the next arms.
5. Report (:mod:`simulations.compare_report`): ``results.csv``, ``report.md`` and PNG plots.

With ``--seeds N`` (N > 1) seeds ``--seed`` to ``--seed + N - 1`` each run all of this (their own
data split, training and attackers) into ``DIR/seed-S``, and :mod:`simulations.frontier`
writes the mean and deviation of every figure and the frontier into ``DIR``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from common.data import DATASETS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from common.models import MODELS
from common.protocol import EXCHANGES
from simulations.compare_arms import Arm, matrix, scope_arms
from simulations.compare_data import check_same_setup, prepare_data
from simulations.compare_presets import Preset, load_preset, preset_names
from simulations.compare_runs import needs_training, run_config, share_cores, train_arms, upload_samples

__all__ = [
    "EXCHANGES", "Arm", "Preset", "check_same_setup", "load_preset", "matrix", "prepare_data", "run_config",
    "scope_arms", "upload_samples",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="quick",
                        help=f"one of {', '.join(preset_names())} (simulations/presets/), or a .toml file")
    parser.add_argument("--dataset", choices=DATASETS, default="shapes")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=0,
                        help="seeds --seed .. --seed+N-1, each into DIR/seed-S when N > 1 (default: the preset's)")
    parser.add_argument("--exchanges", default=",".join(EXCHANGES), help="comma-separated subset")
    parser.add_argument("--defenses", default="",
                        help="comma-separated arm labels, e.g. none,vm-vfe0.8, or exchange-label names, e.g. "
                        "images-pix (default: the preset's, else all)")
    parser.add_argument("--rounds", type=int, default=0, help="override the preset's rounds")
    parser.add_argument("--parallel", type=int, default=0, help="arms trained at once (default: the preset's)")
    parser.add_argument("--attack-scale", type=float, default=1.0, help="scale every attack's step count")
    parser.add_argument("--model", choices=sorted(MODELS), default=None, help="override the preset's model")
    parser.add_argument("--image-size", type=int, default=0,
                        help="override the preset's image side (even, resized as the app does; regions scale with it)")
    args = parser.parse_args(argv)

    try:
        preset = load_preset(args.preset)
    except ValueError as err:
        parser.error(str(err))
    if args.rounds:
        preset = replace(preset, rounds=args.rounds)
    if args.model:
        preset = replace(preset, model=args.model)
    if args.image_size:
        if args.image_size % 2 or not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
            parser.error(f"--image-size {args.image_size}: must be even, in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
        preset = replace(preset, image_size=args.image_size)
    if args.attack_scale != 1.0:
        scaled = {k: max(1, int(getattr(preset, k) * args.attack_scale))
                  for k in ("recogniser_steps", "adaptive_steps", "statistics_steps", "inverse_steps",
                            "decoder_steps", "inversion_steps")}
        preset = replace(preset, **scaled)
    exchanges = [x for x in args.exchanges.split(",") if x]
    unknown = sorted(set(exchanges) - set(EXCHANGES))
    if unknown:
        parser.error(f"--exchanges {','.join(unknown)} unknown; choose from {','.join(EXCHANGES)}")
    arms = [a for a in matrix(preset.image_size) if a.exchange in exchanges]
    if args.defenses or preset.defenses:
        wanted = set(args.defenses.split(",")) if args.defenses else set(preset.defenses)
        known = {a.label for a in matrix(preset.image_size)}
        named = {a.name for a in matrix(preset.image_size)}
        if wanted - known - named:
            parser.error(f"--defenses {','.join(sorted(wanted - known - named))} unknown; choose from "
                         f"{','.join(sorted(known))} or an exchange-label name such as images-pix")
        arms = [a for a in arms if a.label in wanted or a.name in wanted]
    for key, value in (("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1"),
                       ("FLWR_DISABLE_UPDATE_CHECK", "1"), ("FLWR_TELEMETRY_ENABLED", "0")):
        os.environ.setdefault(key, value)
    if args.seeds < 0:
        parser.error(f"--seeds {args.seeds}: at least 1 (0: the preset's {preset.seeds})")
    args.seeds = args.seeds or preset.seeds

    out = args.out.resolve()
    command = "python -m simulations.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    seeds = range(args.seed, args.seed + args.seeds)
    completed = [run_seed(args, preset, arms, out if args.seeds == 1 else out / f"seed-{seed}", seed, command)
                 for seed in seeds]
    if args.seeds > 1:
        from simulations.frontier import write_frontier

        write_frontier({f"{args.preset}, {preset.rounds} rounds": out}, out, command)
        print(f"[compare] {args.seeds} seeds: {out / 'frontier.md'}", flush=True)
    return 0 if all(completed) else 1


def run_seed(args: argparse.Namespace, preset: Preset, arms: list[Arm], out: Path, seed: int, command: str) -> bool:
    """Data, training, attacks and report of one seed into ``out``; whether every arm completed."""
    out.mkdir(parents=True, exist_ok=True)
    check_same_setup(out, {"dataset": args.dataset, "model": preset.model, "image_size": preset.image_size})
    started = time.time()
    print(f"[compare] preset {args.preset}: {len(arms)} arms on {args.dataset} -> {out}", flush=True)
    data, public = prepare_data(args.dataset, args.data_dir, preset, out, seed)

    # The attack stage runs alongside in its own process (one thread): it trains the
    # recogniser and inverse networks while the first arms train, then attacks each arm as
    # soon as its run ends, using the time flwr spends starting and stopping runs.
    status_dir = out / "status"
    shutil.rmtree(status_dir, ignore_errors=True)
    status_dir.mkdir()
    from simulations.compare_attacks import attack_worker

    worker = multiprocessing.get_context("spawn").Process(
        target=attack_worker, args=(arms, preset, data, public, out, seed, any(needs_training(a, out) for a in arms)),
        name="attacks",
    )
    worker.start()
    parallel = args.parallel or preset.parallel_runs
    share_cores(parallel)  # after the worker's start: it sets its own threads
    statuses = train_arms(arms, preset, data, out, seed, parallel, status_dir)
    # Arms trained by an earlier invocation are not trained again; keep their time too.
    timings = out / "timings.json"
    earlier = json.loads(timings.read_text())["train_seconds"] if timings.exists() else 0.0
    train_seconds = earlier + time.time() - started
    timings.write_text(json.dumps({"train_seconds": round(train_seconds, 1)}))
    worker.join()
    if worker.exitcode != 0:
        raise SystemExit(f"the attack stage failed (exit {worker.exitcode}); its traceback is above")
    results = torch.load(out / "attacks.pt", weights_only=False)

    from simulations.compare_report import write_report

    write_report(results, arms, preset, out, command, {
        "dataset": args.dataset, "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - started, 1), "preset": args.preset, **asdict(preset),
    })
    print(f"[compare] done in {time.time() - started:.0f} s: {out / 'report.md'}", flush=True)
    return all(s == "completed" for s in statuses.values())


if __name__ == "__main__":
    sys.exit(main())
