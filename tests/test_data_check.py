"""``visualmixer check DIR``: counts, unreadable files, the sheet, and an accuracy line
against chance, from the folder read as a run reads it."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from common import data
from common.cli import main
from common.data_check import run_check


@pytest.fixture
def folder(tmp_path, shapes_folder):
    root = tmp_path / "photos"
    shutil.copytree(shapes_folder, root)
    (root / "train" / "class0" / "broken.jpg").write_bytes(b"\xff\xd8\xff not an image")
    data.read_folder.cache_clear()
    yield root
    data.read_folder.cache_clear()


def test_it_reports_counts_unreadable_files_and_the_sheet(folder, tmp_path):
    report = run_check(folder, {"defense": "visualmixer"}, seconds=0, sheet=tmp_path / "sheet.png")
    assert report.classes == tuple(f"class{k}" for k in range(10))
    assert sum(report.counts["train"].values()) == 200 and sum(report.counts["test"].values()) == 60
    assert report.unreadable == {"train": (str(folder / "train" / "class0" / "broken.jpg"),), "test": ()}
    with Image.open(report.sheet) as sheet:  # 10 classes, each clean then obfuscated: 20 rows of 8
        assert sheet.size == (8 * 34 + 2, 20 * 34 + 2)
    assert report.steps == 0 and "unreadable in train/: 1 file(s)" in "\n".join(report.lines())


def test_a_learnable_folder_scores_above_chance(folder):
    report = run_check(folder, {"defense": "none", "model": "small-cnn"}, seconds=300, max_steps=300)
    assert report.steps <= 300 and report.test_images == 60 and report.train_images == 200
    assert report.chance == pytest.approx(max(report.counts["test"].values()) / 60)
    assert report.learns, report.lines()
    assert "learns" in report.lines()[-1] and "chance" in report.lines()[-1]


def test_a_folder_nothing_can_be_learned_from_is_named(tmp_path, capsys):
    """Every image the same grey, labels spread over 4 classes: the training loss stays at
    ln(4), and the command says so and exits 1."""
    root = tmp_path / "grey"
    for split, count in (("train", 80), ("test", 40)):
        for i in range(count):
            folder = root / split / f"class{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (120, 120, 120)).save(folder / f"{i}.png")
    data.read_folder.cache_clear()
    code = main(["check", str(root), "--seconds", "600", "--steps", "300", "--defense", "none", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1 and "NOT learning" in out and "ln 4 = 1.386" in out
    code = main(["check", str(root), "--seconds", "600", "--steps", "30", "--defense", "none", "--out", str(tmp_path)])
    assert code == 3 and "undecided: the loss has not left ln(classes) in 30 steps" in capsys.readouterr().out


def test_the_command_prints_json_and_names_a_missing_folder(folder, tmp_path, capsys):
    code = main(["check", str(folder), "--seconds", "1", "--defense", "none", "--out", str(tmp_path / "out"), "--json"])
    body = json.loads(capsys.readouterr().out)
    assert code == {"learns": 0, "learning": 0, "undecided": 3, "not-learning": 1}[body["outcome"]]
    assert body["counts"]["test"]["class3"] > 0 and 0 <= body["accuracy"] <= 1 and body["steps"] > 0
    assert (tmp_path / "out" / "photos-sheet.png").is_file()
    assert main(["check", str(tmp_path / "nowhere"), "--seconds", "0"]) == 2
    assert "has no train/ folder" in capsys.readouterr().err
    assert main(["check", str(folder), "--seconds", "0", "--image-size", "7"]) == 2
    assert "image-size=7" in capsys.readouterr().err
