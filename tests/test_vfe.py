import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.visualmixer import region_vfe, visual_feature_entropy


def smooth_images(batch: int = 2, size: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.stack([yy, xx, (yy + xx) / 2])
    return image.expand(batch, 3, size, size).contiguous()


def shuffled_in_regions(images: torch.Tensor, r: int, seed: int = 0) -> torch.Tensor:
    """Reference: a full uniform pixel permutation per (image, channel, region), by argsort."""
    b, c, h, w = images.shape
    g = torch.Generator().manual_seed(seed)
    tiles = images.view(b, c, h // r, r, w // r, r).permute(0, 1, 2, 4, 3, 5).reshape(b, c, -1, r * r)
    perm = torch.rand(tiles.shape, generator=g).argsort(-1)
    out = tiles.gather(-1, perm).view(b, c, h // r, w // r, r, r).permute(0, 1, 2, 4, 3, 5)
    return out.reshape(b, c, h, w)


def test_smooth_images_score_near_zero():
    assert visual_feature_entropy(smooth_images()).max() < 0.1


def test_random_arrangements_score_near_one(shapes_batch):
    vfe = visual_feature_entropy(shuffled_in_regions(shapes_batch, 8))
    assert abs(vfe.mean().item() - 1.0) < 0.02
    assert vfe.min() > 0.9 and vfe.max() < 1.1


def test_uint8_and_float_agree(shapes_batch):
    as_float = shapes_batch.float() / 255
    torch.testing.assert_close(
        visual_feature_entropy(shapes_batch), visual_feature_entropy(as_float), rtol=1e-4, atol=1e-5
    )


def test_invariant_to_brightness_and_contrast(shapes_batch):
    x = shapes_batch.float() / 255
    torch.testing.assert_close(
        visual_feature_entropy(x), visual_feature_entropy(0.5 * x + 0.2), rtol=1e-3, atol=1e-4
    )


def test_region_map_shape_and_single_image(shapes_batch):
    assert region_vfe(shapes_batch, 8).shape == (64, 3, 4, 4)
    assert region_vfe(shapes_batch[0], 4).shape == (1, 3, 8, 8)
    assert visual_feature_entropy(shapes_batch[0]).shape == (1,)


def test_region_vfe_matches_definition():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 4, 4)
    r = 4
    pairs = 2 * r * (r - 1)
    s = ((x[..., 1:] - x[..., :-1]) ** 2).sum() + ((x[..., 1:, :] - x[..., :-1, :]) ** 2).sum()
    expected = s / (pairs * 2 * x.var(unbiased=True))
    torch.testing.assert_close(region_vfe(x, 4).flatten()[0], expected)


def test_flat_regions_are_excluded():
    x = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    x[..., :8, :8] = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    regions = region_vfe(x, 8)
    assert torch.isnan(regions[0, :, 1:, :]).all() and torch.isnan(regions[0, :, 0, 1]).all()
    # The image VFE is the mean over the one textured region only.
    expected = regions[0, :, 0, 0].mean()
    torch.testing.assert_close(visual_feature_entropy(x, 8)[0], expected)
    # An all-flat image has nothing to scramble.
    assert visual_feature_entropy(torch.full((3, 8, 8), 7, dtype=torch.uint8)).item() == 1.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), r=st.sampled_from([2, 4, 8]))
def test_shuffle_inside_region_never_changes_variance_only_arrangement(seed, r):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=g)
    shuffled = shuffled_in_regions(x, r, seed)
    # Same multiset per region -> same per-region variance -> VFE only sees arrangement.
    tiles = lambda t: t.view(2, 3, 16 // r, r, 16 // r, r).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, -1, r * r)
    torch.testing.assert_close(tiles(x).sort(-1).values, tiles(shuffled).sort(-1).values)


@pytest.mark.parametrize(
    "images, kwargs, match",
    [
        (torch.zeros(4, 4), {}, "shape"),
        (torch.zeros(1, 2, 3, 8, 8), {}, "shape"),
        (torch.zeros(1, 2, 8, 8), {}, "channels"),
        (torch.zeros(0, 3, 8, 8), {}, "empty"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int32), {}, "dtype"),
        (torch.full((1, 3, 8, 8), float("nan")), {}, "non-finite"),
        (torch.zeros(1, 3, 8, 8), {"region_size": 3}, "power of two"),
        (torch.zeros(1, 3, 8, 8), {"region_size": 16}, "larger than the image"),
        (torch.zeros(1, 3, 12, 12), {"region_size": 8}, "not divisible"),
        ([[0.0]], {}, "torch.Tensor"),
    ],
)
def test_bad_input_names_the_problem(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        visual_feature_entropy(images, **kwargs)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("precision", ["high", "medium"])
def test_vfe_ignores_a_lowered_float32_matmul_precision(shapes_batch, device, precision):
    """Training scripts often lower float32 matmul precision (TF32 on CUDA, bfloat16 on CPUs
    that have it). VFE sums squared differences through matmuls, on integers that float32
    holds exactly at full precision; lowered, their inputs would be rounded (TF32 keeps 11
    significant bits, bfloat16 8), and the VFE a client checks and reports would move."""
    from common.visualmixer import obfuscate

    exact = visual_feature_entropy(shapes_batch)
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        lowered = visual_feature_entropy(shapes_batch.to(device)).cpu()
        result = obfuscate(shapes_batch.to(device), 0.8, seed=0)
        measured = visual_feature_entropy(result.images.cpu())
    finally:
        torch.set_float32_matmul_precision(saved)
    torch.testing.assert_close(lowered, exact, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(result.vfe.cpu(), measured, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("side, region", [(16, 4), (32, 8), (64, 16), (224, 32), (96, 16)])
def test_without_a_region_size_every_function_uses_the_apps_default(side, region):
    """One default everywhere: a quarter of the side as a power of two that divides it, as a
    run of the app at that image-size uses (common.defaults.default_region_size)."""
    from common.attacks import mosaic_attack
    from common.run_config import parse_run_config
    from common.visualmixer import VisualMixer

    images = torch.randint(0, 256, (2, 3, side, side), dtype=torch.uint8)
    assert parse_run_config({"image-size": side}).region_size == region
    torch.testing.assert_close(visual_feature_entropy(images), visual_feature_entropy(images, region))
    assert region_vfe(images).shape[-1] == side // region
    assert torch.equal(mosaic_attack(images), mosaic_attack(images, region))
    mixed = VisualMixer(0.8, seed=1)(images)
    assert torch.equal(mixed, VisualMixer(0.8, region_size=region, seed=1)(images))
