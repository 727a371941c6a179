"""simulations.compare: the arm matrix, and a reduced run end to end through `flwr run`."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from simulations.compare import EXCHANGES, matrix
from tests.test_simulation import simulation_env  # noqa: F401 - fixture: FLWR_HOME, ports, clean-up
from tests.test_deployment import ROOT


def test_matrix_covers_every_defense_per_exchange_but_never_dp_with_images():
    arms = matrix()
    assert len(arms) == 4 + 3 + 8 + 8  # images: none, 3 targets, 2 scopes and a finer grid
    assert not any(a.exchange == "images" and "dp-sgd" in a.defense for a in arms)
    for exchange in ("activations", "weights"):
        labels = {a.label for a in arms if a.exchange == exchange}
        assert labels == {"none", "vm-vfe0.5", "vm-vfe0.8", "vm-vfe1", "dp-eps1", "dp-eps3", "dp-eps8", "vm+dp-vfe0.8+eps8"}
    assert {a.exchange for a in arms} == set(EXCHANGES)
    assert len({a.name for a in arms}) == len(arms)


def test_unknown_defense_label_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "simulations.compare", "--out", str(tmp_path), "--defenses", "vm-0.8"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2 and "--defenses vm-0.8 unknown" in result.stderr


# Five `flwr run`s, three at a time: about 2 min on an idle 2-core machine, far longer when the disk is
# throttled (the local SuperLink's SQLite then reports "database is locked"), so it runs
# with `make test-slow`, not in the default suite.
@pytest.mark.slow
@pytest.mark.deployment
def test_reduced_compare_writes_every_output(simulation_env, tmp_path):  # noqa: F811
    out = tmp_path / "cmp"
    result = subprocess.run(
        [sys.executable, "-m", "simulations.compare", "--preset", "quick", "--out", str(out),
         "--rounds", "1", "--defenses", "none,vm+dp-vfe0.8+eps8", "--attack-scale", "0.05"],
        cwd=ROOT, env=simulation_env, capture_output=True, text=True, timeout=1200, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("results.csv", "report.md", "accuracy_per_round.png", "privacy_utility.png", "gallery.png"):
        assert (out / name).stat().st_size > 0, name
    rows = {r["arm"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {
        "images-none", "activations-none", "activations-vm+dp-vfe0.8+eps8",
        "weights-none", "weights-vm+dp-vfe0.8+eps8",
    }
    assert all(r["status"] == "completed" for r in rows.values())
    assert all(r["adaptive_margin"] != "" for name, r in rows.items() if not name.startswith("weights"))
    assert rows["images-none"]["margin"] != "" and rows["images-none"]["linkage"] != ""
    # Gradient inversion is scored on 4 images in `quick`: too few to rank attacks, so the
    # weights arms carry its scores but no best attack and no margin.
    assert all(r["gradient-inversion_images"] == "4" and r["margin"] == "" and r["adaptive_margin"] == ""
               for name, r in rows.items() if name.startswith("weights"))
    assert rows["images-none"]["observed_recognition"] != ""
    assert rows["activations-none"]["feature-inversion_psnr"] != ""
    dp = rows["weights-vm+dp-vfe0.8+eps8"]
    assert 0 < float(dp["epsilon"]) <= 8.0 and float(dp["mean_vfe"]) >= 0.8
    assert dp["gradient-inversion_psnr"] != "" and dp["gi+mosaic_psnr"] != ""
    report = (out / "report.md").read_text()
    assert "## exchange = weights" in report and "python -m simulations.compare" in report


def test_scope_arms_are_in_the_images_exchange_and_reach_the_run_config(tmp_path):
    from simulations.compare import PRESETS, run_config

    arms = {a.name: a for a in matrix()}
    for name, key in (("images-vm-vfe0.8+scope2", "region-scope=2"), ("images-vm-vfe0.8+scope0", "region-scope=0"),
                      ("images-vm-vfe0.8+r4", "region-size=4")):
        assert key in run_config(arms[name], PRESETS["quick"], tmp_path, tmp_path, 0)


def test_attack_stage_with_a_scope_arm_fills_every_column(tmp_path):
    """The attack stage and report on runs laid out as `flwr run` leaves them (an untrained
    model stands in for the trained one): every attack, both rankings, linkage and floor."""
    import json
    from dataclasses import replace

    import torch

    from common.models import build_model
    from simulations.compare import PRESETS, Arm, prepare_data
    from simulations.compare_attacks import attack_all
    from simulations.compare_report import CLASSIFIERS, write_report

    preset = replace(
        PRESETS["quick"], victim_train=200, test=100, public=300, attack_victims=64, recogniser_steps=5,
        adaptive_steps=5, statistics_steps=5, inverse_steps=2, linkage_pool=200, network_width=4,
    )
    data, public = prepare_data("shapes", None, preset, tmp_path, 0)
    arms = [Arm("images", "none"), Arm("images", "visualmixer", target_vfe=0.8, region_scope=2)]
    model = build_model("small-cnn", 3, public.num_classes)
    for arm in arms:
        folder = tmp_path / "runs" / arm.name
        folder.mkdir(parents=True)
        torch.save(model.state_dict(), folder / "final_model.pt")
        row = {"round": 1, "status": "completed", "central-accuracy": 0.1, "seconds": 1.0, "bytes-up": 10, "bytes-down": 10}
        (folder / "metrics.jsonl").write_text(json.dumps({**row, **({"vfe-sent": 0.85} if arm.target_vfe else {})}) + "\n")
    results = attack_all(arms, lambda name: "completed", preset, data, public, tmp_path, 0)
    none, scoped = results["rows"]
    assert 0 <= results["floor"] <= 1 and results["candidates"] == 200
    for key in ("best_attack", "margin", "best_adaptive_attack", "adaptive_margin", "linkage", "statistics_recognition"):
        assert none.get(key) is not None and scoped.get(key) is not None, key
    assert all(scoped.get(f"{a}_recognition") is not None for a in CLASSIFIERS)
    assert scoped["inverse-net_psnr"] is not None and scoped["mosaic_recognition"] is not None
    assert none["linkage"] == 1.0  # unprotected images link to themselves
    assert (tmp_path / "cache").glob("recogniser-*.pt")
    write_report(results, arms, preset, tmp_path, "python -m simulations.compare (test)",
                 {"dataset": "shapes", "train_seconds": 1.0, "total_seconds": 1.0, "preset": "test",
                  **{k: getattr(preset, k) for k in preset.__dataclass_fields__}})
    report = (tmp_path / "report.md").read_text()
    assert "best adaptive" in report and "linkage" in report and "floor" in report
    assert "not a headline result" in report  # a 5-step recogniser is too weak to headline
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert rows[1]["adaptive_margin"] != "" and rows[1]["obfuscation-trained_recognition"] != ""
