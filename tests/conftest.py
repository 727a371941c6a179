"""Shared fixtures: small real-looking images, the optional CIFAR-10 copy, and obfuscate's
CUDA-graph path played on the CPU."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch

from common.shapes import generate_shapes

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


@pytest.fixture(scope="session", autouse=True)
def decoded_image_cache(tmp_path_factory) -> Path:
    """Decoded folder data sets are cached in a tmp dir, not the user's ~/.cache (child
    processes, Flower's included, inherit it)."""
    from common.data import CACHE_ENV

    path = tmp_path_factory.mktemp("decoded-cache")
    os.environ[CACHE_ENV] = str(path)
    return path


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


class ReplayOnCpu:
    """Stands in for a recorded CUDA graph (``common/visualmixer/_graphs.py``) on the CPU with
    a graph's semantics: fixed input tensors the arguments are copied into, fixed output
    tensors that every replay overwrites in place, and a generator of its own, re-seeded
    before each seeded replay (unseeded replays draw from the global generator)."""

    def __init__(self, fn, args, seeded):
        self.fn = fn
        self.generator = torch.Generator() if seeded else None
        self.inputs = tuple(a.clone() for a in args)
        self.outputs = tuple(t.clone() for t in fn(*self.inputs, generator=self.generator))

    def __call__(self, args, seed):
        for static, arg in zip(self.inputs, args):
            static.copy_(arg)
        if self.generator is not None:
            self.generator.manual_seed(seed)
        for static, fresh in zip(self.outputs, self.fn(*self.inputs, generator=self.generator)):
            static.copy_(fresh)
        return self.outputs


@pytest.fixture
def replayed_on_cpu(monkeypatch):
    """obfuscate takes its graph path (the fixed-shape shuffle) on the CPU: a batch shape's
    first two calls run it eagerly (the second also records), later ones replay it through
    :class:`ReplayOnCpu`."""
    from common.visualmixer import _graphs

    monkeypatch.setattr(_graphs, "enabled", lambda device: True)
    monkeypatch.setattr(_graphs, "_Recorded", ReplayOnCpu)
    _graphs.clear()
    yield
    _graphs.clear()


@pytest.fixture(params=["grouped", "fixed shapes"])
def either_shuffle(request):
    """Runs a test with the grouped shuffle (CPU, eager CUDA) and with the fixed-shape one
    (CUDA graphs), which must deal the same pools the same way."""
    if request.param == "fixed shapes":
        request.getfixturevalue("replayed_on_cpu")
    return request.param


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    """A small ImageFolder tree (train/ and test/, 10 classes) of the embedded shapes as PNGs."""
    from PIL import Image

    root = tmp_path_factory.mktemp("shapes-folder")
    for split, count, seed in (("train", 200, 1), ("test", 60, 2)):
        images, labels = generate_shapes(count, seed=seed)
        for i, (image, label) in enumerate(zip(images, labels.tolist())):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def simulation_env(tmp_path_factory):
    """Environment for ``flwr run`` against a local SuperLink of its own: a temp FLWR_HOME,
    free ports; the SuperLink and the simulation processes it launched are stopped after."""
    import signal

    from server.flwr_cli import stop_local_superlink
    from tests.test_deployment import flwr_env, free_port
    from tests.test_simulation import superlink_pids

    env = flwr_env(tmp_path_factory.mktemp("flwr-sim-home"))
    port = free_port()
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(port)
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(free_port())
    yield env
    stop_local_superlink(Path(env["FLWR_HOME"]))
    for pid in superlink_pids(port):
        os.kill(pid, signal.SIGTERM)
