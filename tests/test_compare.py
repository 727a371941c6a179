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
    assert len(arms) == 4 + 8 + 8
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
    assert all(r["margin"] != "" for name, r in rows.items() if not name.startswith("weights"))
    # Gradient inversion is scored on 4 images in `quick`: too few to rank attacks, so the
    # weights arms carry its scores but no best attack and no margin.
    assert all(r["gradient-inversion_images"] == "4" and r["margin"] == ""
               for name, r in rows.items() if name.startswith("weights"))
    assert rows["images-none"]["observed_recognition"] != ""
    assert rows["activations-none"]["feature-inversion_psnr"] != ""
    dp = rows["weights-vm+dp-vfe0.8+eps8"]
    assert 0 < float(dp["epsilon"]) <= 8.0 and float(dp["mean_vfe"]) >= 0.8
    assert dp["gradient-inversion_psnr"] != "" and dp["gi+mosaic_psnr"] != ""
    report = (out / "report.md").read_text()
    assert "## exchange = weights" in report and "python -m simulations.compare" in report
