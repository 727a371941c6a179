"""The region-invariant model: an in-region shuffle changes nothing it computes, it learns
obfuscated data, and it runs in every exchange like the other models."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.models import build_model, split_model
from common.shapes import generate_shapes
from common.training import evaluate, make_optimizer, predict, to_model_input, train_steps
from common.visualmixer import VisualMixer
from tests.test_adaptive_attacks import shuffle_in_regions
from tests.test_flower_apps import run


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), region=st.sampled_from([4, 8]), side=st.sampled_from([16, 32]))
def test_any_in_region_shuffle_leaves_its_output_unchanged(seed, region, side):
    torch.manual_seed(seed % 1000)
    model = build_model("region-invariant", 3, 10, side, region).eval()
    images = torch.randint(0, 256, (4, 3, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    shuffled = shuffle_in_regions(images, region, chromatic=True, seed=seed)
    with torch.no_grad():
        before, after = model(to_model_input(images)), model(to_model_input(shuffled))
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-5)
    assert not torch.equal(images, shuffled)


def test_it_sees_obfuscated_images_as_the_originals_and_learns_them():
    images, labels = generate_shapes(1400, seed=3)
    train, test = (images[:1200], labels[:1200]), (images[1200:], labels[1200:])
    mixer = VisualMixer(0.8, region_size=8, seed=0)
    torch.manual_seed(0)
    model = build_model("region-invariant", 3, 10, 32, 8)
    train_steps(model, *train, make_optimizer("adam", model.parameters(), 1e-3), 300, 32, VisualMixer(0.8, region_size=8))
    obfuscated, _ = evaluate(model, *test, mixer)
    clean, _ = evaluate(model, *test)
    assert obfuscated > 0.25  # chance is 0.1
    # Invariance: the predictions on obfuscated test images are those on the originals, up
    # to float rounding in the per-image standardisation (its sums run in another order).
    torch.testing.assert_close(predict(model, test[0], mixer=mixer), predict(model, test[0]), rtol=1e-4, atol=1e-4)
    assert abs(obfuscated - clean) <= 1 / len(test[1])


def test_region_size_sets_its_grid_and_split_learning_sends_region_features():
    model = build_model("region-invariant", 3, 10, 64, 16)
    client, _ = split_model(model, 1)
    assert client(torch.rand(2, 3, 64, 64)).shape == (2, 128, 4, 4)
    assert build_model("region-invariant", 3, 10, 64)(torch.rand(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("exchange, defense", [("images", "visualmixer"), ("activations", "visualmixer+dp-sgd"),
                                               ("weights", "dp-sgd")])
def test_it_trains_in_every_exchange_and_under_dp_sgd(tmp_path, exchange, defense):
    grid, rows, summary, folder = run(tmp_path, exchange, exchange=exchange, defense=defense, model="region-invariant")
    assert summary["status"] == "completed" and len(rows) == 2
    assert all(0 <= r["federated-accuracy"] <= 1 for r in rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_cpu_give_the_same_outputs():
    torch.manual_seed(0)
    model = build_model("region-invariant").eval()
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.cuda()(x.cuda()).cpu(), model.cpu()(x), rtol=1e-4, atol=1e-4)
