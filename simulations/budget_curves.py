"""Accuracy against training budget: no defense, VisualMixer (with the region-invariant
model that a run picks for it, and with the small CNN) and DP-SGD at each epsilon, each
point a run planned for its own length, over several seeds.

    python -m simulations.budget_curves --dataset cifar10 --data-dir DIR --out OUT \
        [--epochs 1,2,5,10,20] [--seeds 3] [--epsilons 3,8] [--dp-grid 256:0.001:1,1024:0.004:1]

Data, all from fixed seeds: the training split is shuffled once; its first ``--public``
images are left out (the comparison's attacker holds them), the next ``--validation`` are
the validation split, the rest (at most ``--train-images``) are trained on; ``--test-images``
come from the test split. Central training (one model, no federation).

* A point is a run planned for ``epochs`` passes over the training images: for DP-SGD,
  sigma is chosen so that exactly those steps spend ``epsilon`` (delta = 1/N, Poisson
  sampling at rate q = batch/N, Opacus' RDP accountant), so the privacy of a 5-epoch point
  is not a checkpoint of a longer run.
* DP-SGD's expected batch size, learning rate and clipping norm are chosen per (epsilon,
  epochs) among ``--dp-grid`` by accuracy on the validation split at the first seed; the
  choice is used for every seed and only then evaluated on the test images.
* VisualMixer trains on a fresh shuffle of every batch and is tested on obfuscated test
  images, as a model trained on them is used. So do the comparison's other image defenses,
  which ``--arms`` adds by their label (``pix``, ``blur-sigma1.5``, ``dppix-eps8``,
  ``vm-vfe0.8+scope0``, ...): the images exchange's model, trained centrally.

Files in ``--out`` (a rerun trains only what is missing): ``runs.jsonl`` (one line per run:
``phase`` ``tune`` on validation or ``test``), ``summary.jsonl`` (per arm and budget: mean
and sample standard deviation of test accuracy over seeds, and the DP choice), and
``curves.png``. ``--export DIR`` writes the training and test images as an ImageFolder tree,
so that a ``flwr run`` of the app can confirm a point.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common.data import ImageSet, load_dataset
from common.defaults import default_region_size
from common.dp import PrivacyLedger, PrivateTraining, noise_multiplier_for, poisson_batches
from common.models import build_model
from common.training import evaluate, make_optimizer, train_on_batches, train_steps
from common.visualmixer import DEFAULT_TARGET_VFE, VisualMixer
from simulations.seeds import mean_sd

BATCH_SIZE = 64  # the non-private arms' batch, as the comparison's clients
LEARNING_RATE = 1e-3  # Adam, the non-private arms'


@dataclass(frozen=True)
class Arm:
    label: str
    model: str
    target_vfe: float | None = None  # VisualMixer's target; None: images as they are
    epsilon: float | None = None  # DP-SGD's budget; None: not private
    transform: str | None = None  # another image defense: its label in the comparison's images arms


def _image_defense_arms(image_size: int) -> dict:
    """The comparison's images-exchange arms with an image defense, by label."""
    from simulations.compare_arms import matrix

    return {a.label: a for a in matrix(image_size) if a.exchange == "images" and a.defense != "none"}


def transform_arms(image_size: int) -> dict[str, Arm]:
    """The comparison's image defenses at their swept settings (``pix``, ``dppix-eps8``,
    ``vm-vfe0.8+scope0``, ...), each training the small CNN on its transformed images; the
    labels of the default arms stay theirs."""
    return {label: Arm(label, "small-cnn", transform=label) for label in _image_defense_arms(image_size)}


