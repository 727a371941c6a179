"""The privacy-utility frontier script on a tiny `shapes` configuration: one row per setting
with every attack column, and the limit of any noise-free shuffle (linkage) visible."""

from __future__ import annotations

import json

import pytest

from simulations import privacy_frontier

ATTACKS = ("observed", "mosaic", "statistics")
ADAPTIVE = ("statistics-obf", "mosaic-trained", "inverse-net")


def test_frontier_writes_a_row_per_setting_with_every_attack(tmp_path, capsys, monkeypatch):
    out = tmp_path / "frontier.jsonl"
    mosaic_nets = []  # (region, chromatic) of every mosaic-trained attacker trained

    def train_mosaic_recogniser(images, labels, num_classes, region, chromatic, **train):
        mosaic_nets.append((region, chromatic))
        return real_mosaic_recogniser(images, labels, num_classes, region, chromatic, **train)

    real_mosaic_recogniser = privacy_frontier.train_mosaic_recogniser
    monkeypatch.setattr(privacy_frontier, "train_mosaic_recogniser", train_mosaic_recogniser)
    code = privacy_frontier.main([
        "--settings", "none", "0.8:8:1", "0.8:8:0", "0.8:8:1:mono", "--public", "300", "--victims", "40",
        "--pool", "120", "--steps", "3", "--recogniser-steps", "3", "--adaptive-steps", "3", "--statistics-steps", "5",
        "--inverse-steps", "3",
        "--device", "cpu", "--out", str(out), "--cache", str(tmp_path / "cache"),
    ])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    head, settings = rows[0], {r["setting"]: r for r in rows[1:]}
    assert head["recogniser_reused"] is False and head["pool"] == 120 and 0 <= head["floor"] <= 1
    assert list(settings) == ["none", "vfe0.8-r8-scope1", "vfe0.8-r8-scope0", "vfe0.8-r8-scope1-mono"]
    assert [r["chromatic"] for r in settings.values()] == [True, True, True, False]
    # One per region size and chromatic switch: the mono setting's attacker reads colour.
    assert mosaic_nets == [(8, True), (8, False)]
    for name, row in settings.items():
        columns = ATTACKS + (ADAPTIVE if name != "none" else ())
        assert all(0 <= row[c] <= 1 for c in columns + ("test_accuracy", "linkage"))
        assert row["best_adaptive"] == max(row[c] for c in columns)
        assert row["floor"] == head["floor"]
        assert (name == "none") == ("inverse_psnr" not in row)
    assert settings["vfe0.8-r8-scope1"]["mean_vfe"] >= 0.8 - 0.05
    # Every region's multiset survives an in-region shuffle, and the set of them survives
    # moving regions: the original is found among the candidates at every setting.
    assert all(row["linkage"] >= 0.95 for row in settings.values())
    # A second run on the same public images reuses the recogniser.
    privacy_frontier.main(["--settings", "none", "--public", "300", "--victims", "40", "--pool", "120",
                           "--steps", "3", "--recogniser-steps", "3", "--statistics-steps", "5", "--device", "cpu",
                           "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert json.loads(out.read_text().splitlines()[len(rows)])["recogniser_reused"] is True
    capsys.readouterr()
    assert privacy_frontier.main(["--table", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| setting | mean VFE | test accuracy |") and len(table) == 2 + 5
    assert table[3].startswith("| vfe0.8-r8-scope1 |") and "| - |" in table[2]  # none has no adaptive columns


def test_a_malformed_setting_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        privacy_frontier.main(["--settings", "0.8:8", "--out", "x.jsonl"])
    assert "--settings item '0.8:8': expected none or VFE:REGION:SCOPE[:mono]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        privacy_frontier.main(["--settings", "0.8:8:1:grey", "--out", "x.jsonl"])
    assert "--settings item '0.8:8:1:grey'" in capsys.readouterr().err
