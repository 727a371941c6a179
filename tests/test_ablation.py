"""The ablation script on a tiny `shapes` configuration: every arm of a study, per seed, and
the mean and spread over seeds."""

from __future__ import annotations

import json
import statistics

from simulations import ablation


def test_models_study_runs_each_model_clean_and_obfuscated_per_seed(capsys):
    ablation.main(["--study", "models", "--steps", "3", "--batch-size", "8", "--test-images", "20", "--seeds", "0", "1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    runs = [r for r in lines if "seed" in r]
    summaries = [r for r in lines if "mean_test_accuracy" in r]
    assert {(r["model"], r["target_vfe"], r["seed"]) for r in runs} == {
        (m, t, s) for m in ("small-cnn", "region-invariant") for t in (None, 0.8) for s in (0, 1)
    }
    assert len(summaries) == 4 and all(0 <= r["test_accuracy"] <= 1 and r["train_seconds"] >= 0 for r in runs)
    for summary in summaries:
        mine = [r["test_accuracy"] for r in runs if (r["model"], r["target_vfe"]) == (summary["model"], summary["target_vfe"])]
        assert summary["mean_test_accuracy"] == round(statistics.mean(mine), 4)
        assert summary["spread_test_accuracy"] == round(statistics.stdev(mine), 4)


def test_one_seed_prints_no_summary(capsys):
    ablation.main(["--study", "scope", "--steps", "2", "--batch-size", "8", "--test-images", "10"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["region_scope"] for r in lines] == [1, 2, 0] and all(r["model"] == "small-cnn" for r in lines)
    assert all(r["loss_oscillation"] is None for r in lines)  # 2 steps: too few to measure


def test_recipes_study_tries_augmentation_and_test_time_averaging(capsys):
    ablation.main(["--study", "recipes", "--steps", "3", "--batch-size", "8", "--test-images", "10", "--draws", "2",
                   "--public", "100", "--pretrain-steps", "2"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["target_vfe"], r["recipe"]) for r in lines] == [
        (None, "plain"), (None, "augment"), (0.8, "plain"), (0.8, "augment"), (0.8, "tta"), (0.8, "augment+tta"),
        (0.8, "pretrain"),
    ]
    assert lines[-1]["pretrain_steps"] == 2 and "pretrain_steps" not in lines[0]


def test_curve_study_records_the_accuracy_at_each_checkpoint(capsys):
    ablation.main(["--study", "curve", "--steps", "6", "--checkpoints", "3", "--batch-size", "8", "--test-images", "10"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["model"], r["target_vfe"]) for r in lines] == [
        ("small-cnn", None), ("small-cnn", 0.8), ("region-invariant", None), ("region-invariant", 0.8)]
    for row in lines:
        assert [step for step, _ in row["curve"]] == [2, 4, 6] and row["curve"][-1][1] == row["test_accuracy"]
