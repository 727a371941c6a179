"""simulations.compare: the arm matrix, and a reduced run end to end through `flwr run`."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from server.flwr_cli import local_superlinks
from simulations.compare import EXCHANGES, matrix
from tests.test_deployment import ROOT


def test_matrix_covers_every_registered_defense_per_exchange_but_never_dp_with_images():
    from common.defenses import DEFENSES

    arms = matrix()
    # images: none, 3 targets, pixelate, blur, DP-Pix at 2 epsilons, 2 scopes and a finer
    # grid; the others: and DP-SGD.
    assert len(arms) == 11 + 12 + 12
    assert not any(a.exchange == "images" and a.defense_plugin.trains_privately for a in arms)
    assert {a.defense for a in arms} == set(DEFENSES)
    for exchange in ("activations", "weights"):
        labels = {a.label for a in arms if a.exchange == exchange}
        assert labels == {"none", "vm-vfe0.5", "vm-vfe0.8", "vm-vfe1", "dp-eps1", "dp-eps3", "dp-eps8", "vm+dp-vfe0.8+eps8",
                          "pix", "blur-sigma1.5", "dppix-eps1", "dppix-eps8"}
    assert {a.exchange for a in arms} == set(EXCHANGES)
    assert len({a.name for a in arms}) == len(arms)


def test_arms_regions_scale_with_the_image_size_and_reach_the_run_config(tmp_path):
    from dataclasses import replace

    from simulations.compare import load_preset, run_config

    arms = {a.name: a for a in matrix(64)}
    assert len(arms) == len(matrix())
    assert arms["images-vm-vfe0.8"].region_size == 16 and arms["images-vm-vfe0.8+r8"].region_size == 8
    preset = replace(load_preset("quick"), image_size=64, model="region-invariant")
    config = run_config(arms["images-vm-vfe0.8+scope0"], preset, tmp_path, tmp_path, 0)
    for key in ("image-size=64", "region-size=16", "region-scope=0", 'model="region-invariant"'):
        assert key in config
    assert load_preset("full").model == "resnet18-gn"


def test_the_standard_preset_runs_the_named_arms_and_uploads_every_image_in_the_images_exchange(tmp_path):
    from simulations.compare import load_preset, run_config, upload_samples

    standard = load_preset("standard")
    arms = [a for a in matrix() if a.label in standard.defenses or a.name in standard.defenses]
    # No misspelt label drops an arm.
    assert set(standard.defenses) <= {a.label for a in matrix()} | {a.name for a in matrix()}
    # images: none, scope 1/2/0, pixelate, blur, DP-Pix 1/8; the others: none, vm, dp 3/8, vm+dp.
    assert len(arms) == 8 + 5 + 5 and standard.seeds == 3 and standard.inversion_batches >= 32
    by_name = {a.name: a for a in arms}
    assert upload_samples(by_name["images-none"], standard) == 0
    assert upload_samples(by_name["activations-none"], standard) == standard.upload_samples == 2048
    assert "upload-samples=0" in run_config(by_name["images-vm-vfe0.8+scope0"], standard, tmp_path, tmp_path, 0)
    quick = load_preset("quick")
    assert upload_samples(by_name["images-none"], quick) == quick.upload_samples
    # The quick preset runs the arms it always ran; the defenses added since are in the matrix.
    assert "images-pix" in {a.name for a in matrix()} and "pix" not in quick.defenses


@pytest.mark.parametrize("args, message", [
    (["--image-size", "63"], "--image-size 63: must be even"),
    (["--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
    (["--seeds", "-1"], "--seeds -1: at least 1"),
    (["--defenses", "vm-0.8"], "--defenses vm-0.8 unknown"),
    (["--defenses", "images-pixelate"], "or an exchange-label name such as images-pix"),
])
def test_a_bad_argument_is_refused_naming_it(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "simulations.compare", "--out", str(tmp_path), *args],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_an_out_dir_of_another_setup_is_refused(tmp_path):
    from simulations.compare import check_same_setup

    check_same_setup(tmp_path, {"dataset": "shapes", "model": "small-cnn", "image_size": 32})
    check_same_setup(tmp_path, {"dataset": "shapes", "model": "small-cnn", "image_size": 32})  # the same: reused
    with pytest.raises(SystemExit, match="image_size 32 there, 64 now"):
        check_same_setup(tmp_path, {"dataset": "shapes", "model": "small-cnn", "image_size": 64})


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
    # The quick preset trains arms in parallel, so compare started the local SuperLink itself.
    assert not local_superlinks(home=Path(simulation_env["FLWR_HOME"]))


@pytest.mark.parametrize("running_before", [False, True])
def test_parallel_training_stops_the_local_superlink_only_when_it_started_it(tmp_path, monkeypatch, running_before):
    from simulations import compare_runs, flwr_run
    from simulations.compare import load_preset

    superlink = [True] if running_before else []
    stopped = []
    monkeypatch.setattr(compare_runs, "local_superlinks", lambda: {1: []} if superlink else {})
    monkeypatch.setattr(flwr_run, "flwr", lambda *args, **kwargs: superlink.append(True))
    monkeypatch.setattr(compare_runs, "stop_local_superlink", lambda: stopped.append(True))
    monkeypatch.setattr(compare_runs, "train_arm", lambda arm, *args: "completed")
    arms = matrix()[:3]
    statuses = compare_runs.train_arms(arms, load_preset("quick"), tmp_path, tmp_path, 0, 3, tmp_path)
    assert statuses == {arm.name: "completed" for arm in arms}
    assert stopped == ([] if running_before else [True])


def test_scope_arms_are_in_the_images_exchange_and_reach_the_run_config(tmp_path):
    from simulations.compare import load_preset, run_config

    arms = {a.name: a for a in matrix()}
    for name, key in (("images-vm-vfe0.8+scope2", "region-scope=2"), ("images-vm-vfe0.8+scope0", "region-scope=0"),
                      ("images-vm-vfe0.8+r4", "region-size=4")):
        assert key in run_config(arms[name], load_preset("quick"), tmp_path, tmp_path, 0)


@pytest.mark.parametrize("model_name, image_size", [("small-cnn", 32), ("region-invariant", 64)])
def test_attack_stage_with_a_scope_arm_fills_every_column(tmp_path, model_name, image_size):
    """The attack stage and report on runs laid out as `flwr run` leaves them (an untrained
    model stands in for the trained one): every attack, both rankings, linkage and floor,
    with the preset's model at its image size."""
    import json
    from dataclasses import replace

    import torch

    from common.models import build_model
    from simulations.compare import Arm, load_preset, prepare_data
    from simulations.compare_attacks import attack_all
    from simulations.compare_report import CLASSIFIERS, write_report

    preset = replace(
        load_preset("quick"), victim_train=200, test=100, public=300, attack_victims=64, recogniser_steps=5,
        adaptive_steps=5, statistics_steps=5, inverse_steps=2, linkage_pool=200, network_width=4,
        model=model_name, image_size=image_size,
    )
    data, public = prepare_data("shapes", None, preset, tmp_path, 0)
    assert public.images.shape[-1] == image_size
    region = image_size // 4
    arms = [Arm.of("images", "none", image_size, region_size=region),
            Arm.of("images", "visualmixer", image_size, target_vfe=0.8, region_scope=2, region_size=region)]
    model = build_model(model_name, 3, public.num_classes, image_size=image_size, region_size=region)
    for arm in arms:
        folder = tmp_path / "runs" / arm.name
        folder.mkdir(parents=True)
        torch.save(model.state_dict(), folder / "final_model.pt")
        row = {"round": 1, "status": "completed", "central-accuracy": 0.1, "seconds": 1.0, "bytes-up": 10, "bytes-down": 10}
        (folder / "metrics.jsonl").write_text(json.dumps({**row, **({"vfe-sent": 0.85} if arm.defense_plugin.transforms_images else {})}) + "\n")
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


