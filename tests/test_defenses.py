"""The defense plug-ins (common/defenses): the registry, each defense's transform and
guard, and every registered defense in every exchange it applies to, through the real
ClientApp and ServerApp in-process."""

from __future__ import annotations

import re

import pytest
import torch

from common.defenses import DEFENSES, Composite, get_defense
from common.defenses.blur import blur
from common.defenses.pixelate import pixelate
from common.protocol import EXCHANGES, MESSAGES, expected_metrics
from common.run_config import ConfigError, parse_run_config
from tests.test_flower_apps import run

APPLICABLE = [(d, x) for d in DEFENSES for x in EXCHANGES if x not in DEFENSES[d].refused_exchanges]


@pytest.mark.parametrize("defense, exchange", APPLICABLE)
def test_every_defense_runs_in_every_exchange_it_applies_to(tmp_path, defense, exchange):
    grid, rows, summary, _ = run(tmp_path, f"{defense}-{exchange}", exchange=exchange, defense=defense)
    assert summary["status"] == "completed", summary
    assert all(r["replies"] == 2 and r["rejected"] == 0 for r in rows), rows
    if DEFENSES[defense].transforms_images:
        assert all(r["obfuscation-seconds"] > 0 for r in rows)
    if DEFENSES[defense].trains_privately:
        assert all(r["epsilon-max"] > 0 for r in rows)


@pytest.mark.parametrize("defense", ["dp-sgd", "visualmixer+dp-sgd"])
def test_a_defense_refuses_the_exchanges_it_cannot_protect(defense):
    with pytest.raises(ConfigError, match=re.escape(f"defense='{defense}' with exchange='images' is refused")):
        parse_run_config({"defense": defense, "exchange": "images"})


def test_the_registry_names_each_defense_once_and_composes_the_pair():
    assert list(DEFENSES) == ["none", "visualmixer", "dp-sgd", "visualmixer+dp-sgd", "pixelate", "blur", "dp-pix"]
    pair = DEFENSES["visualmixer+dp-sgd"]
    assert isinstance(pair, Composite) and [p.name for p in pair.parts] == ["visualmixer", "dp-sgd"]
    assert pair.transforms_images and pair.trains_privately
    with pytest.raises(KeyError, match="not one of: none, visualmixer"):
        get_defense("mosaic")
    with pytest.raises(ValueError, match="at most one image transform"):
        Composite(DEFENSES["pixelate"], DEFENSES["blur"])


def test_reply_metrics_follow_the_protocol_and_the_defense():
    config = parse_run_config({"defense": "visualmixer+dp-sgd", "exchange": "weights"})
    pair = config.active_defense
    assert expected_metrics("train", pair, {}) == {
        "num-examples", "train-loss", "vfe", "obfuscation-seconds", "obfuscation-retries",
        "epsilon", "dp-steps", "noise-multiplier",
    }
    spent = {"dp-budget-spent": 1}
    assert expected_metrics("train", pair, spent) == {"num-examples", "epsilon", "dp-steps", "noise-multiplier",
                                                      "dp-budget-spent"}
    # Only training replies may say they trained nothing.
    assert "eval-accuracy" in expected_metrics("evaluate", pair, spent)
    assert expected_metrics("query.images", DEFENSES["blur"], {}) == {"num-examples", "obfuscation-seconds"}
    assert set(MESSAGES) == {"train", "query.images", "query.activations", "train.apply_gradients", "evaluate"}


def test_pixelate_sets_each_region_to_its_mean_and_its_guard_refuses_anything_else(shapes_batch):
    config = parse_run_config({"defense": "pixelate", "exchange": "images"})
    r = config.region_size
    out = pixelate(shapes_batch, r)
    assert out.dtype == torch.uint8 and out.shape == shapes_batch.shape
    means = torch.nn.functional.avg_pool2d(shapes_batch.float(), r).round()
    assert torch.equal(out[:, :, ::r, ::r].float(), means)
    assert torch.equal(pixelate(out, r), out)  # idempotent
    guard = config.active_defense.guard
    assert guard(out, config) == [None] * len(out)
    reasons = guard(shapes_batch, config)
    assert all(reason is not None and "not flat" in reason for reason in reasons)


