"""Both halves of the promise per VisualMixer setting, without Flower: the accuracy of a model
trained on obfuscated images, and what the attackers who read what no shuffle changes get.

    python -m simulations.privacy_frontier --dataset folder --data-dir DIR --out FILE.jsonl

The training split is cut in two disjoint halves: the victims' images (the model trains on
them, obfuscated) and the attacker's public images (every attacker trains on those).
Scored on ``--victims`` test images, obfuscated with the setting:

* ``test_accuracy``: a small CNN trained ``--steps`` steps on the victims' obfuscated images
  (a fresh obfuscation per batch), on obfuscated test images. A recogniser trained on
  obfuscated public images (the *obfuscation-trained* attacker) is this same experiment.
* non-adaptive: ``observed`` and ``mosaic`` labelled by a clean-trained recogniser
  (augmented, cached under ``--cache``).
* adaptive: ``statistics`` (region statistics no in-region shuffle changes, classifier
  trained on clean public images), ``statistics-obf`` (the same with the setting's region
  moves, trained on obfuscated public images), ``mosaic-trained`` (a recogniser trained on
  mosaics of public images), ``linkage`` (the original found among ``--pool`` candidates).
* reconstruction: ``inverse-net`` (the recogniser on what a U-Net trained to undo the
  setting makes of the victims' images) and its ``inverse_psnr`` (dB).
* ``floor``: global colour alone (region = the whole image), which nothing here changes.

A setting is ``none`` or ``VFE:REGION:SCOPE``, ``:mono`` appended for ``chromatic=False``.
One JSON line per setting, after a line with the recogniser's clean accuracy;
``--table FILE.jsonl`` prints such a file as a markdown table instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common.attacks import (
    cached_recogniser,
    link_originals,
    mosaic_attack,
    psnr,
    recognition_accuracy,
    train_inverse_network,
    train_mosaic_recogniser,
    train_statistics_classifier,
)
from common.attacks.metrics import as_unit
from common.attacks.registry import NON_ADAPTIVE, get_attack
from common.data import load_dataset
from common.models import build_model
from common.training import evaluate, make_optimizer, resolve_device, train_steps
from common.visualmixer import VisualMixer, visual_feature_entropy

# (target VFE, region size, region scope, chromatic); None = no defense.
SETTINGS = (
    None,
    (0.8, 8, 1, True), (0.8, 8, 2, True), (0.8, 8, 0, True),
    (0.8, 4, 1, True), (0.8, 4, 0, True),
    (0.5, 8, 1, True), (1.0, 8, 1, True), (0.8, 8, 1, False),
)


def parse_setting(text: str) -> tuple[float, int, int, bool] | None:
    """``none`` or ``VFE:REGION:SCOPE[:mono]`` (e.g. ``0.8:8:0``, ``0.8:8:1:mono``)."""
    if text == "none":
        return None
    parts = text.split(":")
    try:
        if len(parts) not in (3, 4) or parts[3:] not in ([], ["mono"]):
            raise ValueError(text)
        return float(parts[0]), int(parts[1]), int(parts[2]), len(parts) == 3
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--settings item {text!r}: expected none or VFE:REGION:SCOPE[:mono]") from err


def setting_name(setting: tuple[float, int, int, bool] | None) -> str:
    if setting is None:
        return "none"
    target, region, scope, chromatic = setting
    return f"vfe{target:g}-r{region}-scope{scope}" + ("" if chromatic else "-mono")


def measure(setting, train, public, victims, pool, recogniser, floor: float, args, mosaic_nets: dict) -> dict:
    device = resolve_device(args.device)
    target, region, scope, chromatic = (None, 8, 1, True) if setting is None else setting

    def mixer_with(seed: int | None) -> VisualMixer | None:
        return None if setting is None else VisualMixer(target, region_size=region, region_scope=scope,
                                                        chromatic=chromatic, seed=seed)

    mixer = mixer_with(args.seed)
    observed = mixer(victims.images) if mixer is not None else victims.images
    row: dict = {"setting": setting_name(setting), "target_vfe": target, "region_size": region,
                 "region_scope": scope, "chromatic": chromatic,
                 "mean_vfe": round(float(visual_feature_entropy(observed, region).mean()), 4)}

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    model = build_model("small-cnn", 3, train.num_classes).to(device)
    fresh = mixer_with(None)
    train_steps(model, train.images, train.labels, make_optimizer("adam", model.parameters(), 1e-3),
                args.steps, 64, fresh, device=device, generator=torch.Generator().manual_seed(args.seed))
    row["test_accuracy"], _ = evaluate(model.cpu(), victims.images, victims.labels, mixer)
    row["train_seconds"] = round(time.perf_counter() - start, 1)

    y = victims.labels
    row["observed"] = recognition_accuracy(recogniser, observed, y)
    row["mosaic"] = recognition_accuracy(recogniser, mosaic_attack(observed, region, chromatic), y)
    statistics = train_statistics_classifier(public.images, public.labels, train.num_classes, region_size=region,
                                             chromatic=chromatic, steps=args.statistics_steps, seed=args.seed)
    row["statistics"] = recognition_accuracy(statistics, observed, y)
    if mixer is not None:
        obfuscated_public = mixer_with(args.seed + 7)(public.images)
        adaptive = train_statistics_classifier(obfuscated_public, public.labels, train.num_classes, region_size=region,
                                               chromatic=chromatic, region_scope=scope, steps=args.statistics_steps,
                                               seed=args.seed)
        row["statistics-obf"] = recognition_accuracy(adaptive, observed, y)
        # Without the chromatic shuffle each channel's region mean survives, so that
        # attacker learns on colour mosaics; with it, on the grey ones it can read.
        if (region, chromatic) not in mosaic_nets:
            mosaic_nets[region, chromatic] = train_mosaic_recogniser(
                public.images, public.labels, train.num_classes, region, chromatic,
                steps=args.adaptive_steps, device=device, seed=args.seed)
        row["mosaic-trained"] = recognition_accuracy(mosaic_nets[region, chromatic], observed, y)
        if args.inverse_steps:
            inverse = train_inverse_network(public.images, mixer_with(args.seed + 11), steps=args.inverse_steps,
                                            device=device, seed=args.seed).cpu().eval()
            with torch.no_grad():
                rebuilt = torch.cat([inverse(as_unit(chunk)) for chunk in observed.split(250)])
            row["inverse-net"] = recognition_accuracy(recogniser, rebuilt, y)
            row["inverse_psnr"] = float(psnr(rebuilt, as_unit(victims.images)).mean())
    linked = link_originals(observed, pool, region, chromatic=chromatic, region_scope=scope)
    row["linkage"] = float((linked == torch.arange(len(y))).float().mean())
    row["floor"] = floor
    non_adaptive = max(v for k, v in row.items() if k in RANKED and k in NON_ADAPTIVE)
    adaptive_best = max(v for k, v in row.items() if k in RANKED)
    row["best_non_adaptive"], row["best_adaptive"] = non_adaptive, adaptive_best
    row["adaptive_above_floor"] = round(adaptive_best - floor, 4)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


# Attacks whose recognition rates are ranked (registry names; common/attacks/registry.py).
RANKED = tuple(get_attack(name).name for name in (
    "observed", "mosaic", "statistics", "statistics-obf", "mosaic-trained", "inverse-net"))
# Keys of frontier files written before the attacks took their registry names.
LEGACY_KEYS = {"statistics_obf": "statistics-obf", "mosaic_trained": "mosaic-trained", "inverse": "inverse-net"}

# (column header, row key); absent keys (no adaptive attack without a defense) print "-".
TABLE = (
    ("setting", "setting"), ("mean VFE", "mean_vfe"), ("test accuracy", "test_accuracy"),
    ("observed", "observed"), ("mosaic", "mosaic"), ("statistics", "statistics"),
    ("statistics, obfuscation-trained", "statistics-obf"), ("mosaic-trained", "mosaic-trained"),
    ("inverse network", "inverse-net"), ("inverse PSNR (dB)", "inverse_psnr"),
    ("best non-adaptive", "best_non_adaptive"), ("best adaptive", "best_adaptive"),
    ("best adaptive above floor", "adaptive_above_floor"), ("linkage", "linkage"),
)


def markdown_table(lines: list[dict]) -> str:
    """The rows of a frontier file (its head lines skipped) as a markdown table."""
    rows = [{LEGACY_KEYS.get(k, k): v for k, v in r.items()} for r in lines if "setting" in r]
    text = ["| " + " | ".join(h for h, _ in TABLE) + " |", "|" + "---|" * len(TABLE)]
    for row in rows:
        cells = [row.get(k, "-") for _, k in TABLE]
        text.append("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, help="JSON lines, appended")
    parser.add_argument("--table", type=Path, help="print this frontier file as a markdown table and exit")
    parser.add_argument("--cache", type=Path, default=Path("outputs/cache"), help="where the recogniser is kept")
    parser.add_argument("--settings", nargs="*", type=parse_setting, default=list(SETTINGS))
    parser.add_argument("--public", type=int, default=20000, help="attacker's images, taken from the training split")
    parser.add_argument("--victims", type=int, default=1000, help="test images every figure is scored on")
    parser.add_argument("--pool", type=int, default=1000, help="linkage candidates, the true original included")
    parser.add_argument("--steps", type=int, default=1500, help="the utility model's steps")
    parser.add_argument("--recogniser-steps", type=int, default=20000,
                        help="the clean recogniser's augmented steps (20,000: about 0.76 on CIFAR-10)")
    parser.add_argument("--adaptive-steps", type=int, default=1500)
    parser.add_argument("--statistics-steps", type=int, default=3000)
    parser.add_argument("--inverse-steps", type=int, default=1000, help="the inverse network's steps (0: not run)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.table:
        try:
            lines = [json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as err:
            parser.error(f"--table {str(args.table)!r}: {err}")
        print(markdown_table(lines))
        return 0
    if args.out is None:
        parser.error("--out is required (or --table to print a finished file)")

    train_all = load_dataset(args.dataset, "train", args.data_dir)
    test = load_dataset(args.dataset, "test", args.data_dir)
    if args.public >= len(train_all):
        parser.error(f"--public {args.public}: the training split has only {len(train_all)} images")
    order = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(args.seed))
    public, train = train_all.subset(order[: args.public]), train_all.subset(order[args.public :])
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed + 1))
    victims = test.subset(pick[: args.victims])
    pool = torch.cat([victims.images, test.images[pick[args.victims :]], public.images])[: max(args.pool, args.victims)]

    device = resolve_device(args.device)
    start = time.perf_counter()
    recogniser, reused = cached_recogniser(args.cache, public.images, public.labels, train.num_classes,
                                           steps=args.recogniser_steps, augment=True, device=device, seed=args.seed)
    floor_net = train_statistics_classifier(public.images, public.labels, train.num_classes,
                                            region_size=public.images.shape[-1], steps=args.statistics_steps, seed=args.seed)
    floor = recognition_accuracy(floor_net, victims.images, victims.labels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as handle:
        head = {"recogniser_clean": round(recognition_accuracy(recogniser, victims.images, victims.labels), 4),
                "recogniser_steps": args.recogniser_steps, "recogniser_reused": reused,
                "recogniser_seconds": round(time.perf_counter() - start, 1), "floor": round(floor, 4),
                "dataset": args.dataset, "public": args.public, "victims": args.victims, "pool": len(pool),
                "steps": args.steps, "device": str(device)}
        for line in (head,):
            print(json.dumps(line), flush=True)
            handle.write(json.dumps(line) + "\n")
        mosaic_nets: dict = {}
        for setting in args.settings:
            row = measure(setting, train, public, victims, pool, recogniser, floor, args, mosaic_nets)
            print(json.dumps(row), flush=True)
            handle.write(json.dumps(row) + "\n")
            handle.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
