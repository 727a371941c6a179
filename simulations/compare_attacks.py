"""The attack stage of :mod:`simulations.compare`: every attack that fits an arm, on test images.

What each exchange mode exposes, and what is run on it:

* ``images``: the obfuscated images themselves -> recognised as they are, the mosaic
  (region means) and the learned inverse network.
* ``activations``: the cut-layer activations -> a feature-inversion decoder (white box on
  the client layers: the server's copy, which it sent to the clients).
* ``weights``: one client update from the trained global model -> Inverting Gradients;
  under an image defense its output is then fed to the mosaic and inverse network (two stage).

In the ``images`` exchange the attackers who know the defense and its settings (adaptive)
also run: a recogniser trained on mosaics of public images, classifiers on region
statistics that no in-region shuffle changes (trained on clean public images, and on
public images obfuscated alike), a recogniser trained on obfuscated public images, and
linkage of each obfuscated image to its original in a pool of candidates.

Every reconstruction is scored against the originals (PSNR, SSIM, VFE) and labelled by a
recogniser trained on clean public images (augmented, cached by its data and settings);
the classifier attacks give their own labels. The *best attack* labels the victims best
among attacks scored on at least ``MIN_RANKED_IMAGES`` images, found among the non-adaptive
attacks (``common.attacks.NON_ADAPTIVE``) and among all; the margin is the arm's test
accuracy minus its rate. The floor is what global colour alone tells (a statistics
classifier on the whole image as one region), which no in-image shuffle or move changes.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import torch
from tqdm import tqdm

from common.attacks import (
    ATTACKS,
    NON_ADAPTIVE,
    cached_recogniser,
    client_update,
    get_attack,
    invert_gradients,
    link_originals,
    match,
    mosaic_attack,
    recognition_accuracy,
    recover_labels,
    score,
    train_feature_decoder,
    train_inverse_network,
    train_mosaic_recogniser,
    train_obfuscation_recogniser,
    train_statistics_classifier,
)
from common.attacks.metrics import as_unit
from common.attacks.registry import names
from common.data import ImageSet, load_dataset
from common.models import build_model, split_model
from common.protocol import EXCHANGES
from common.training import evaluate, resolve_device

# Fewest images an attack must be scored on for its recognition rate to pick the best attack.
MIN_RANKED_IMAGES = 32


def _rows(out: Path, name: str) -> list[dict]:
    path = out / "runs" / name / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("status") == "completed"]


def _mixer(arm, seed: int | None):
    """The arm's image transform (None without an image defense); ``seed=None`` for fresh
    randomness."""
    return arm.transform(seed)


def _setting(arm) -> tuple:
    """What an attacker trained against the arm's transform depends on."""
    return (arm.transform_key(), arm.region_size, arm.region_scope)


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
    def __init__(self, preset, data: Path, public: ImageSet, seed: int, cache: Path) -> None:
        self.preset, self.public, self.seed = preset, public, seed
        self.device = resolve_device("auto")
        test = load_dataset("folder", "test", data, image_size=preset.image_size)
        # A seeded random sample: the folder is sorted by class, so its first images are not.
        pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
        self.victims = test.subset(pick[: preset.attack_victims])
        # Linkage candidates: the victims' originals first (index i for victim i), then
        # other test images, then public ones, up to the pool size.
        others = torch.cat([test.images[pick[preset.attack_victims :]], public.images])
        self.candidates = torch.cat([self.victims.images, others])[: max(preset.linkage_pool, len(self.victims))]
        self.num_classes = test.num_classes
        tqdm.write(f"[attacks] recogniser: {preset.recogniser_steps} steps on {len(public)} clean public images"
                   + (" (augmented)" if preset.recogniser_augment else ""))
        self.recogniser, reused = cached_recogniser(
            cache, public.images, public.labels, self.num_classes, steps=preset.recogniser_steps,
            augment=preset.recogniser_augment, device=self.device, seed=seed,
        )
        if reused:
            tqdm.write(f"[attacks] recogniser reused from {cache}")
        self.recogniser_clean = recognition_accuracy(self.recogniser, self.victims.images, self.victims.labels)
        tqdm.write(f"[attacks] recogniser on clean test images: {self.recogniser_clean:.3f}")
        floor = train_statistics_classifier(
            public.images, public.labels, self.num_classes, region_size=public.images.shape[-1],
            steps=preset.statistics_steps, seed=seed,
        )
        self.floor = recognition_accuracy(floor, self.victims.images, self.victims.labels)
        self._inverse: dict[tuple, torch.nn.Module] = {}
        self._decoders: dict[tuple, torch.nn.Module] = {}
        self._adaptive: dict[tuple, torch.nn.Module] = {}

    def has_inverse(self, arm) -> bool:
        """Whether the learned inverse for the arm's settings is trained already."""
        return _setting(arm) in self._inverse

    def inverse_net(self, arm) -> torch.nn.Module:
        """The learned inverse for the arm's settings, scope included (the attacker knows them)."""
        key = _setting(arm)
        if key not in self._inverse:
            self._inverse[key] = train_inverse_network(
                self.public.images, _mixer(arm, None),
                steps=self.preset.inverse_steps, device=self.device, seed=self.seed,
                width=self.preset.network_width,
            ).cpu()
        return self._inverse[key]

    def decoder(self, client_layers: torch.nn.Module, arm) -> torch.nn.Module:
        key = (_setting(arm), float(sum(p.detach().double().sum() for p in client_layers.parameters())))
        if key not in self._decoders:
            self._decoders[key] = train_feature_decoder(
                client_layers, self.public.images, _mixer(arm, None), steps=self.preset.decoder_steps,
                device=self.device, seed=self.seed, width=self.preset.network_width,
            ).cpu()
        return self._decoders[key]

    def adaptive(self, kind: str, arm) -> torch.nn.Module:
        """One adaptive attacker per kind and setting, trained on the attacker's public images."""
        key = (kind, _setting(arm))
        if key in self._adaptive:
            return self._adaptive[key]
        public, p = self.public, self.preset
        common = {"steps": p.adaptive_steps, "device": self.device, "seed": self.seed}

        def obfuscate(images: torch.Tensor, seed: int) -> torch.Tensor:
            return _mixer(arm, self.seed + seed)(images)

        if kind == "mosaic-trained":
            net = train_mosaic_recogniser(public.images, public.labels, self.num_classes, arm.region_size, **common)
        elif kind == "obfuscation-trained":
            net = train_obfuscation_recogniser(public.images, public.labels, self.num_classes, obfuscate, **common)
        else:  # statistics (clean public images) or statistics-obf (public images obfuscated alike)
            clean = kind == "statistics" or not arm.defense_plugin.transforms_images
            images = public.images if clean else obfuscate(public.images, 20_000)
            net = train_statistics_classifier(
                images, public.labels, self.num_classes, region_size=arm.region_size,
                region_scope=1 if kind == "statistics" else arm.region_scope, steps=p.statistics_steps, seed=self.seed,
            )
        self._adaptive[key] = net.cpu().eval()
        return self._adaptive[key]

    def model(self, out: Path, arm) -> torch.nn.Sequential:
        """The arm's trained global model, built as the app built it."""
        model = build_model(self.preset.model, self.victims.images.shape[1], self.num_classes,
                            image_size=self.preset.image_size, region_size=arm.region_size)
        model.load_state_dict(torch.load(out / "runs" / arm.name / "final_model.pt", weights_only=True))
        return model.eval()

    # -- per exchange ---------------------------------------------------------------------------
    def images_attacks(self, arm) -> tuple[dict[str, tuple], dict[str, tuple[float, int]], float]:
        """(reconstructions, classifier attacks' (accuracy, images), linkage rate)."""
        x, y = self.victims.images, self.victims.labels
        mixer = _mixer(arm, self.seed)
        observed = mixer(x) if mixer is not None else x
        found = {"observed": (as_unit(observed), x, y)}
        if mixer is not None:
            found["mosaic"] = (mosaic_attack(observed, arm.region_size), x, y)
            with torch.no_grad():
                found["inverse-net"] = (self.inverse_net(arm)(as_unit(observed)), x, y)
        kinds = names(output="labels") if mixer is not None else ("statistics",)
        classified = {kind: (recognition_accuracy(self.adaptive(kind, arm), observed, y), len(y)) for kind in kinds}
        pool = self.candidates
        linked = link_originals(observed, pool, arm.region_size, region_scope=arm.region_scope)
        return found, classified, float((linked == torch.arange(len(y))).float().mean())

    def activations_attacks(self, arm, model) -> dict[str, tuple]:
        x, y = self.victims.images, self.victims.labels
        client_layers, _ = split_model(model, 1)
        mixer = _mixer(arm, self.seed)
        decoder = self.decoder(client_layers, arm)
        with torch.no_grad():
            activations = client_layers(as_unit(mixer(x) if mixer is not None else x))
            return {"feature-inversion": (decoder(activations), x, y)}

    def weights_attacks(self, arm, model, sigma: float | None) -> dict[str, tuple]:
        batches = _distinct_label_batches(self.victims.labels, self.preset.inversion_batches, self.preset.inversion_batch_size)
        mixer = _mixer(arm, self.seed)
        dp = (sigma, 1.0) if arm.defense_plugin.trains_privately else None
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
            found["gi+mosaic"] = (mosaic_attack(rec, arm.region_size), x, y)
            with torch.no_grad():
                found["gi+inverse-net"] = (self.inverse_net(arm)(rec), x, y)
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
    stage = AttackStage(preset, data, public, seed, out / "cache")
    for arm in arms:
        reads_images = ATTACKS["inverse-net"].reads == arm.exchange or ATTACKS["gi+inverse-net"].reads == arm.exchange
        if arm.defense_plugin.transforms_images and reads_images and not stage.has_inverse(arm):
            tqdm.write(f"[attacks] inverse network for {arm.setting}: {preset.inverse_steps} steps")
            stage.inverse_net(arm)  # before the first run ends: nothing else to do yet
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
        model = stage.model(out, arm)
        classified: dict[str, tuple[float, int]] = {}
        if not EXCHANGES[arm.exchange].server_holds_model:
            # The server holds only the top: its accuracy is the clients' federated evaluation.
            row["test_accuracy"], row["accuracy_source"] = last.get("federated-accuracy"), "federated held-out"
            found = stage.activations_attacks(arm, model)
        else:
            row["test_accuracy"], _ = evaluate(model, stage.victims.images, stage.victims.labels, _mixer(arm, seed + 1))
            row["accuracy_source"] = "attack test images"
            if arm.exchange == "images":
                found, classified, row["linkage"] = stage.images_attacks(arm)
            else:
                found = stage.weights_attacks(arm, model, last.get("noise-multiplier-min"))
        rates: dict[str, tuple[float, int]] = dict(classified)
        for attack in [*found, *classified]:
            get_attack(attack)  # every result column is a registered attack's name
        for attack, (rec, originals, labels) in found.items():
            scores = score(rec, originals, arm.region_size)
            rates[attack] = (recognition_accuracy(stage.recogniser, rec, labels), len(labels))
            row.update({f"{attack}_psnr": scores["psnr"], f"{attack}_ssim": scores["ssim"], f"{attack}_vfe": scores["vfe"]})
        for attack, (accuracy, count) in rates.items():
            row[f"{attack}_recognition"], row[f"{attack}_images"] = accuracy, count
        for prefix, allowed in (("", NON_ADAPTIVE), ("adaptive_", None)):
            ranked = {a: r for a, (r, n) in rates.items() if n >= MIN_RANKED_IMAGES and (allowed is None or a in allowed)}
            if ranked:
                best = max(ranked, key=ranked.get)
                row[f"best_{prefix}attack"], row[f"best_{prefix}attack_recognition"] = best, ranked[best]
                row[f"best_{prefix}attack_psnr"] = row.get(f"{best}_psnr")
                row[f"{prefix}margin"] = row["test_accuracy"] - ranked[best]
        ranked = [f"{label} {row[f'best_{prefix}attack']} {row[f'best_{prefix}attack_recognition']:.3f}"
                  for label, prefix in (("best non-adaptive", ""), ("best adaptive", "adaptive_"))
                  if f"best_{prefix}attack" in row]
        tqdm.write(f"[attacks] {arm.name}: test accuracy {row['test_accuracy']:.3f}, "
                   + (", ".join(ranked) or f"no attack scored on {MIN_RANKED_IMAGES}+ images, no margin"))
        first = next(iter(found.values()))
        gallery[arm.name] = [("original", as_unit(first[1][:1]))] + [(k, v[0][:1]) for k, v in found.items()]
        rows.append(row)
    for row in rows:  # accuracy loss against `none` in the same exchange mode
        base = next((r for r in rows if r["exchange"] == row["exchange"] and r["defense"] == "none"), None)
        if base and base.get("test_accuracy") is not None and row.get("test_accuracy") is not None:
            row["accuracy_loss"] = base["test_accuracy"] - row["test_accuracy"]
    return {
        "rows": rows, "curves": curves, "gallery": gallery,
        "recogniser_clean": stage.recogniser_clean, "floor": stage.floor, "victims": len(stage.victims),
        "candidates": len(stage.candidates), "num_classes": stage.num_classes,
    }
