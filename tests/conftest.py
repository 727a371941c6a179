"""Shared fixtures: small real-looking images and the optional CIFAR-10 copy."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch

from common.shapes import generate_shapes

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


@pytest.fixture(scope="session")
def shapes_batch() -> torch.Tensor:
    images, _ = generate_shapes(64, seed=123)
    return images


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """The shared CIFAR-10 JPEG tree, unpacked once per session (skips when absent)."""
    archive = Path(os.environ.get("CIFAR10_JPG", SHARED_CIFAR))
    if not archive.exists():
        pytest.skip(f"CIFAR-10 archive not found at {archive} (../shared/data is optional)")
    root = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(("test/", "./test/"))]
        tar.extractall(root, members=members, filter="data")
    return root
