"""An edge install that keeps the torch a device already has: a fresh virtual environment
with torch and torchvision installed first (on a board: the vendor's builds), then the
project with those pinned as constraints, as docs/deploy.md shows. pip leaves them as they
were, and a node answers messages of every exchange with them, from the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.deployment

# The oldest releases pyproject.toml allows, and the ones installed before the project.
OLDEST = {"torch": "2.14.1", "torchvision": "0.29.1"}


def pip(python: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "install", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def test_the_claimed_range_starts_at_the_tested_release():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, version in OLDEST.items():
        (spec,) = [d for d in dependencies if d.split(">")[0].split("=")[0].strip() == name]
        assert f">={version.rsplit('.', 1)[0]}," in spec, spec


def test_installing_the_node_keeps_an_existing_torch(tmp_path):
    venv = tmp_path / "edge"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    first = pip(python, "-q", f"torch=={OLDEST['torch']}", f"torchvision=={OLDEST['torchvision']}")
    if first.returncode != 0:
        pytest.skip(f"torch {OLDEST['torch']} is not installable here: {first.stderr.strip()[-300:]}")
    site = Path(subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    before = {p.name: p.stat().st_mtime_ns for p in site.glob("torch*.dist-info")}
    kept = tmp_path / "keep-torch.txt"
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
    kept.write_text("".join(line + "\n" for line in freeze.stdout.splitlines()
                            if line.split("==")[0].lower() in ("torch", "torchvision")))
    installed = pip(python, "--constraint", str(kept), str(ROOT))
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in site.glob("torch*.dist-info")} == before  # not reinstalled
    # The installed package, not this checkout, answers: only the in-process grid is copied.
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "fake_grid.py").write_text((ROOT / "tests" / "fake_grid.py").read_text())
    check = subprocess.run([str(python), "-c", textwrap.dedent("""
        import torch, torchvision
        import server
        from tests.fake_grid import one_round_of_each_exchange
        assert "site-packages" in server.__file__, server.__file__
        one_round_of_each_exchange()
        print(torch.__version__, torchvision.__version__)
    """)], cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-3000:]
    versions = [v.split("+")[0] for v in check.stdout.split()[-2:]]  # "+cu130": the build, kept too
    assert versions == [OLDEST["torch"], OLDEST["torchvision"]]
