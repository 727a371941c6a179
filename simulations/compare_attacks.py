"""The attack stage of :mod:`simulations.compare`: every attack that fits an arm, on test images.

What each exchange mode exposes, and what is run on it:

* ``images``: the obfuscated images themselves -> recognised as they are, the mosaic
  (region means) and the learned inverse network.
* ``activations``: the cut-layer activations -> a feature-inversion decoder (white box on
  the client layers: the server's copy, which it sent to the clients).
* ``weights``: one client update from the trained global model -> Inverting Gradients;
  for VisualMixer its output is then fed to the mosaic and inverse network (two stage).

Every reconstruction is scored against the originals (PSNR, SSIM, VFE) and labelled by a
recogniser trained on clean public images. The *best attack* is the one whose output the
recogniser labels best, among attacks scored on at least ``MIN_RANKED_IMAGES`` images (a
rate over four gradient-inversion images moves in steps of 0.25); the margin is the arm's
test accuracy minus that, and is left empty when no attack qualifies.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import torch
from tqdm import tqdm

from common.attacks import (
    client_update,
    invert_gradients,
    match,
    mosaic_attack,
    recognition_accuracy,
    recover_labels,
    score,
    train_feature_decoder,
    train_inverse_network,
    train_recogniser,
)
from common.attacks.metrics import as_unit
from common.data import ImageSet, load_dataset
from common.models import build_model, split_model
from common.training import evaluate, resolve_device
from common.visualmixer import VisualMixer

REGION_SIZE = 8
# Fewest images an attack must be scored on for its recognition rate to pick the best attack.
MIN_RANKED_IMAGES = 32


def _rows(out: Path, name: str) -> list[dict]:
    path = out / "runs" / name / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("status") == "completed"]


def _mixer(target: float | None, seed: int):
    return None if target is None else VisualMixer(target, region_size=REGION_SIZE, seed=seed)


def _distinct_label_batches(labels: torch.Tensor, count: int, size: int) -> list[torch.Tensor]:
    """``count`` batches of ``size`` indices whose labels are distinct (the iDLG setting)."""
    batches, used = [], set()
    for _ in range(count):
        batch, seen = [], set()
        for i, y in enumerate(labels.tolist()):
            if i not in used and y not in seen:
                batch.append(i)
                seen.add(y)
                if len(batch) == size:
                    break
        used.update(batch)
        batches.append(torch.tensor(batch))
    return batches


class AttackStage:
    def __init__(self, preset, data: Path, public: ImageSet, seed: int) -> None:
        self.preset, self.public, self.seed = preset, public, seed
        self.device = resolve_device("auto")
        test = load_dataset("folder", "test", data)
        # A seeded random sample: the folder is sorted by class, so its first images are not.
        pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
        self.victims = test.subset(pick[: preset.attack_victims])
        self.num_classes = test.num_classes
        tqdm.write(f"[attacks] recogniser: {preset.recogniser_steps} steps on {len(public)} clean public images")
        self.recogniser = train_recogniser(
            public.images, public.labels, self.num_classes, steps=preset.recogniser_steps, device=self.device, seed=seed
        ).cpu()
        self.recogniser_clean = recognition_accuracy(self.recogniser, self.victims.images, self.victims.labels)
        self._inverse: dict[float, torch.nn.Module] = {}
        self._decoders: dict[tuple, torch.nn.Module] = {}

    def inverse_net(self, target: float) -> torch.nn.Module:
        if target not in self._inverse:
            self._inverse[target] = train_inverse_network(
                self.public.images, VisualMixer(target, region_size=REGION_SIZE),
                steps=self.preset.inverse_steps, device=self.device, seed=self.seed,
                width=self.preset.network_width,
            ).cpu()
        return self._inverse[target]

    def decoder(self, client_layers: torch.nn.Module, target: float | None) -> torch.nn.Module:
        key = (target, float(sum(p.detach().double().sum() for p in client_layers.parameters())))
        if key not in self._decoders:
            mixer = None if target is None else VisualMixer(target, region_size=REGION_SIZE)
            self._decoders[key] = train_feature_decoder(
                client_layers, self.public.images, mixer, steps=self.preset.decoder_steps,
                device=self.device, seed=self.seed, width=self.preset.network_width,
            ).cpu()
        return self._decoders[key]

    def model(self, out: Path, name: str) -> torch.nn.Sequential:
        model = build_model("small-cnn", self.victims.images.shape[1], self.num_classes)
        model.load_state_dict(torch.load(out / "runs" / name / "final_model.pt", weights_only=True))
        return model.eval()

    # -- per exchange ---------------------------------------------------------------------------
    def images_attacks(self, arm) -> dict[str, tuple]:
        x, y = self.victims.images, self.victims.labels
        mixer = _mixer(arm.target_vfe, self.seed)
        observed = mixer(x) if mixer is not None else x
        found = {"observed": (as_unit(observed), x, y)}
        if mixer is not None:
            found["mosaic"] = (mosaic_attack(observed, REGION_SIZE), x, y)
            with torch.no_grad():
                found["inverse-net"] = (self.inverse_net(arm.target_vfe)(as_unit(observed)), x, y)
        return found

    def activations_attacks(self, arm, model) -> dict[str, tuple]:
        x, y = self.victims.images, self.victims.labels
        client_layers, _ = split_model(model, 1)
        mixer = _mixer(arm.target_vfe, self.seed)
        decoder = self.decoder(client_layers, arm.target_vfe)
        with torch.no_grad():
            activations = client_layers(as_unit(mixer(x) if mixer is not None else x))
            return {"feature-inversion": (decoder(activations), x, y)}

    def weights_attacks(self, arm, model, sigma: float | None) -> dict[str, tuple]:
        batches = _distinct_label_batches(self.victims.labels, self.preset.inversion_batches, self.preset.inversion_batch_size)
        mixer = _mixer(arm.target_vfe, self.seed)
        dp = None if arm.epsilon is None else (sigma, 1.0)
        recs, xs, ys = [], [], []
        for index in batches:
            x, y = self.victims.images[index], self.victims.labels[index]
            update = client_update(model, x, y, mixer=mixer, dp=dp)
            labels = recover_labels(update, len(y))
            rec = invert_gradients(model, update, labels, tuple(x.shape[1:]), steps=self.preset.inversion_steps, seed=self.seed)
            recs.append(match(rec, as_unit(x)))
            xs.append(x)
            ys.append(y)
        rec, x, y = torch.cat(recs), torch.cat(xs), torch.cat(ys)
        found = {"gradient-inversion": (rec, x, y)}
        if mixer is not None:  # two stage: decode the recovered (obfuscated) batch
            found["gi+mosaic"] = (mosaic_attack(rec, REGION_SIZE), x, y)
            with torch.no_grad():
                found["gi+inverse-net"] = (self.inverse_net(arm.target_vfe)(rec), x, y)
        return found


def attack_worker(arms, preset, data: Path, public: ImageSet, out: Path, seed: int, overlap: bool = True) -> None:
    """The attack stage as its own process: waits for each arm's status file (written by
    :mod:`simulations.compare` when the arm's run ends) and saves everything to attacks.pt."""
    threads = torch.get_num_threads()
    if overlap:
        torch.set_num_threads(1)  # the other core runs flwr
    parent = multiprocessing.parent_process()

    def status_of(name: str) -> str:
        path = out / "status" / name
        while not path.exists():
            if parent is not None and not parent.is_alive():
                raise SystemExit("simulations.compare stopped; the attack stage stops too")
            time.sleep(1)
        if len(list((out / "status").iterdir())) == len(arms):
            torch.set_num_threads(threads)  # training is over: every core is ours
        return path.read_text()

    results = attack_all(arms, status_of, preset, data, public, out, seed)
    torch.save(results, out / "attacks.pt")


