"""Ablations of VisualMixer: accuracy against VFE, optimizers, region scope, models.

    python -m simulations.ablation --study vfe-curve  [--dataset folder --data-dir DIR]
    python -m simulations.ablation --study optimizers [...]
    python -m simulations.ablation --study scope      [...]
    python -m simulations.ablation --study models     [... --seeds 0 1 2]
    python -m simulations.ablation --study recipes    [...]
    python -m simulations.ablation --study curve      [... --steps 15600 --checkpoints 8]
    python -m simulations.ablation --study inputs     [... --image-size 64 --learning-rate 0.002]

Each arm trains a model (the small CNN, except in ``models``: the small CNN and the
region-invariant model, clean and at the default target) from the same seed for
``--steps`` Adam/SGD/STAdam steps on (obfuscated) training images and evaluates on
``--test-images`` test images obfuscated the same way (a model trained on obfuscated images
is used on them). ``recipes`` tries, clean and obfuscated, what commutes with the defense:
``augment`` (flips, and shifts by whole regions, applied after obfuscation) and ``tta``
(test-time averaging of the softmax over ``--draws`` obfuscations), and ``pretrain``
(``--pretrain-steps`` on clean public images first: the first ``--public`` training images,
which every arm of the study then leaves out of its own training data). ``inputs`` and
``inputs-defaults`` compare the models' input normalisation (``input-norm``). Prints one
JSON line per arm and seed: final test accuracy, the mean loss of the last 50 steps, and
the loss oscillation = standard deviation of step-to-step loss differences over the last
half; with several ``--seeds``, then one line per arm with the mean and spread (sample
standard deviation) of the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common.augment import augmenter
from common.data import load_dataset
from common.defaults import default_region_size
from common.models import DEFAULT_INPUT_NORM, INPUT_NORMS, build_model
from common.training import evaluate, make_optimizer, train_steps
from common.visualmixer import DEFAULT_TARGET_VFE, VisualMixer

# study -> arms (model, optimizer, target VFE or None for clean, region scope, recipe)
STUDIES = {
    "vfe-curve": [("small-cnn", "adam", t, 1, "plain") for t in (None, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)],
    "optimizers": [("small-cnn", o, t, 1, "plain") for t in (None, DEFAULT_TARGET_VFE) for o in ("sgd", "adam", "st-adam")],
    "scope": [("small-cnn", "adam", DEFAULT_TARGET_VFE, s, "plain") for s in (1, 2, 0)],
    "models": [(m, "adam", t, 1, "plain") for m in ("small-cnn", "region-invariant") for t in (None, DEFAULT_TARGET_VFE)],
    "recipes": [("small-cnn", "adam", None, 1, r) for r in ("plain", "augment")]
    + [("small-cnn", "adam", DEFAULT_TARGET_VFE, 1, r) for r in ("plain", "augment", "tta", "augment+tta", "pretrain")],
    "curve": [(m, "adam", t, 1, "plain") for m in ("small-cnn", "region-invariant") for t in (None, DEFAULT_TARGET_VFE)],
    # The models' input normalisation (input_norm), clean and at the default target.
    "inputs": [(m, "adam", t, 1, f"norm-{n}") for m in ("small-cnn", "region-invariant") for t in (None, DEFAULT_TARGET_VFE)
               for n in INPUT_NORMS],
    # The same where each model is the default (small-cnn clean, region-invariant under VisualMixer).
    "inputs-defaults": [(m, "adam", t, 1, f"norm-{n}") for m, t in (("small-cnn", None), ("region-invariant", DEFAULT_TARGET_VFE))
                        for n in INPUT_NORMS],
}
LEARNING_RATES = {"sgd": 0.02, "adam": 1e-3, "st-adam": 1e-3}


def oscillation(losses: list[float]) -> float | None:
    tail = torch.tensor(losses[len(losses) // 2 :])
    return round(float(tail.diff().std()), 4) if len(tail) > 2 else None  # None: too few steps to tell


def run_arm(train, test, model_name, optimizer_name, target, scope, recipe, seed, args, public=None) -> dict:
    torch.manual_seed(seed)
    region = default_region_size(args.image_size)
    norm = recipe.removeprefix("norm-") if recipe.startswith("norm-") else args.input_norm
    model = build_model(model_name, train.images.shape[1], train.num_classes, args.image_size, region, norm)
    pretrain_seconds = 0.0
    if recipe == "pretrain":  # the server's own clean public images, then the clients' obfuscated ones
        start = time.perf_counter()
        train_steps(model, public.images, public.labels, make_optimizer(optimizer_name, model.parameters(),
                    LEARNING_RATES[optimizer_name]), args.pretrain_steps, args.batch_size)
        pretrain_seconds = time.perf_counter() - start
    mixer = None if target is None else VisualMixer(target, region_size=region, region_scope=scope)
    batches = mixer
    if "augment" in recipe:  # after the shuffle: flips and whole-region shifts commute with it
        generator = torch.Generator().manual_seed(seed)

        augment = augmenter("flip-shift", (region, region), generator=generator)

        def batches(x, mixer=mixer):
            return augment(mixer(x) if mixer is not None else x)
    optimizer = make_optimizer(optimizer_name, model.parameters(), LEARNING_RATES[optimizer_name])
    draws = args.draws if "tta" in recipe and mixer is not None else 1
    # Training in chunks: the test accuracy after each (the learning curve), same batches.
    chunks = max(1, args.checkpoints)
    ends = [round(args.steps * (i + 1) / chunks) for i in range(chunks)]
    losses, curve, seconds, done = [], [], 0.0, 0
    for end in ends:
        start = time.perf_counter()
        losses += train_steps(model, train.images, train.labels, optimizer, end - done, args.batch_size, batches)
        seconds += time.perf_counter() - start
        done = end
        accuracy, test_loss = evaluate(model, test.images, test.labels, mixer, draws=draws)
        curve.append([end, round(accuracy, 4)])
    return {
        "study": args.study,
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "model": model_name,
        "recipe": recipe,
        "seed": seed,
        "optimizer": optimizer_name,
        "target_vfe": target,
        "region_scope": scope if target is not None else None,
        "steps": args.steps,
        "image_size": args.image_size,
        "input_norm": norm,
        "test_accuracy": round(accuracy, 4),
        "test_loss": round(test_loss, 4),
        "final_train_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "loss_oscillation": oscillation(losses),
        "train_seconds": round(seconds, 1),
        **({"curve": curve} if chunks > 1 else {}),
        **({"pretrain_steps": args.pretrain_steps, "pretrain_seconds": round(pretrain_seconds, 1)}
           if recipe == "pretrain" else {}),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", choices=sorted(STUDIES), required=True)
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--input-norm", choices=INPUT_NORMS, default=DEFAULT_INPUT_NORM,
                        help="the models' input normalisation (the inputs studies set their own)")
    parser.add_argument("--learning-rate", type=float, default=None, help="Adam's (default: 1e-3)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--checkpoints", type=int, default=1, help="test accuracy at this many points (a curve)")
    parser.add_argument("--draws", type=int, default=4, help="recipes: obfuscations averaged at test time (tta)")
    parser.add_argument("--public", type=int, default=10000, help="recipes: clean public images set aside")
    parser.add_argument("--pretrain-steps", type=int, default=1000, help="recipes: steps on the public images")
    parser.add_argument("--seed", type=int, default=0, help="picks the test images")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="one run per seed (default: --seed)")
    args = parser.parse_args(argv)
    if args.learning_rate:
        LEARNING_RATES["adam"] = args.learning_rate
    train = load_dataset(args.dataset, "train", args.data_dir, image_size=args.image_size)
    test = load_dataset(args.dataset, "test", args.data_dir, image_size=args.image_size)
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))
    test = test.subset(pick[: args.test_images])
    public = None
    if args.study == "recipes":
        if not 0 < args.public < len(train):
            parser.error(f"--public {args.public}: must be in [1, {len(train) - 1}] for this training split")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
        public, train = train.subset(order[: args.public]), train.subset(order[args.public :])
    seeds = args.seeds or [args.seed]
    for model_name, optimizer_name, target, scope, recipe in STUDIES[args.study]:
        accuracies = []
        for seed in seeds:
            row = run_arm(train, test, model_name, optimizer_name, target, scope, recipe, seed, args, public)
            accuracies.append(row["test_accuracy"])
            print(json.dumps(row), flush=True)
        if len(seeds) > 1:
            print(json.dumps({
                "study": args.study, "model": model_name, "recipe": recipe, "optimizer": optimizer_name,
                "target_vfe": target,
                "region_scope": scope if target is not None else None, "seeds": seeds, "steps": args.steps,
                "mean_test_accuracy": round(statistics.mean(accuracies), 4),
                "spread_test_accuracy": round(statistics.stdev(accuracies), 4),
            }), flush=True)


if __name__ == "__main__":
    main()
