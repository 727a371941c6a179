"""Server-side augmentation of uploads: it must commute with VisualMixer, and the
`server-augment` key must reach the server's training."""

from __future__ import annotations

import pytest
import torch

import server.trainer
from common.augment import augmenter
from common.run_config import ConfigError, parse_run_config
from common.visualmixer import VisualMixer
from tests.test_flower_apps import run


def region_multisets(images: torch.Tensor, region: int) -> torch.Tensor:
    """Each region's values over all channels, sorted: what any in-region shuffle keeps."""
    b, c, h, w = images.shape
    blocks = images.reshape(b, c, h // region, region, w // region, region).permute(0, 2, 4, 1, 3, 5)
    return blocks.reshape(b, (h // region) * (w // region), -1).sort(-1).values


@pytest.mark.parametrize("kind, scope", [("flip", 1), ("flip-shift", 1), ("flip", 0), ("flip", 2)])
def test_augmenting_an_obfuscated_image_is_obfuscating_the_augmented_one(kind, scope):
    """The same flips and shifts applied to originals and to their obfuscations leave the
    same region multisets, in the same places at scope 1 and as a set when regions move
    (where only flips are allowed: a shift cuts moved regions at the edge)."""
    images = torch.randint(0, 256, (32, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    obfuscated = VisualMixer(0.8, region_size=8, region_scope=scope, seed=1)(images)
    on_originals = augmenter(kind, (8, 8), generator=torch.Generator().manual_seed(2))(images)
    on_obfuscated = augmenter(kind, (8, 8), generator=torch.Generator().manual_seed(2))(obfuscated)
    kept, moved = region_multisets(on_originals, 8), region_multisets(on_obfuscated, 8)
    if scope == 1:
        assert torch.equal(kept, moved)
    else:
        assert torch.equal(kept.sort(1).values, moved.sort(1).values)
    assert not torch.equal(on_obfuscated, obfuscated)


def test_clean_shifts_are_finer_than_a_region_and_none_is_no_transform():
    images = torch.randint(1, 256, (64, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = augmenter("flip-shift", (4, 1), generator=torch.Generator().manual_seed(1))(images)
    zero_rows = (out == 0).all(dim=(1, 3)).sum(1)  # rows of zero fill = the vertical shift
    assert zero_rows.max() <= 4 and (zero_rows % 8 != 0).any()
    assert augmenter("none", (8, 8)) is None


def test_a_bad_server_augment_names_the_key_and_the_default_is_none():
    with pytest.raises(ConfigError, match="server-augment.*'crop'"):
        parse_run_config({"server-augment": "crop"})
    # Regions moved across the image are cut at its edge unlike the original's: no commute.
    with pytest.raises(ConfigError, match="server-augment='flip-shift' with region-scope=0"):
        parse_run_config({"server-augment": "flip-shift", "region-scope": 0, "exchange": "images"})
    parse_run_config({"server-augment": "flip-shift", "region-scope": 0, "defense": "none", "exchange": "images"})
    assert parse_run_config({}).server_augment == "none"


def test_the_server_trains_on_augmented_uploads(tmp_path, monkeypatch):
    seen = []
    real = server.trainer.train_steps

    def spy(model, images, labels, optimizer, steps, batch_size, mixer=None, *args, **kwargs):
        seen.append(mixer)
        return real(model, images, labels, optimizer, steps, batch_size, mixer, *args, **kwargs)

    monkeypatch.setattr(server.trainer, "train_steps", spy)
    _, rows, summary, _ = run(tmp_path, "augmented", exchange="images",
                              **{"num-server-rounds": 1, "server-augment": "flip-shift"})
    assert summary["status"] == "completed" and len(seen) == 1 and seen[0] is not None
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    assert not torch.equal(seen[0](images), images)  # all 64 left alone: odds of about 1e-50