# One arm through `flwr run` and the attack stage, as the GPU script runs them: about 2 min on
# 2 cores, so with `make test-slow`.
@pytest.mark.slow
@pytest.mark.deployment
def test_the_gpu_script_runs_on_a_cpu_and_summarises_what_completed(simulation_env, tmp_path):  # noqa: F811
    import json

    out = tmp_path / "gpu"
    result = subprocess.run(
        ["bash", "simulations/gpu_compare.sh", str(out), "", "--preset", "quick", "--rounds", "1",
         "--defenses", "vm-vfe0.8", "--exchanges", "images", "--attack-scale", "0.05", "--parallel", "1"],
        cwd=ROOT, env={**simulation_env, "LIMIT": "900"}, capture_output=True, text=True, timeout=1200, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arms_completed"] == ["images-vm-vfe0.8"] and summary["arms_not_completed"] == []
    assert summary["report"] and summary["timed_out"] is False and summary["device"] == "cpu"
    assert (out / "compare" / "results.csv").stat().st_size > 0
    assert "[compare] done" in (out / "compare.log").read_text()


def test_a_preset_is_a_toml_file_a_user_can_copy_and_edit(tmp_path):
    from simulations.compare_presets import PRESETS_DIR, load_preset

    mine = tmp_path / "mine.toml"
    mine.write_text((PRESETS_DIR / "quick.toml").read_text().replace("rounds = 3", "rounds = 5"))
    assert load_preset(str(mine)).rounds == 5 and load_preset("quick").rounds == 3
    for text, message in (("rounds = 3", "unknown key 'roundz'"), ("clients = 2", "missing key 'clients'"),
                          ("rounds = 3", "rounds='3' must be int")):
        bad = tmp_path / "bad.toml"
        replacement = {"unknown key 'roundz'": "roundz = 3", "missing key 'clients'": "",
                       "rounds='3' must be int": 'rounds = "3"'}[message]
        bad.write_text((PRESETS_DIR / "quick.toml").read_text().replace(text, replacement))
        with pytest.raises(ValueError, match=message):
            load_preset(str(bad))
    with pytest.raises(ValueError, match="--preset 'fast' is not one of: full, quick, standard"):
        load_preset("fast")


def test_a_preset_runs_at_least_one_seed(tmp_path):
    from simulations.compare import load_preset

    text = (ROOT / "simulations" / "presets" / "quick.toml").read_text()
    (tmp_path / "none.toml").write_text(text + "seeds = 0\n")
    with pytest.raises(ValueError, match="seeds=0 must be at least 1"):
        load_preset(str(tmp_path / "none.toml"))
