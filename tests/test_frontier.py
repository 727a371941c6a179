"""simulations.frontier: seeds summarised, the Pareto front, noise, and every output; and
simulations.compare --seeds end to end (slow)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from simulations.compare_report import write_csv
from simulations.frontier import main, pareto_front, summarise, within_noise, write_frontier
from tests.test_deployment import ROOT


def test_the_front_keeps_exactly_the_undominated_points():
    # (accuracy, recognition): higher accuracy and lower recognition are better.
    points = [(0.7, 0.8), (0.5, 0.2), (0.6, 0.5), (0.5, 0.3), (0.4, 0.2), (0.7, 0.8)]
    # (0.5, 0.3) loses to (0.5, 0.2); (0.4, 0.2) loses to (0.5, 0.2); equal points both stay.
    assert pareto_front(points) == [True, True, True, False, False, True]
    assert pareto_front([]) == []


def row(arm: str, accuracy: float, adaptive: float | None, non_adaptive: float | None = None, **more) -> dict:
    exchange, label = arm.split("-", 1)
    return {"arm": arm, "exchange": exchange, "defense": label.split("-")[0], "setting": "-", "status": "completed",
            "test_accuracy": accuracy, "best_adaptive_attack_recognition": adaptive,
            "best_attack_recognition": non_adaptive, **more}


def test_seeds_give_mean_and_sample_deviation_of_every_figure_and_skip_failed_runs():
    seeds = [
        [row("images-none", 0.70, 0.75, 0.75, statistics_recognition=0.50), row("images-vm-vfe0.8", 0.46, 0.50, 0.20)],
        [row("images-none", 0.72, 0.77, 0.77, statistics_recognition=0.52), row("images-vm-vfe0.8", 0.50, 0.48, 0.22)],
        [row("images-none", 0.0, 0.0, 0.0) | {"status": "failed"}, row("images-vm-vfe0.8", 0.48, 0.52, 0.18)],
    ]
    none, vm = summarise(seeds)
    assert none["seeds"] == 2 and none["test_accuracy_mean"] == pytest.approx(0.71)
    assert none["test_accuracy_sd"] == pytest.approx(0.0141421, abs=1e-6)  # sample deviation (n - 1)
    assert none["statistics_recognition_mean"] == pytest.approx(0.51)
    assert vm["seeds"] == 3 and vm["test_accuracy_sd"] == pytest.approx(0.02)
    assert "statistics_recognition_mean" not in vm  # never measured: no figure rather than 0
    # 0.71 +- 0.014 (2) against 0.48 +- 0.02 (3): far beyond twice the standard error.
    assert within_noise(vm, none, "test_accuracy") is False
    assert within_noise(vm, vm, "test_accuracy") is True
    assert within_noise(vm, summarise([seeds[0]])[0], "test_accuracy") is None  # one seed: no noise estimate


def write_seeds(directory, seeds: list[list[dict]]) -> None:
    for k, rows in enumerate(seeds):
        (directory / f"seed-{k}").mkdir(parents=True)
        write_csv(rows, directory / f"seed-{k}" / "results.csv")


def test_frontier_writes_every_output_per_budget_and_marks_the_front(tmp_path):
    short, long = tmp_path / "short", tmp_path / "long"
    arms = lambda shift: [  # noqa: E731
        row("images-none", 0.70 + shift, 0.75, 0.75), row("images-vm-vfe0.8", 0.46 + shift, 0.50, 0.20),
        row("images-pix", 0.40 + shift, 0.60, 0.30),  # dominated by vm-vfe0.8 for both attackers
        row("weights-none", 0.66 + shift, None), row("weights-dp-eps8", 0.40 + shift, None),  # too few images
    ]
    write_seeds(short, [arms(0.0), arms(0.02)])
    write_seeds(long, [arms(0.1), arms(0.12)])
    main([f"{short}=2 epochs", f"{long}=20 epochs", "--out", str(tmp_path / "out")])
    points = [json.loads(line) for line in (tmp_path / "out" / "frontier.jsonl").read_text().splitlines()]
    assert {p["budget"] for p in points} == {"2 epochs", "20 epochs"}
    assert len(points) == 2 * 2 * 3  # budgets x attackers x ranked arms; weights arms unranked
    front = {(p["budget"], p["attacker"], p["arm"]) for p in points if p["on_front"]}
    for budget in ("2 epochs", "20 epochs"):
        for attacker in ("adaptive", "non-adaptive"):
            assert (budget, attacker, "images-none") in front and (budget, attacker, "images-vm-vfe0.8") in front
            assert (budget, attacker, "images-pix") not in front
    summary = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert len(summary) == 10 and float(summary[0]["test_accuracy_mean"]) == pytest.approx(0.71)
    table = (tmp_path / "out" / "frontier.md").read_text()
    assert "## images, 2 epochs" in table and "## images, 20 epochs" in table
    assert "| images-vm-vfe0.8 | 2 | 0.470 +- 0.014 | **0.200 +- 0.000** | **0.500 +- 0.000** | differs |" in table
    assert "No attack scored on enough images for: weights-none, weights-dp-eps8." in table
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 10_000


def test_a_folder_that_is_not_a_compare_output_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no results.csv"):
        write_frontier({"x": tmp_path}, tmp_path / "out", "test")
    result = subprocess.run([sys.executable, "-m", "simulations.frontier", str(tmp_path / "missing"), "--out",
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "no such folder" in result.stderr


@pytest.mark.slow
@pytest.mark.deployment
def test_compare_over_two_seeds_writes_each_seed_and_their_frontier(simulation_env, tmp_path):  # noqa: F811
    out = tmp_path / "cmp"
    result = subprocess.run(
        [sys.executable, "-m", "simulations.compare", "--preset", "quick", "--out", str(out), "--seeds", "2",
         "--rounds", "1", "--exchanges", "images", "--defenses", "none,vm-vfe0.8", "--attack-scale", "0.05"],
        cwd=ROOT, env=simulation_env, capture_output=True, text=True, timeout=1800, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for seed in (0, 1):
        rows = list(csv.DictReader((out / f"seed-{seed}" / "results.csv").open()))
        assert [r["status"] for r in rows] == ["completed", "completed"]
    summary = {r["arm"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(summary) == {"images-none", "images-vm-vfe0.8"}
    assert all(r["seeds"] == "2" and r["test_accuracy_sd"] != "" for r in summary.values())
    assert "## images, quick, 1 rounds" in (out / "frontier.md").read_text()
    assert (out / "frontier.png").stat().st_size > 0
