"""A run that is not learning says so: once, in the log, the round's row, summary.json and
the console."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from common.shapes import generate_shapes
from server.plateau import plateau_warning
from tests.test_flower_apps import run


def test_the_warning_needs_every_recent_loss_near_chance():
    chance = math.log(4)
    assert plateau_warning([1.387, 1.386, 1.385], 4, 3, 0.02).startswith("not learning")
    assert plateau_warning([1.39, 1.0, 1.385], 4, 3, 0.02) is None  # one round learned
    assert plateau_warning([0.2, 1.38, 1.38, 1.39], 4, 3, 0.02) is not None  # the last three count
    assert plateau_warning([1.386, 1.386], 4, 3, 0.02) is None  # too few rounds yet
    assert plateau_warning([1.386, None, 1.386], 4, 3, 0.02) is None
    assert plateau_warning([1.386] * 3, 4, 0, 0.02) is None  # switched off
    assert plateau_warning([chance * 0.97] * 3, 4, 3, 0.02) is None


@pytest.fixture(scope="module")
def random_label_folder(tmp_path_factory) -> Path:
    """Shapes filed under classes drawn at random: nothing links an image to its label."""
    from PIL import Image

    root = tmp_path_factory.mktemp("random-labels")
    g = torch.Generator().manual_seed(5)
    for split, count, seed in (("train", 2000, 1), ("test", 100, 2)):
        images, _ = generate_shapes(count, seed=seed)
        labels = torch.randint(0, 10, (count,), generator=g)
        for i, (image, label) in enumerate(zip(images, labels.tolist())):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root


LEARNING = {"num-server-rounds": 4, "local-steps": 40, "batch-size": 32, "defense": "none", "model": "small-cnn"}


def test_it_fires_once_on_random_labels(tmp_path, random_label_folder, caplog):
    caplog.set_level("WARNING", logger="flwr")
    _, rows, summary, folder = run(
        tmp_path, "random", dataset="folder", **{**LEARNING, "local-steps": 10, "data-dir": str(random_label_folder)}
    )
    assert summary["status"] == "completed"
    warned = [r for r in rows if "warning" in r]
    assert [r["round"] for r in warned] == [3]  # the first round that completes 3 near ln(10)
    assert "ln(10)" in warned[0]["warning"]
    assert summary["warnings"] == [f"round 3: {warned[0]['warning']}"]
    assert sum("not learning" in m for m in caplog.messages) == 1
    from server.console.runs import RunFolder

    assert RunFolder("random", folder).detail()["warnings"] == summary["warnings"]


def test_it_stays_silent_on_shapes(tmp_path):
    _, rows, summary, _ = run(tmp_path, "shapes", **LEARNING)
    assert summary["status"] == "completed" and summary["warnings"] == []
    assert not any("warning" in r for r in rows)
    assert rows[-1]["train-loss"] < 0.95 * math.log(10)
    assert json.loads((tmp_path / "shapes" / "summary.json").read_text())["warnings"] == []
