"""VisualMixer against DP-SGD, per exchange mode: accuracy, time, and attacks actually run.

    python -m simulations.compare --preset quick --dataset folder --data-dir /tmp/cifar --out DIR
    python -m simulations.compare --preset quick --out DIR          # embedded `shapes`

1. Data: the victims' images (clients' training data and the test split) are written to
   ``DIR/data`` as an ImageFolder tree; a disjoint public set is kept for the attacker.
2. Training: one ``flwr run .`` (Flower's Simulation runtime, the app users run) per arm:
   defense in {none, visualmixer at three target VFEs, dp-sgd at epsilon 1, 3, 8,
   visualmixer+dp-sgd at epsilon 8} x exchange in {images, activations, weights}, less
   dp-sgd with images (refused by the app). Runs land in ``DIR/runs/<arm>``; an arm whose
   run already completed is not run again.
3. Attacks (:mod:`simulations.compare_attacks`) on each trained arm, on test images, in a
   second process that overlaps the training of the next arms.
4. Report (:mod:`simulations.compare_report`): ``results.csv``, ``report.md`` and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from common.data import DATASETS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, ImageSet, load_dataset
from common.defaults import default_region_size
from common.defenses import get_defense
from common.models import MODELS
from common.run_config import EXCHANGES
from server.flwr_cli import local_superlinks, stop_local_superlink

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (0.5, 0.8, 1.0)
EPSILONS = (1.0, 3.0, 8.0)


@dataclass(frozen=True)
class Preset:
    clients: int
    rounds: int
    victim_train: int  # images shared out between the clients (0 = all not kept public)
    test: int  # test images (0 = all)
    public: int  # the attacker's own labelled images, disjoint from the victims'
    local_steps: int
    batch_size: int
    upload_samples: int
    server_steps: int
    learning_rate: float
    attack_victims: int  # test images every attack is scored on
    recogniser_steps: int
    recogniser_augment: bool  # flips and shifts: the clean recogniser at full strength
    adaptive_steps: int  # each adaptive recogniser (mosaic-trained, obfuscation-trained)
    statistics_steps: int  # each region-statistics classifier (an MLP: cheap)
    linkage_pool: int  # candidate originals the linkage attacker searches (the true one included)
    inverse_steps: int
    decoder_steps: int
    inversion_steps: int
    inversion_batches: int
    inversion_batch_size: int
    network_width: int  # channels of the attack U-Nets at full resolution
    arm_timeout: int  # seconds before a stuck run is stopped and retried
    parallel_runs: int  # arms whose `flwr run` goes on at the same time
    ray_cpus: int  # CPUs each run's Ray may use = ClientApp actors (0 = all)
    model: str = "small-cnn"  # what every arm trains, and what the activations/weights attacks load
    image_size: int = 32  # every image is resized to this side (the app's image-size)
    # The images exchange's upload per client per round (0 = all its images), where it
    # differs from ``upload_samples``: uploads there are small and the server trains on all
    # it has received, while an activations upload is ~20x larger per image.
    images_upload_samples: int | None = None
    defenses: tuple[str, ...] = ()  # arm labels run when --defenses is not given (() = all)
    # The images exchange's ``server-augment``: (without a defense, under VisualMixer). The
    # augmentation must commute with the defense, so VisualMixer arms get flips only.
    server_augment: tuple[str, str] = ("none", "none")


PRESETS = {
    # 2 CPU cores, under 15 minutes: small CNN, few rounds, a CIFAR-10 subset, short
    # attacks. Most of an arm's cost is starting its `flwr run` (processes, Ray, actors), so
    # three runs overlap and each gets one ClientApp actor.
    "quick": Preset(
        clients=2, rounds=3, victim_train=4000, test=1000, public=5000, local_steps=30,
        batch_size=32, upload_samples=512, server_steps=40, learning_rate=0.002,
        attack_victims=256, recogniser_steps=1000, recogniser_augment=True, adaptive_steps=300,
        statistics_steps=1500, linkage_pool=1000, inverse_steps=120, decoder_steps=120,
        inversion_steps=120, inversion_batches=4, inversion_batch_size=1, network_width=16,
        arm_timeout=300, parallel_runs=3, ray_cpus=1,
    ),
    # 2 CPU cores, about 2 hours: the arms that matter, longer training on all victims'
    # images (in the images exchange every client uploads all of them each round, freshly
    # obfuscated, and the server trains on them flipped and shifted as far as that commutes
    # with the defense) and a recogniser strong enough that its figures mean something.
    "standard": Preset(
        clients=2, rounds=8, victim_train=0, test=2000, public=20000, local_steps=100,
        batch_size=64, upload_samples=2048, server_steps=1000, learning_rate=0.002,
        attack_victims=500, recogniser_steps=20000, recogniser_augment=True, adaptive_steps=1500,
        statistics_steps=3000, linkage_pool=1000, inverse_steps=400, decoder_steps=400,
        inversion_steps=200, inversion_batches=8, inversion_batch_size=1, network_width=16,
        arm_timeout=5400, parallel_runs=2, ray_cpus=1, images_upload_samples=0,
        server_augment=("flip-shift", "flip"),
        defenses=("none", "vm-vfe0.8", "vm-vfe0.8+scope2", "vm-vfe0.8+scope0",
                  "dp-eps3", "dp-eps8", "vm+dp-vfe0.8+eps8"),
    ),
    # A GPU or a long run.
    "full": Preset(
        clients=4, rounds=20, victim_train=0, test=0, public=10000, local_steps=100,
        batch_size=64, upload_samples=1024, server_steps=100, learning_rate=0.002,
        attack_victims=1000, recogniser_steps=8000, recogniser_augment=True, adaptive_steps=4000,
        statistics_steps=4000, linkage_pool=1000, inverse_steps=4000, decoder_steps=4000,
        inversion_steps=2000, inversion_batches=8, inversion_batch_size=4, network_width=32,
        arm_timeout=7200, parallel_runs=1, ray_cpus=0, model="resnet18-gn",
    ),
}


@dataclass(frozen=True)
class Arm:
    exchange: str
    defense: str  # the app's run-config value
    target_vfe: float | None = None
    epsilon: float | None = None
    region_size: int = 8
    region_scope: int = 1
    image_size: int = 32

    @property
    def setting(self) -> str:
        """The defense's settings that differ from the app's defaults for the image size."""
        parts = []
        if self.target_vfe is not None:
            parts.append(f"vfe{self.target_vfe:g}")
            if self.region_scope != 1:
                parts.append(f"scope{self.region_scope}")
            if self.region_size != default_region_size(self.image_size):
                parts.append(f"r{self.region_size}")
        if self.epsilon is not None:
            parts.append(f"eps{self.epsilon:g}")
        return "+".join(parts) or "-"

    @property
    def label(self) -> str:
        """Defense and setting: the same label in every exchange mode."""
        name = get_defense(self.defense).abbreviation
        return name if self.setting == "-" else f"{name}-{self.setting}"

    @property
    def name(self) -> str:
        return f"{self.exchange}-{self.label}"


def scope_arms(region_size: int = 8) -> tuple[Arm, ...]:
    """The project's own protection beyond the paper: regions moved within 2x2 groups or
    anywhere, and a grid of regions half the size; in the images exchange, where the mosaic
    is exposed."""
    return (
        Arm("images", "visualmixer", target_vfe=0.8, region_size=region_size, region_scope=2),
        Arm("images", "visualmixer", target_vfe=0.8, region_size=region_size, region_scope=0),
        Arm("images", "visualmixer", target_vfe=0.8, region_size=region_size // 2),
    )


def matrix(image_size: int = 32) -> list[Arm]:
    """Every valid (exchange, defense, setting) arm; dp-sgd never with images. Regions are
    the app's default for ``image_size`` (8 px at 32, 16 at 64, 32 at 224)."""
    region = default_region_size(image_size)
    defenses = [Arm("", "none")]
    defenses += [Arm("", "visualmixer", target_vfe=t) for t in TARGETS]
    defenses += [Arm("", "dp-sgd", epsilon=e) for e in EPSILONS]
    defenses += [Arm("", "visualmixer+dp-sgd", target_vfe=0.8, epsilon=8.0)]
    sized = {"region_size": region, "image_size": image_size}
    arms = [
        replace(d, exchange=x, **sized)
        for x in EXCHANGES
        for d in defenses
        if x not in get_defense(d.defense).refused_exchanges
    ]
    last_images = max(i for i, a in enumerate(arms) if a.exchange == "images")
    scoped = [replace(a, image_size=image_size) for a in scope_arms(region)]
    return arms[: last_images + 1] + scoped + arms[last_images + 1 :]