def image_transform(arm: Arm, image_size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What ``arm`` does to every batch it trains or is tested on (fresh randomness per call)."""
    if arm.target_vfe is not None:
        return VisualMixer(arm.target_vfe, region_size=default_region_size(image_size))
    if arm.transform is not None:
        return _image_defense_arms(image_size)[arm.transform].transform(None)
    return None


@dataclass(frozen=True)
class DPPoint:
    """One point of DP-SGD's grid: expected batch size, Adam's learning rate, clipping norm."""

    batch_size: int
    learning_rate: float
    max_grad_norm: float

    @classmethod
    def parse(cls, text: str) -> "DPPoint":
        try:
            batch, lr, clip = text.split(":")
            point = cls(int(batch), float(lr), float(clip))
        except ValueError:
            raise ValueError(f"--dp-grid {text!r}: expected BATCH:LEARNING_RATE:CLIP, e.g. 256:0.001:1") from None
        if point.batch_size < 1 or point.learning_rate <= 0 or point.max_grad_norm <= 0:
            raise ValueError(f"--dp-grid {text!r}: every value must be positive")
        return point


def arms(epsilons: list[float]) -> list[Arm]:
    return [
        Arm("none", "small-cnn"),
        Arm(f"vm-vfe{DEFAULT_TARGET_VFE}", "region-invariant", DEFAULT_TARGET_VFE),
        Arm(f"vm-vfe{DEFAULT_TARGET_VFE}-small-cnn", "small-cnn", DEFAULT_TARGET_VFE),
        *[Arm(f"dp-eps{e:g}", "small-cnn", epsilon=e) for e in epsilons],
    ]


@dataclass
class Splits:
    """Disjoint index sets of the training split, and the test images."""

    public: torch.Tensor
    validation: torch.Tensor
    train: torch.Tensor
    train_set: ImageSet
    validation_set: ImageSet
    test_set: ImageSet


def split_indices(train_size: int, public: int, validation: int, train_images: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(public, validation, train) indices of a training split of ``train_size``: disjoint,
    from one shuffle at ``seed`` (the comparison's public set is the same first ``public``)."""
    if public + validation >= train_size:
        raise SystemExit(f"--public {public} + --validation {validation} leave no training images of {train_size}")
    order = torch.randperm(train_size, generator=torch.Generator().manual_seed(seed))
    train = order[public + validation:]
    return order[:public], order[public:public + validation], train[:train_images] if train_images else train


def load_splits(args: argparse.Namespace) -> Splits:
    full = load_dataset(args.dataset, "train", args.data_dir, image_size=args.image_size)
    test = load_dataset(args.dataset, "test", args.data_dir, image_size=args.image_size)
    public, validation, train = split_indices(len(full), args.public, args.validation, args.train_images,
                                              args.data_seed)
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.data_seed + 1))
    test_set = test.subset(pick[: args.test_images] if args.test_images else pick)
    return Splits(public, validation, train, full.subset(train), full.subset(validation), test_set)