def test_blur_smooths_deterministically_and_names_its_key_when_set_wrong(shapes_batch):
    config = parse_run_config({"defense": "blur", "exchange": "images", "blur-sigma": 2.0})
    transform = config.active_defense.image_transform(config)
    out = transform(shapes_batch)
    assert out.dtype == torch.uint8 and out.shape == shapes_batch.shape
    assert torch.equal(out, blur(shapes_batch, 2.0))
    edges = lambda x: (x.float().diff(dim=-1).abs().mean())  # noqa: E731
    assert edges(out) < 0.6 * edges(shapes_batch)
    assert transform.reply_metrics()["obfuscation-seconds"] > 0
    assert blur(shapes_batch[:, :, :6, :6], 10.0).shape == (len(shapes_batch), 3, 6, 6)  # kernel fits the image
    for bad in (0, -1, "2", 100):
        with pytest.raises(ConfigError, match=f"blur-sigma={bad!r}"):
            parse_run_config({"defense": "blur", "blur-sigma": bad})


def test_a_defenses_own_keys_count_as_learning_keys_only_when_it_is_in_use():
    assert "blur-sigma" in parse_run_config({"defense": "blur"}).learning_keys()
    vm = parse_run_config({"defense": "visualmixer"})
    assert "blur-sigma" not in vm.learning_keys() and vm.to_dict()["blur-sigma"] == 1.5
    assert vm.learning_hash() == parse_run_config({"defense": "visualmixer", "blur-sigma": 3.0}).learning_hash()


def test_the_console_api_describes_each_defense():
    from fastapi.testclient import TestClient

    from server.console.app import create_app

    client = TestClient(create_app(__import__("pathlib").Path("/nonexistent")))
    described = {d["name"]: d for d in client.get("/api/defenses").json()["defenses"]}
    assert set(described) == set(DEFENSES)
    assert [c["id"] for c in described["visualmixer+dp-sgd"]["charts"]] == ["chart-vfe", "chart-obfuscation",
                                                                         "chart-epsilon"]
    assert described["blur"]["keys"] == ["blur-sigma"]


def test_dp_pix_adds_laplace_noise_of_the_published_scale_and_is_reproducible_under_a_seed():
    """Fan (2018): cell mean + Laplace(255 m / (b^2 epsilon)). On mid-grey cells (no clamping at
    this scale) the noise's mean absolute value is the scale and its median is 0."""
    from common.defenses.dp_pix import dp_pixelate, laplace_scale

    images = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    b, epsilon, m = 8, 4.0, 16
    scale = laplace_scale(b, epsilon, m)
    assert scale == pytest.approx(255 * 16 / (64 * 4))  # 15.9
    generator = torch.Generator().manual_seed(0)
    out = dp_pixelate(images, b, epsilon, m, generator)
    cells = out[:, :, ::b, ::b].float() - 128  # 64 x 3 x 4 x 4 = 3072 draws
    assert bool((out.unfold(2, b, b).unfold(3, b, b).flatten(-2).float().std(-1) == 0).all())  # every cell flat
    assert cells.abs().mean().item() == pytest.approx(scale, rel=0.06)
    assert abs(cells.median().item()) <= 1.0
    assert (cells.abs() > 3 * scale).float().mean().item() == pytest.approx(torch.exp(torch.tensor(-3.0)).item(), abs=0.02)
    config = parse_run_config({"defense": "dp-pix", "exchange": "images", "dp-pix-epsilon": 4.0})
    first = config.active_defense.image_transform(config, 7)(images[:4])
    assert torch.equal(first, config.active_defense.image_transform(config, 7)(images[:4]))
    assert not torch.equal(first, config.active_defense.image_transform(config, 8)(images[:4]))
    assert config.active_defense.guard(first, config) == [None] * 4
    for key, bad in (("dp-pix-epsilon", 0), ("dp-pix-m", 0.5)):
        with pytest.raises(ConfigError, match=f"{key}={bad!r}"):
            parse_run_config({"defense": "dp-pix", key: bad})
