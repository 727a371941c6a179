"""The attacks that know VisualMixer: shuffle-invariant statistics (and their invariance,
over random shuffles), linkage to a candidate pool, recognisers trained on mosaics or on
obfuscated public images, and the recogniser cache. Each beats its trivial baseline on
tiny unprotected inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.attacks import (
    cached_recogniser,
    flip_and_shift,
    group_invariant,
    link_originals,
    mosaic_attack,
    recognition_accuracy,
    region_statistics,
    train_mosaic_recogniser,
    train_obfuscation_recogniser,
    train_statistics_classifier,
)
from common.shapes import generate_shapes
from common.visualmixer import VisualMixer


@pytest.fixture(scope="module")
def data():
    images, labels = generate_shapes(1200, seed=7)
    return images[:1000], labels[:1000], images[1000:], labels[1000:]  # public, victims


def shuffle_in_regions(images: torch.Tensor, region: int, chromatic: bool, seed: int) -> torch.Tensor:
    """Any in-region shuffle, written independently of VisualMixer: each region's values of
    each channel permuted at random, and with ``chromatic`` its channels permuted too."""
    g = torch.Generator().manual_seed(seed)
    out = images.clone()
    b, c, h, w = images.shape
    for i in range(b):
        for top in range(0, h, region):
            for left in range(0, w, region):
                block = images[i, :, top : top + region, left : left + region].reshape(c, -1)
                block = torch.stack([row[torch.randperm(row.numel(), generator=g)] for row in block])
                if chromatic:
                    block = block[torch.randperm(c, generator=g)]
                out[i, :, top : top + region, left : left + region] = block.reshape(c, region, region)
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), chromatic=st.booleans(), region=st.sampled_from([2, 4, 8]),
       flat=st.booleans())
def test_region_statistics_are_unchanged_by_any_shuffle_inside_regions(seed, chromatic, region, flat):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (3, 3, 16, 16), generator=g, dtype=torch.uint8)
    if flat:  # ties: channels and regions with equal means must not break the invariance
        images[:, 1] = images[:, 0]
    shuffled = shuffle_in_regions(images, region, chromatic, seed)
    before = region_statistics(images, region, chromatic)
    after = region_statistics(shuffled, region, chromatic)
    assert torch.equal(before, after)


@pytest.mark.parametrize("scope", [2, 0])
def test_grouped_statistics_are_unchanged_by_region_moves_within_the_scope(scope):
    images = torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    moved = VisualMixer(0.8, region_size=8, region_scope=scope, seed=3)(images)
    same = group_invariant(region_statistics(images, 8), scope)
    assert torch.equal(same, group_invariant(region_statistics(moved, 8), scope))
    # without the grouping the moves show: the per-position features differ
    assert not torch.equal(region_statistics(images, 8), region_statistics(moved, 8))


def test_statistics_classifier_beats_chance_and_ignores_the_shuffle(data):
    public, public_labels, victims, labels = data
    net = train_statistics_classifier(public, public_labels, 10, region_size=8, steps=300)
    clean = recognition_accuracy(net, victims, labels)
    obfuscated = recognition_accuracy(net, VisualMixer(0.8, region_size=8, seed=0)(victims), labels)
    assert clean > 0.3  # chance 0.1
    assert obfuscated == pytest.approx(clean)  # scope 1: the features are identical


@pytest.mark.parametrize("scope", [1, 0])
def test_linkage_finds_the_original_in_a_pool(data, scope):
    public, _, victims, _ = data
    pool = torch.cat([victims[:50], public[:450]])  # the true original is index i for victim i
    obfuscated = VisualMixer(0.8, region_size=8, region_scope=scope, seed=5)(victims[:50])
    found = link_originals(obfuscated, pool, region_size=8, region_scope=scope)
    assert (found == torch.arange(50)).float().mean() > 0.9  # chance 1/500


def test_mosaic_recogniser_beats_chance_on_mosaics(data):
    public, public_labels, victims, labels = data
    net = train_mosaic_recogniser(public, public_labels, 10, region_size=4, steps=250)
    assert recognition_accuracy(net, victims, labels) > 0.18  # chance 0.1 (200 images: sd 0.02)
    # it reads only the mosaic: an in-region shuffle cannot change its answer
    shuffled = VisualMixer(0.8, region_size=4, seed=2)(victims)
    assert torch.allclose(mosaic_attack(shuffled, 4), mosaic_attack(victims, 4), atol=1e-6)


def test_obfuscation_recogniser_learns_the_task_from_obfuscated_images(data):
    public, public_labels, victims, labels = data

    def obfuscate(images, seed):
        return VisualMixer(0.8, region_size=8, seed=seed)(images)

    net = train_obfuscation_recogniser(public, public_labels, 10, obfuscate, draws=2, steps=600)
    assert recognition_accuracy(net, obfuscate(victims, 0), labels) > 0.2  # chance 0.1


def test_flip_and_shift_keeps_values_and_moves_them():
    images = torch.randint(1, 256, (64, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = flip_and_shift(images, max_shift=2, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert not torch.equal(out, images)
    kept = out.flatten(1)
    assert all(set(kept[i][kept[i] > 0].tolist()) <= set(images[i].flatten().tolist()) for i in range(64))


def test_the_recogniser_cache_is_reused_only_when_everything_matches(data, tmp_path):
    public, public_labels, _, _ = data
    first, reused = cached_recogniser(tmp_path, public[:200], public_labels[:200], 10, steps=5, seed=0)
    assert not reused and len(list(tmp_path.glob("recogniser-*.pt"))) == 1
    again, reused = cached_recogniser(tmp_path, public[:200], public_labels[:200], 10, steps=5, seed=0)
    assert reused
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    _, reused = cached_recogniser(tmp_path, public[:200], public_labels[:200], 10, steps=6, seed=0)
    assert not reused  # other settings
    _, reused = cached_recogniser(tmp_path, public[1:201], public_labels[1:201], 10, steps=5, seed=0)
    assert not reused  # other images
    assert len(list(tmp_path.glob("recogniser-*.pt"))) == 3