def train_point(arm: Arm, epochs: float, seed: int, train: ImageSet, judge: ImageSet, image_size: int,
                dp: DPPoint | None = None) -> dict:
    """Train ``arm`` for ``epochs`` planned passes over ``train``; accuracy on ``judge``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    region = default_region_size(image_size)
    model = build_model(arm.model, train.images.shape[1], train.num_classes, image_size, region)
    mixer = image_transform(arm, image_size)
    n = len(train)
    start = time.perf_counter()
    row: dict = {}
    if arm.epsilon is None:
        steps = math.ceil(epochs * n / BATCH_SIZE)
        optimizer = make_optimizer("adam", model.parameters(), LEARNING_RATE)
        losses = train_steps(model, train.images, train.labels, optimizer, steps, BATCH_SIZE, mixer,
                             generator=generator)
    else:
        assert dp is not None, "a DP-SGD arm needs its grid point"
        rate = min(1.0, dp.batch_size / n)
        steps = math.ceil(epochs / rate)
        delta = 1.0 / n
        sigma = noise_multiplier_for(arm.epsilon, delta, rate, steps)
        ledger = PrivacyLedger()
        private = PrivateTraining(model, make_optimizer("adam", model.parameters(), dp.learning_rate), sigma=sigma,
                                  max_grad_norm=dp.max_grad_norm, expected_batch_size=dp.batch_size,
                                  sample_rate=rate, ledger=ledger)
        losses = train_on_batches(private.module, train.images, train.labels, private.optimizer,
                                  poisson_batches(n, rate, steps, generator), mixer)
        row = {"noise_multiplier": round(sigma, 4), "epsilon_spent": round(ledger.epsilon(delta), 4),
               "delta": delta, **asdict(dp)}
    seconds = time.perf_counter() - start
    model.eval()
    accuracy, loss = evaluate(model, judge.images, judge.labels, mixer)
    tail = [x for x in losses[-50:] if math.isfinite(x)]
    return {"arm": arm.label, "model": arm.model, "target_vfe": arm.target_vfe, "epsilon": arm.epsilon,
            "epochs": epochs, "seed": seed, "steps": steps, "train_images": n, "accuracy": round(accuracy, 4),
            "loss": round(loss, 4), "final_train_loss": round(sum(tail) / len(tail), 4) if tail else None,
            "train_seconds": round(seconds, 1), **row}


class Runs:
    """``runs.jsonl``: every run so far, looked up by what defines it."""

    def __init__(self, path: Path, setup: dict) -> None:
        self.path, self.setup, self.rows = path, setup, []
        if path.exists():
            self.rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            other = [r for r in self.rows if r.get("setup") != setup]
            if other:
                raise SystemExit(f"--out {str(path.parent)!r} holds runs of another setup ({other[0].get('setup')}); "
                                 "use another --out")

    @staticmethod
    def key(phase: str, arm: str, epochs: float, seed: int, dp: DPPoint | None) -> tuple:
        return phase, arm, float(epochs), seed, None if dp is None else (dp.batch_size, dp.learning_rate,
                                                                         dp.max_grad_norm)

    def find(self, *key) -> dict | None:
        wanted = self.key(*key)
        for row in self.rows:
            dp = DPPoint(row["batch_size"], row["learning_rate"], row["max_grad_norm"]) if "batch_size" in row else None
            if self.key(row["phase"], row["arm"], row["epochs"], row["seed"], dp) == wanted:
                return row
        return None

    def get(self, phase: str, arm: Arm, epochs: float, seed: int, dp: DPPoint | None, train: ImageSet,
            judge: ImageSet, image_size: int) -> dict:
        row = self.find(phase, arm.label, epochs, seed, dp)
        if row is None:
            row = {"phase": phase, **train_point(arm, epochs, seed, train, judge, image_size, dp), "setup": self.setup}
            self.rows.append(row)
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        return row


def best_dp_point(runs: Runs, arm: Arm, epochs: float, seed: int, grid: list[DPPoint], splits: Splits,
                  image_size: int) -> DPPoint:
    """The grid point with the best accuracy on the validation split (ties: the first)."""
    scored = [(runs.get("tune", arm, epochs, seed, point, splits.train_set, splits.validation_set, image_size)
               ["accuracy"], -i, point) for i, point in enumerate(grid)]
    return max(scored)[2]


def summarise(rows: list[dict]) -> list[dict]:
    """Per (arm, epochs), the test accuracy's mean and sample standard deviation over seeds."""
    tests = [r for r in rows if r["phase"] == "test"]
    out = []
    for (arm, epochs), group in itertools.groupby(sorted(tests, key=lambda r: (r["arm"], r["epochs"])),
                                                  key=lambda r: (r["arm"], r["epochs"])):
        group = list(group)
        mean, sd = mean_sd([r["accuracy"] for r in group])
        first = group[0]
        out.append({"arm": arm, "model": first["model"], "target_vfe": first["target_vfe"],
                    "epsilon": first["epsilon"], "epochs": epochs, "seeds": sorted(r["seed"] for r in group),
                    "accuracy_mean": round(mean, 4), "accuracy_sd": round(sd, 4),
                    "train_seconds_mean": round(sum(r["train_seconds"] for r in group) / len(group), 1),
                    **({"dp_choice": {k: first[k] for k in ("batch_size", "learning_rate", "max_grad_norm")},
                        "noise_multiplier": first["noise_multiplier"]} if first["epsilon"] is not None else {})})
    return out


