"""Accuracy against budget (simulations/budget_curves.py): disjoint splits, DP-SGD tuned on
validation images only, each point's DP budget planned over its own length, seeds."""

from __future__ import annotations

import json

import pytest
import torch

from common.data import load_dataset
from simulations import budget_curves as bc
from simulations.seeds import mean_sd


def test_the_public_validation_and_training_images_are_disjoint():
    public, validation, train = bc.split_indices(1000, 300, 100, 0, seed=4)
    sets = [set(x.tolist()) for x in (public, validation, train)]
    assert [len(s) for s in sets] == [300, 100, 600]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert len(bc.split_indices(1000, 300, 100, 50, seed=4)[2]) == 50
    with pytest.raises(SystemExit, match="leave no training images"):
        bc.split_indices(1000, 900, 100, 0, seed=4)


@pytest.mark.parametrize("text, error", [("256:0.001", "expected BATCH:LEARNING_RATE:CLIP"),
                                         ("0:0.001:1", "must be positive")])
def test_a_grid_point_that_cannot_be_read_is_an_error_naming_it(text, error):
    with pytest.raises(ValueError, match=error):
        bc.DPPoint.parse(text)


def test_each_point_plans_its_dp_budget_over_its_own_length():
    images = load_dataset("shapes", "train")
    train, judge = images.subset(torch.arange(256)), images.subset(torch.arange(256, 320))
    arm = bc.Arm("dp-eps8", "small-cnn", epsilon=8.0)
    point = bc.DPPoint(64, 0.002, 1.0)
    short, long = (bc.train_point(arm, epochs, 0, train, judge, 32, point) for epochs in (1, 2))
    assert long["steps"] == 2 * short["steps"] == 8
    assert long["noise_multiplier"] > short["noise_multiplier"]  # more steps, same budget: more noise
    for row in (short, long):
        assert 7.2 <= row["epsilon_spent"] <= 8.0 + 1e-6 and row["delta"] == 1 / 256


def test_tuning_reads_only_the_validation_images_and_picks_their_best_point(tmp_path, monkeypatch):
    images = load_dataset("shapes", "train")
    splits = bc.Splits(torch.arange(0), torch.arange(10), torch.arange(10, 40), images.subset(torch.arange(10, 40)),
                       images.subset(torch.arange(10)), images.subset(torch.arange(40, 50)))
    grid = [bc.DPPoint(8, 0.001, 1.0), bc.DPPoint(8, 0.01, 1.0), bc.DPPoint(16, 0.001, 1.0)]
    judged = []

    def fake(arm, epochs, seed, train, judge, image_size, dp=None):
        judged.append(judge)
        return {"arm": arm.label, "epochs": epochs, "seed": seed, "accuracy": {0.01: 0.7}.get(dp.learning_rate, 0.5),
                "batch_size": dp.batch_size, "learning_rate": dp.learning_rate, "max_grad_norm": dp.max_grad_norm}

    monkeypatch.setattr(bc, "train_point", fake)
    runs = bc.Runs(tmp_path / "runs.jsonl", {"setup": 1})
    arm = bc.Arm("dp-eps3", "small-cnn", epsilon=3.0)
    assert bc.best_dp_point(runs, arm, 1.0, 0, grid, splits, 32) == grid[1]
    assert len(judged) == 3 and all(j is splits.validation_set for j in judged)
    # Asked again, the tuning runs are read back, not trained again.
    assert bc.best_dp_point(bc.Runs(tmp_path / "runs.jsonl", {"setup": 1}), arm, 1.0, 0, grid, splits, 32) == grid[1]
    assert len(judged) == 3
    with pytest.raises(SystemExit, match="another setup"):
        bc.Runs(tmp_path / "runs.jsonl", {"setup": 2})


def test_seeds_give_a_mean_and_a_sample_deviation():
    assert mean_sd([0.5]) == (0.5, 0.0)
    mean, sd = mean_sd([0.4, 0.6])
    assert mean == pytest.approx(0.5) and sd == pytest.approx(0.1414, abs=1e-4)


