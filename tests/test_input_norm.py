"""Input standardisation (``input-norm``): it commutes with every VisualMixer shuffle, it
adds nothing to the state dict, and the key is checked."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.models import build_model, standardize_images
from common.run_config import ConfigError, parse_run_config
from common.shapes import generate_shapes
from common.training import to_model_input
from common.visualmixer import VisualMixer


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), size=st.sampled_from([8, 16, 32]), channels=st.sampled_from([1, 3]))
def test_standardising_commutes_with_any_permutation_of_an_images_values(seed, size, channels):
    """Every VisualMixer shuffle (in-region, chromatic, region moves) permutes an image's
    values: standardise(P x) = P standardise(x) for any per-image permutation P."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, channels, size, size, generator=g) ** 2
    perm = torch.stack([torch.randperm(channels * size * size, generator=g) for _ in range(3)])
    def permute(t):
        return t.flatten(1).gather(1, perm).view_as(t)
    torch.testing.assert_close(standardize_images(permute(x)), permute(standardize_images(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chromatic", [True, False])
@pytest.mark.parametrize("scope", [1, 2, 0])
def test_visualmixers_output_standardises_as_its_input(chromatic, scope):
    images, _ = generate_shapes(16, seed=4)
    mixed = VisualMixer(0.8, region_size=8, chromatic=chromatic, region_scope=scope, seed=1)(images)
    x, y = to_model_input(images), to_model_input(mixed)
    # Same statistics, so the same affine map: standardise(mixed) is mixed under x's map.
    flat = x.flatten(1)
    expected = (y - flat.mean(1).view(-1, 1, 1, 1)) / (flat.std(1, correction=0).view(-1, 1, 1, 1) + 1e-2)
    torch.testing.assert_close(standardize_images(y), expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(images, mixed)


def test_per_channel_statistics_would_not_commute_with_the_chromatic_shuffle():
    """Why one statistic is shared by all channels: a chromatic shuffle moves values
    between channels, so each channel's own mean changes."""
    images, _ = generate_shapes(16, seed=4)
    mixed = VisualMixer(0.8, region_size=8, chromatic=True, seed=1)(images)
    before, after = to_model_input(images).mean((2, 3)), to_model_input(mixed).mean((2, 3))
    assert (before - after).abs().max() > 0.01


def test_a_flat_image_maps_to_zeros():
    out = standardize_images(torch.full((2, 3, 8, 8), 0.7))
    assert out.abs().max() < 1e-4


@pytest.mark.parametrize("name", ["small-cnn", "resnet18-gn", "region-invariant"])
def test_the_norm_adds_no_parameter_and_keeps_the_state_dict_names(name):
    with_norm, without = build_model(name, input_norm="image"), build_model(name, input_norm="none")
    assert list(with_norm.state_dict()) == list(without.state_dict())
    without.load_state_dict(with_norm.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(with_norm(x), without(standardize_images(x)), atol=1e-5)


def test_the_input_norm_key_is_checked():
    assert parse_run_config({}).input_norm == "image"
    assert parse_run_config({"input-norm": "none"}).input_norm == "none"
    with pytest.raises(ConfigError, match="input-norm='channel'"):
        parse_run_config({"input-norm": "channel"})
    with pytest.raises(ValueError, match="input-norm"):
        build_model("small-cnn", input_norm="channel")