def plot(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, group in itertools.groupby(summary, key=lambda r: r["arm"]):
        group = sorted(group, key=lambda r: r["epochs"])
        ax.errorbar([r["epochs"] for r in group], [r["accuracy_mean"] for r in group],
                    yerr=[r["accuracy_sd"] for r in group], marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("epochs planned (passes over the training images)")
    ax.set_ylabel("test accuracy (mean +- sd over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def numbers(text: str, kind: type, flag: str) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag} {text!r}: expected comma-separated numbers") from None
    if not values or any(v <= 0 for v in values):
        raise SystemExit(f"{flag} {text!r}: expected positive numbers")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", default="1,2,5,10,20")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per point")
    parser.add_argument("--epsilons", default="3,8")
    parser.add_argument("--dp-grid", default="256:0.001:1,256:0.004:1,1024:0.002:1,1024:0.008:1")
    parser.add_argument("--arms", default="", help="comma-separated labels (default: no defense, VisualMixer and "
                        "DP-SGD; also any image defense of the comparison, e.g. pix,blur-sigma1.5,dppix-eps8)")
    parser.add_argument("--public", type=int, default=20000, help="training images left to the attacker")
    parser.add_argument("--validation", type=int, default=5000, help="training images that tune DP-SGD")
    parser.add_argument("--train-images", type=int, default=0, help="at most this many trained on (0: the rest)")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--export", type=Path, default=None,
                        help="write the training and test images as an ImageFolder tree here and stop (a `flwr run` "
                        "of the app on `dataset='folder'` then trains on exactly them)")
    args = parser.parse_args(argv)
    epochs = numbers(args.epochs, float, "--epochs")
    epsilons = numbers(args.epsilons, float, "--epsilons")
    try:
        grid = [DPPoint.parse(p) for p in args.dp_grid.split(",") if p.strip()]
    except ValueError as err:
        parser.error(str(err))
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: at least 1")
    chosen = arms(epsilons)
    if args.arms:
        known = transform_arms(args.image_size) | {a.label: a for a in chosen}
        labels = [x for x in args.arms.split(",") if x]
        if unknown := [x for x in labels if x not in known]:
            parser.error(f"--arms: unknown arm {unknown[0]!r} (known: {', '.join(known)})")
        chosen = [known[x] for x in labels]
    splits = load_splits(args)
    if args.export:
        from simulations.compare_data import write_folder

        if args.export.exists() and any(args.export.iterdir()):
            parser.error(f"--export {str(args.export)!r} is not empty")
        write_folder(splits.train_set, args.export / "train")
        write_folder(splits.test_set, args.export / "test")
        print(f"[budget_curves] {len(splits.train_set)} training and {len(splits.test_set)} test images: {args.export}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    setup = {"dataset": args.dataset, "image_size": args.image_size, "public": args.public,
             "validation": args.validation, "train_images": len(splits.train), "test_images": len(splits.test_set),
             "data_seed": args.data_seed}
    runs = Runs(args.out / "runs.jsonl", setup)
    for arm in chosen:
        for budget in epochs:
            dp = best_dp_point(runs, arm, budget, 0, grid, splits, args.image_size) if arm.epsilon else None
            for seed in range(args.seeds):
                runs.get("test", arm, budget, seed, dp, splits.train_set, splits.test_set, args.image_size)
    summary = summarise(runs.rows)
    (args.out / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in summary))
    plot(summary, args.out / "curves.png", f"{args.dataset}: {len(splits.train)} training images, "
         f"{len(splits.test_set)} test images")
    for row in summary:
        print(json.dumps({"summary": row}), flush=True)


if __name__ == "__main__":
    main()