def test_a_reduced_run_with_two_seeds_and_two_budgets_gives_every_column_and_the_plot(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--epochs", "0.5,1", "--seeds", "2", "--epsilons", "8",
            "--dp-grid", "64:0.002:1,128:0.004:1", "--public", "100", "--validation", "100",
            "--train-images", "256", "--test-images", "100"]
    bc.main(argv)
    summary = [json.loads(line) for line in (tmp_path / "summary.jsonl").read_text().splitlines()]
    labels = [a.label for a in bc.arms([8.0])]
    assert sorted((r["arm"], r["epochs"]) for r in summary) == sorted((a, e) for a in labels for e in (0.5, 1.0))
    for row in summary:
        assert row["seeds"] == [0, 1] and 0 <= row["accuracy_mean"] <= 1 and row["accuracy_sd"] >= 0
        assert ("dp_choice" in row) == (row["epsilon"] is not None)
    assert (tmp_path / "curves.png").stat().st_size > 0
    runs = (tmp_path / "runs.jsonl").read_text().splitlines()
    tune = [json.loads(line) for line in runs if json.loads(line)["phase"] == "tune"]
    assert len(tune) == 2 * 2  # two grid points at each budget, first seed only
    capsys.readouterr()
    bc.main(argv)  # everything is reused
    assert (tmp_path / "runs.jsonl").read_text().splitlines() == runs


def test_the_comparison_image_defenses_are_arms_that_transform_every_batch(tmp_path):
    arms = bc.transform_arms(32)
    assert {"pix", "blur-sigma1.5", "dppix-eps1", "dppix-eps8", "vm-vfe0.8+scope0"} <= set(arms)
    images = load_dataset("shapes", "train").images[:16]
    pixelated = bc.image_transform(arms["pix"], 32)(images)
    regions = pixelated.float().unfold(2, 8, 8).unfold(3, 8, 8)  # (B, C, 4, 4, 8, 8)
    assert (regions.amax((-1, -2)) == regions.amin((-1, -2))).all()  # every 8-px region flat
    noisy = bc.image_transform(arms["dppix-eps8"], 32)
    assert not torch.equal(noisy(images), noisy(images))  # fresh Laplace noise per batch
    assert bc.image_transform(bc.Arm("none", "small-cnn"), 32) is None
    bc.main(["--out", str(tmp_path), "--arms", "none,pix", "--epochs", "0.5", "--seeds", "1", "--public", "100",
             "--validation", "100", "--train-images", "128", "--test-images", "64"])
    summary = {json.loads(line)["arm"] for line in (tmp_path / "summary.jsonl").read_text().splitlines()}
    assert summary == {"none", "pix"}
    with pytest.raises(SystemExit):
        bc.main(["--out", str(tmp_path), "--arms", "pixelate"])


def test_export_writes_the_very_images_a_point_trains_and_is_tested_on(tmp_path):
    argv = ["--out", str(tmp_path / "out"), "--public", "100", "--validation", "100", "--train-images", "200",
            "--test-images", "200"]
    bc.main([*argv, "--export", str(tmp_path / "split")])
    exported = load_dataset("folder", "train", str(tmp_path / "split"))
    test = load_dataset("folder", "test", str(tmp_path / "split"))
    assert len(exported) == 200 and len(test) == 200 and not (tmp_path / "out").exists()
    splits = bc.load_splits(bc_args(argv))
    order = torch.argsort(splits.train_set.labels, stable=True)  # the folder is sorted by class
    assert torch.equal(exported.images, splits.train_set.images[order])
    with pytest.raises(SystemExit):  # never into a folder that holds something
        bc.main([*argv, "--export", str(tmp_path / "split")])


def bc_args(argv: list[str]):
    import argparse

    return argparse.Namespace(dataset="shapes", data_dir=None, image_size=32, public=100, validation=100,
                              train_images=200, test_images=200, data_seed=0)
