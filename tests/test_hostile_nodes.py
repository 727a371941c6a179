"""One hostile node of three cannot wreck a run: well-formed but harmful replies are
rejected or counted fairly, with a reason in events.jsonl (in process; the same
payloads go through real `flwr run` simulations in test_hostile_simulation.py)."""

from __future__ import annotations

import json

import pytest
import torch

from common.defenses.visualmixer import guard_failures
from common.shapes import generate_shapes
from common.visualmixer import VisualMixer
from server.robustness import above_bound, fair_counts, lower_median, update_norm
from tests.hostile_client import tamper, tampered_images
from tests.test_flower_apps import run

ROUNDS = {"num-server-rounds": 2, "local-steps": 10}


def hostile(*modes):
    return {1: lambda msg, reply: tamper(msg, reply, set(modes))}


def events(folder):
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def test_the_bounds_arithmetic():
    assert lower_median([3.0, 1.0, 1000.0]) == 3.0 and lower_median([1.0, 1000.0]) == 1.0
    reference = {"w": torch.zeros(4), "step": torch.tensor(3)}
    state = {"w": torch.tensor([3.0, 4.0, 0.0, 0.0]), "step": torch.tensor(3)}
    assert update_norm(state, reference) == pytest.approx(5.0)
    assert above_bound([1.0, 1.1, 3.4], 3.0) == (1.1, [False, False, True])
    assert above_bound([1.0, 1000.0], 3.0) == (1.0, [False, True]) and above_bound([1.0, 9.0], 0) == (1.0, [False, False])
    assert above_bound([0.0, 2.0], 3.0) == (0.0, [False, False])  # an unchanged model is no yardstick
    assert fair_counts([2250, 2250, 10_000], 2.0) == [2250, 2250, 4500]
    assert fair_counts([2250, 10_000], 2.0) == [2250, 4500] and fair_counts([5, 9], 0) == [5, 9]


def test_weights_scaled_by_1000_are_rejected_against_the_rounds_median(tmp_path):
    _, honest_rows, _, honest_dir = run(tmp_path, "honest", num_nodes=3, **ROUNDS)
    _, rows, summary, folder = run(tmp_path, "scaled", num_nodes=3, tamper=hostile("scale-weights"), **ROUNDS)
    assert summary["status"] == "completed" and all(r["updates-rejected"] == 1 and r["rejected"] == 1 for r in rows)
    rejected = [e for e in events(folder) if e["outcome"] == "rejected"]
    assert len(rejected) == 2 and all(e["node"] == "1" and "(update-bound)" in e["reason"] for e in rejected)
    largest = max(float(v.abs().max()) for v in torch.load(folder / "final_model.pt").values())
    honest_largest = max(float(v.abs().max()) for v in torch.load(honest_dir / "final_model.pt").values())
    assert largest < 2 * honest_largest  # without the bound: about 1000x
    assert all(r["update-norm-max"] > 100 * r["update-norm-median"] for r in rows)
    assert all(r["update-norm-max"] < 3 * r["update-norm-median"] and r["updates-rejected"] == 0 for r in honest_rows)


def test_an_inflated_training_count_is_counted_as_a_fair_share(tmp_path):
    _, rows, _, folder = run(tmp_path, "claims", num_nodes=3, tamper=hostile("claim-examples"), **ROUNDS)
    clamped = [e for e in events(folder) if e["outcome"] == "clamped"]
    assert len(clamped) == 2 and all("num-examples=10000 counted as" in e["reason"] for e in clamped)


def test_a_lying_evaluation_is_rejected_and_cannot_set_the_federated_accuracy(tmp_path):
    _, rows, _, folder = run(tmp_path, "liar", num_nodes=3, tamper=hostile("lie-evaluation"), **ROUNDS)
    rejected = [e for e in events(folder) if e["outcome"] == "rejected" and e["what"] == "evaluate"]
    assert len(rejected) == 2 and all("eval-samples=40" in e["reason"] for e in rejected)
    assert all(r["federated-nodes"] == 2 and r["federated-accuracy"] < 1.0 for r in rows)


def test_a_lie_within_the_asked_count_weighs_no_more_than_a_fair_share(tmp_path):
    """Claiming accuracy 1.0 on exactly the eval-samples asked for is not detectable, but
    it is one node's share of the average."""
    def liar(msg, reply):
        if msg.metadata.message_type != "evaluate":
            return reply
        from tests.hostile_client import _reply

        return _reply(msg, None, {**dict(reply.content["metrics"]), "eval-accuracy": 1.0, "eval-loss": 0.0}, reply)

    _, rows, _, _ = run(tmp_path, "share", num_nodes=3, tamper={1: liar}, **ROUNDS)
    assert all(r["federated-accuracy"] < 0.5 + 1 / 3 for r in rows)


def test_activations_scaled_by_1000_are_rejected(tmp_path):
    _, rows, summary, folder = run(tmp_path, "acts", num_nodes=3, tamper=hostile("scale-activations"),
                                   exchange="activations", **ROUNDS)
    assert summary["status"] == "completed" and all(r["rejected"] == 1 for r in rows)
    rejected = [e for e in events(folder) if e["outcome"] == "rejected"]
    assert len(rejected) == 2 and all("(activation-bound)" in e["reason"] for e in rejected)
    assert all(r["train-loss"] < 5 for r in rows)  # the server trained on the honest two


@pytest.mark.parametrize("mode", ["blue-checkerboard", "checker-noise"])
def test_the_guard_rejects_originals_dressed_as_shuffles(tmp_path, mode):
    images, _ = tampered_images(mode, 64, 32, seed=99)
    failing = [r for r in guard_failures(torch.from_numpy(images), 8, 0.75) if r is not None]
    assert len(failing) >= (64 if mode == "blue-checkerboard" else 60)
    _, rows, _, folder = run(tmp_path, mode, num_nodes=3, tamper=hostile(mode), exchange="images", **ROUNDS)
    # Of the hostile node's 32 uploads a round, none or nearly none is kept: the reply is
    # rejected whole, or its failing images are dropped before training and samples.png.
    for row in rows:
        assert (row["rejected"] == 1 and row["vfe-guard-dropped"] == 0) or row["vfe-guard-dropped"] >= 28, row
    reasons = [e["reason"] for e in events(folder) if e["outcome"] == "rejected"]
    assert all("privacy guard" in reason for reason in reasons)


def test_the_guard_passes_every_honest_obfuscation():
    images, _ = generate_shapes(256, seed=5)
    for region, target, chromatic in ((8, 0.8, True), (8, 0.8, False), (4, 1.0, True), (16, 0.8, True)):
        resized = torch.nn.functional.interpolate(images.float(), size=64).to(torch.uint8) if region == 16 else images
        mixed = VisualMixer(target, region_size=region, chromatic=chromatic, seed=2)(resized)
        assert guard_failures(mixed, region, target - 0.05) == [None] * 256, (region, target, chromatic)
