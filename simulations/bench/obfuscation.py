"""Throughput of the full VisualMixer transform against the least work any shuffle must do.

    python -m simulations.bench.obfuscation [--repeats N] [--target-vfe X] [--data-dir DIR]

Prints one JSON line per configuration (32x32 uint8 batches of 1024 and of 256, a client's
upload per round, and 224x224 uint8 batch 32; on CPU and on CUDA when present), each
measured in the same run on the same batch:

* ``transform_ips``: images/s of ``obfuscate`` (VFE + plan + shuffle + measured VFE);
* ``gather_ips``: images/s of one ``torch.gather`` of the batch with a precomputed index;
* ``train_step_ips`` (32x32 only): images/s of one small-CNN training step (Adam);
* ``transform_vs_gather``: how many gathers one transform costs (goal: <= 10);
* ``overhead_vs_train_step``: transform time / training-step time per image (goal: < 5%);
* on CUDA, ``graphs_ips`` and ``graphs_speedup``: the same transform with its first attempt
  replayed as a CUDA graph (``common/visualmixer/_graphs.py``), interleaved with the
  eager one, and eager time / graphs time; ``graphs_first_calls_ms``: wall time of the
  first four calls on a batch of a new shape (the first runs eagerly, the second also
  records and checks the graph, the others replay it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common.data import load_dataset
from common.models import build_model
from common.shapes import generate_shapes
from common.training import to_model_input
from common.visualmixer import DEFAULT_TARGET_VFE, _graphs, obfuscate

# 8-px regions at every image size, as the figures in docs/benchmarks.md were measured
# (a run at 224x224 uses 32-px regions: common.defaults.default_region_size).
REGION_SIZE = 8


def wall_seconds(fn, device: torch.device) -> float:
    """Wall time of one call of ``fn``, until the device has finished its work too."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_seconds(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall time of each function, timed in turns (a, b, c, a, b, c, ...) after one
    warm-up round, so machine noise hits every function alike and the ratios hold."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            seconds = wall_seconds(fn, device)
            if round_:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def images(batch: int, size: int, pool: torch.Tensor | None = None) -> torch.Tensor:
    """``batch`` 32x32 images (evenly spaced through ``pool``, else generated ``shapes``),
    upscaled to ``size``."""
    if pool is None:
        x, _ = generate_shapes(batch, seed=0)
    else:
        if len(pool) < batch:
            raise ValueError(f"--data-dir holds {len(pool)} test images, fewer than batch {batch}")
        x = pool[torch.arange(batch) * (len(pool) // batch)]
    if size != 32:
        x = torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear")
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


def bench(
    batch: int, size: int, device: torch.device, target: float, repeats: int, pool: torch.Tensor | None = None
) -> dict:
    x = images(batch, size, pool).to(device)
    flat = x.view(batch, -1)
    index = torch.rand(flat.shape, device=device).argsort(1)

    def obfuscate_with(graphs: bool) -> None:
        with _graphs.switched(graphs):
            obfuscate(x, target, region_size=REGION_SIZE)

    fns = {
        "gather": lambda: torch.gather(flat, 1, index),
        "transform": lambda: obfuscate_with(False),
    }
    if device.type == "cuda":
        fns["graphs"] = lambda: obfuscate_with(True)
    if size == 32:
        model = build_model("small-cnn").to(device)
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        labels = torch.randint(0, 10, (batch,), device=device)

        def step() -> None:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(to_model_input(x)), labels).backward()
            optimizer.step()

        fns["train"] = step
    first_calls = []
    if device.type == "cuda":  # before the interleaved runs, which then only replay
        _graphs.clear()
        first_calls = [wall_seconds(fns["graphs"], device) for _ in range(4)]
    seconds = interleaved_seconds(fns, repeats, device)
    gather, transform = seconds["gather"], seconds["transform"]
    row = {
        "device": device.type,
        "size": size,
        "batch": batch,
        "target_vfe": target,
        "transform_ips": round(batch / transform, 1),
        "gather_ips": round(batch / gather, 1),
        "transform_vs_gather": round(transform / gather, 2),
    }
    if "graphs" in seconds:
        row["graphs_ips"] = round(batch / seconds["graphs"], 1)
        row["graphs_speedup"] = round(transform / seconds["graphs"], 2)
        row["graphs_first_calls_ms"] = [round(1000 * t, 2) for t in first_calls]
    if "train" in seconds:
        row["train_step_ips"] = round(batch / seconds["train"], 1)
        row["overhead_vs_train_step"] = round(transform / seconds["train"], 4)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--target-vfe", type=float, default=DEFAULT_TARGET_VFE)
    parser.add_argument(
        "--data-dir", default="",
        help="an ImageFolder tree (DIR/test/<class>/...): time its 32x32 test images instead of shapes",
    )
    args = parser.parse_args(argv)
    pool = load_dataset("folder", "test", args.data_dir).images if args.data_dir else None
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}))
    for device in devices:
        for batch, size in ((1024, 32), (256, 32), (32, 224)):
            row = bench(batch, size, device, args.target_vfe, args.repeats, pool)
            print(json.dumps({"images": "folder" if args.data_dir else "shapes", **row}), flush=True)


if __name__ == "__main__":
    main()
