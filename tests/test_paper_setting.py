"""The paper-setting script (224x224 upsampled, 16-pixel regions) beside the native one, on a
tiny CPU configuration: every row it promises, and the mosaic's advantage at 224."""

from __future__ import annotations

import json

from simulations import paper_setting


def test_paper_setting_reports_both_settings_and_their_attacks(shapes_folder, tmp_path, capsys):
    out = tmp_path / "paper.jsonl"
    code = paper_setting.main([
        "--data-dir", str(shapes_folder), "--steps", "2", "--batch-size", "8", "--public-images", "40",
        "--test-images", "24", "--attack-images", "16", "--recogniser-steps", "3", "--inverse-steps", "2",
        "--device", "cpu", "--out", str(out),
    ])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    arms = {(r["setting"], r["data"]): r for r in rows if "data" in r}
    assert set(arms) == {(s, d) for s in ("native", "paper") for d in ("clean", "obfuscated")}
    assert arms["paper", "clean"]["image_size"] == 224 and arms["paper", "clean"]["region_size"] == 16
    assert all(0 <= r["test_accuracy"] <= 1 and r["train_seconds"] > 0 for r in arms.values())
    attacks = {r["setting"]: r for r in rows if "attack_images" in r}
    for row in attacks.values():
        assert row["attack_images"] == 16 and row["vfe"] >= 0.8
        for name in ("observed", "mosaic", "inverse_network"):
            assert 0 <= row[name]["recognised"] <= 1 and row[name]["psnr"] > 0
    # A 14x14 mosaic of an upsampled image keeps far more of its structure than a 4x4 one.
    assert attacks["paper"]["mosaic"]["ssim"] > attacks["native"]["mosaic"]["ssim"] + 0.05
    summary = rows[-1]
    assert summary["published_accuracy_loss_points"] == 2.35
    for setting in ("native", "paper"):
        expected = 100 * (arms[setting, "clean"]["test_accuracy"] - arms[setting, "obfuscated"]["test_accuracy"])
        assert abs(summary[f"{setting}_accuracy_loss_points"] - expected) < 0.01