# -- data ---------------------------------------------------------------------------------
def write_folder(images: ImageSet, folder: Path) -> None:
    """An ImageFolder tree of PNGs; class folders numbered so their sorted order is the label."""
    for i, name in enumerate(images.classes):
        (folder / f"{i:03d}-{name}").mkdir(parents=True, exist_ok=True)
    names = [f"{i:03d}-{n}" for i, n in enumerate(images.classes)]
    for k, (image, label) in enumerate(zip(images.images, images.labels.tolist(), strict=True)):
        Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).save(folder / names[label] / f"{k:06d}.png")


def _split(train_size: int, preset: Preset, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(public indices, victim indices) of the training split, disjoint."""
    order = torch.randperm(train_size, generator=torch.Generator().manual_seed(seed))
    if preset.public >= train_size:
        raise SystemExit(f"the preset needs {preset.public} public images; the training split has {train_size}")
    victims = order[preset.public :]
    return order[: preset.public], victims[: preset.victim_train] if preset.victim_train else victims


def _link_folder(files: list[tuple[str, int]], classes: list[str], folder: Path) -> None:
    """An ImageFolder tree of symlinks to the chosen files (no decoding, no copies)."""
    for k, (path, label) in enumerate(files):
        target = folder / f"{label:03d}-{classes[label]}"
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{k:06d}{Path(path).suffix}").symlink_to(Path(path).resolve())


def prepare_data(dataset: str, data_dir: str | None, preset: Preset, out: Path, seed: int) -> tuple[Path, ImageSet]:
    """Write the victims' data to ``out/data``; return its path and the attacker's public set.

    An ImageFolder source is linked file by file, so only the images used are ever decoded;
    other data sets are loaded and written out as PNGs.
    """
    folder, public_dir = out / "data", out / "data-public"
    if not (folder / "done").exists():
        for stale in (folder, public_dir):
            if stale.exists():
                shutil.rmtree(stale)
        if dataset == "folder":
            from torchvision.datasets import ImageFolder

            root = Path(data_dir).expanduser()
            try:
                train, test = ImageFolder(str(root / "train")), ImageFolder(str(root / "test"))
            except (FileNotFoundError, RuntimeError) as err:
                raise SystemExit(f"--data-dir {str(root)!r}: need an ImageFolder tree with train/ and test/ ({err})") from err
            public, victims = _split(len(train.samples), preset, seed)
            test_order = torch.randperm(len(test.samples), generator=torch.Generator().manual_seed(seed + 1))
            test_pick = test_order[: preset.test] if preset.test else test_order
            _link_folder([train.samples[i] for i in victims.tolist()], train.classes, folder / "train")
            _link_folder([test.samples[i] for i in test_pick.tolist()], test.classes, folder / "test")
            _link_folder([train.samples[i] for i in public.tolist()], train.classes, public_dir / "train")
        else:
            train = load_dataset(dataset, "train", data_dir or None, image_size=preset.image_size, seed=seed)
            test = load_dataset(dataset, "test", data_dir or None, image_size=preset.image_size, seed=seed)
            public, victims = _split(len(train), preset, seed)
            test_order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed + 1))
            write_folder(train.subset(victims), folder / "train")
            write_folder(test.subset(test_order[: preset.test] if preset.test else test_order), folder / "test")
            write_folder(train.subset(public), public_dir / "train")
        (folder / "done").write_text("ok\n")
    return folder, load_dataset("folder", "train", public_dir, image_size=preset.image_size)


def check_same_setup(out: Path, setup: dict) -> None:
    """Completed arms and prepared data in ``out`` are reused: refuse a different data set,
    model or image size there, which would mix runs that cannot be compared."""
    path = out / "setup.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = {k: (before.get(k), v) for k, v in setup.items() if before.get(k, v) != v}
        if changed:
            detail = ", ".join(f"{k} {old!r} there, {new!r} now" for k, (old, new) in changed.items())
            raise SystemExit(f"--out {str(out)!r} holds a compare with another setup ({detail}): use another --out")
    path.write_text(json.dumps(setup) + "\n")


# -- training -----------------------------------------------------------------------------
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
        "target-vfe": arm.target_vfe if arm.target_vfe is not None else 0.8,
        "target-epsilon": arm.epsilon if arm.epsilon is not None else 8.0,
        "region-size": arm.region_size, "region-scope": arm.region_scope,
        "server-augment": preset.server_augment[get_defense(arm.defense).transforms_images],
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
    than cores they spend much of their time spinning in OpenMP's barriers (a third of the
    CPU went to the kernel with two runs and the attack stage on 2 cores). A value the user
    set is kept."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--dataset", choices=DATASETS, default="shapes")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exchanges", default=",".join(EXCHANGES), help="comma-separated subset")
    parser.add_argument("--defenses", default="",
                        help="comma-separated arm labels, e.g. none,vm-vfe0.8 (default: the preset's, else all)")
    parser.add_argument("--rounds", type=int, default=0, help="override the preset's rounds")
    parser.add_argument("--parallel", type=int, default=0, help="arms trained at once (default: the preset's)")
    parser.add_argument("--attack-scale", type=float, default=1.0, help="scale every attack's step count")
    parser.add_argument("--model", choices=sorted(MODELS), default=None, help="override the preset's model")
    parser.add_argument("--image-size", type=int, default=0,
                        help="override the preset's image side (even, resized as the app does; regions scale with it)")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
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
        if wanted - known:
            parser.error(f"--defenses {','.join(sorted(wanted - known))} unknown; choose from {','.join(sorted(known))}")
        arms = [a for a in arms if a.label in wanted]
    for key, value in (("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1"),
                       ("FLWR_DISABLE_UPDATE_CHECK", "1"), ("FLWR_TELEMETRY_ENABLED", "0")):
        os.environ.setdefault(key, value)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    check_same_setup(out, {"dataset": args.dataset, "model": preset.model, "image_size": preset.image_size})
    started = time.time()
    print(f"[compare] preset {args.preset}: {len(arms)} arms on {args.dataset} -> {out}", flush=True)
    data, public = prepare_data(args.dataset, args.data_dir, preset, out, args.seed)

    # The attack stage runs alongside in its own process (one thread): it trains the
    # recogniser and inverse networks while the first arms train, then attacks each arm as
    # soon as its run ends, using the time flwr spends starting and stopping runs.
    status_dir = out / "status"
    shutil.rmtree(status_dir, ignore_errors=True)
    status_dir.mkdir()
    from simulations.compare_attacks import attack_worker

    worker = multiprocessing.get_context("spawn").Process(
        target=attack_worker, args=(arms, preset, data, public, out, args.seed, any(needs_training(a, out) for a in arms)),
        name="attacks",
    )
    worker.start()
    parallel = args.parallel or preset.parallel_runs
    share_cores(parallel)  # after the worker's start: it sets its own threads
    statuses = train_arms(arms, preset, data, out, args.seed, parallel, status_dir)
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

    command = "python -m simulations.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(results, arms, preset, out, command, {
        "dataset": args.dataset, "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - started, 1), "preset": args.preset, **asdict(preset),
    })
    print(f"[compare] done in {time.time() - started:.0f} s: {out / 'report.md'}", flush=True)
    return 0 if all(s == "completed" for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