def attack_all(arms, status_of, preset, data: Path, public: ImageSet, out: Path, seed: int) -> dict:
    """One result row per arm, per-round accuracy curves, and gallery images.

    ``status_of(arm name)`` returns the arm's training status (it may block until known).
    """
    stage = AttackStage(preset, data, public, seed)
    for target in sorted({a.target_vfe for a in arms if a.target_vfe is not None and a.exchange != "activations"}):
        tqdm.write(f"[attacks] inverse network for target VFE {target:g}: {preset.inverse_steps} steps")
        stage.inverse_net(target)  # before the first run ends: nothing else to do yet
    rows, curves, gallery = [], {}, {}
    for arm in arms:
        status = status_of(arm.name)
        history = _rows(out, arm.name)
        row = {
            "arm": arm.name, "exchange": arm.exchange, "defense": arm.defense, "setting": arm.setting,
            "status": status, "epsilon": None, "mean_vfe": None,
        }
        curves[arm.name] = [r.get("central-accuracy", r.get("federated-accuracy")) for r in history]
        if row["status"] != "completed" or not history:
            rows.append(row)
            continue
        last = history[-1]
        row["epsilon"] = last.get("epsilon-max")
        vfes = [r["vfe-sent"] for r in history if "vfe-sent" in r]
        row["mean_vfe"] = sum(vfes) / len(vfes) if vfes else None
        row["seconds_per_round"] = sum(r["seconds"] for r in history) / len(history)
        row["bytes_per_round"] = sum(r["bytes-up"] + r["bytes-down"] for r in history) / len(history)
        model = stage.model(out, arm.name)
        if arm.exchange == "activations":
            # The server holds only the top: its accuracy is the clients' federated evaluation.
            row["test_accuracy"], row["accuracy_source"] = last.get("federated-accuracy"), "federated held-out"
            found = stage.activations_attacks(arm, model)
        else:
            mixer = _mixer(arm.target_vfe, seed + 1)
            row["test_accuracy"], _ = evaluate(model, stage.victims.images, stage.victims.labels, mixer)
            row["accuracy_source"] = "attack test images"
            if arm.exchange == "images":
                found = stage.images_attacks(arm)
            else:
                found = stage.weights_attacks(arm, model, last.get("noise-multiplier-min"))
        best = None
        for attack, (rec, originals, labels) in found.items():
            scores = score(rec, originals, REGION_SIZE)
            accuracy = recognition_accuracy(stage.recogniser, rec, labels)
            row.update({f"{attack}_psnr": scores["psnr"], f"{attack}_ssim": scores["ssim"],
                        f"{attack}_vfe": scores["vfe"], f"{attack}_recognition": accuracy,
                        f"{attack}_images": len(labels)})
            if len(labels) < MIN_RANKED_IMAGES:
                continue  # a recognition rate over a handful of images cannot rank attacks
            if best is None or accuracy > row["best_attack_recognition"]:
                best = attack
                row["best_attack"], row["best_attack_recognition"] = attack, accuracy
                row["best_attack_psnr"] = scores["psnr"]
        if best is not None:
            row["margin"] = row["test_accuracy"] - row["best_attack_recognition"]
        tqdm.write(
            f"[attacks] {arm.name}: test accuracy {row['test_accuracy']:.3f}, "
            + (f"best attack {best} recognised {row['best_attack_recognition']:.3f}, margin {row['margin']:+.3f}"
               if best else f"no attack scored on {MIN_RANKED_IMAGES}+ images, no margin")
        )
        first = next(iter(found.values()))
        gallery[arm.name] = [("original", as_unit(first[1][:1]))] + [(k, v[0][:1]) for k, v in found.items()]
        rows.append(row)
    for row in rows:  # accuracy loss against `none` in the same exchange mode
        base = next((r for r in rows if r["exchange"] == row["exchange"] and r["defense"] == "none"), None)
        if base and base.get("test_accuracy") is not None and row.get("test_accuracy") is not None:
            row["accuracy_loss"] = base["test_accuracy"] - row["test_accuracy"]
    return {
        "rows": rows, "curves": curves, "gallery": gallery,
        "recogniser_clean": stage.recogniser_clean, "victims": len(stage.victims),
        "num_classes": stage.num_classes,
    }
