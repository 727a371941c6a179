"""Where one ``obfuscate`` call spends its time: host operators, device kernels, syncs.

    python -m simulations.bench.profile_obfuscation [--batch 256] [--size 32] [--device auto]
                                              [--data-dir DIR] [--trace FILE] [--cuda-graphs]

Prints one JSON line: the call's wall time (median of ``--repeats``), how many PyTorch
operators it dispatches, and on CUDA how many device operations it queues (``kernels``:
kernels, copies and fills), their summed device time and how many times the host waits
for the device. When the kernels' time is a small
part of the wall time, the call is bound by per-operator host overhead (launches,
dispatch, syncs) rather than by memory or arithmetic: fusing operators, not faster
kernels, is what would speed it up. ``--trace`` writes a Chrome trace of one call;
``--cuda-graphs`` replays the first attempt as a CUDA graph (``_graphs.py``), and on CUDA
``allocated_mb`` and ``reserved_mb`` say what the calls left on the device (the graphs' memory).
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile

from common.data import load_dataset
from common.training import resolve_device
from common.visualmixer import DEFAULT_TARGET_VFE, _graphs, obfuscate
from simulations.bench.obfuscation import images, interleaved_seconds

# 8-px regions at every image size, as the figures in docs/benchmarks.md were measured
# (a run at 224x224 uses 32-px regions: common.defaults.default_region_size).
REGION_SIZE = 8

# Host-side runtime calls that wait for the device.
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def top_level_operators(events) -> list:
    """The PyTorch operators the caller dispatched (not those they call in turn)."""
    return [e for e in events if e.name.startswith("aten::") and e.cpu_parent is None]


def operators_of(fn) -> int:
    """How many PyTorch operators one call of ``fn`` dispatches."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return len(top_level_operators(prof.events()))


def profile_call(x: torch.Tensor, target: float, repeats: int, trace: str | None = None) -> dict:
    device = x.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    for _ in range(2):  # warm-up: lazy module loading, cached tables, allocator (and graphs)
        obfuscate(x, target, region_size=REGION_SIZE)
    seconds = interleaved_seconds({"call": lambda: obfuscate(x, target, region_size=REGION_SIZE)}, repeats, device)["call"]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        obfuscate(x, target, region_size=REGION_SIZE)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if trace:
        prof.export_chrome_trace(trace)
    events = prof.events()
    operators = top_level_operators(events)
    row = {
        "device": str(device),
        "batch": x.shape[0],
        "size": x.shape[-1],
        "wall_ms": round(seconds * 1e3, 3),
        "operators": len(operators),
    }
    if device.type == "cuda":
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        row["kernels"] = len(kernels)
        row["kernel_ms"] = round(sum(e.time_range.elapsed_us() for e in kernels) / 1e3, 3)
        row["syncs"] = sum(1 for e in events if e.name.startswith(SYNC_CALLS))
        row["kernel_share_of_wall"] = round(row["kernel_ms"] / row["wall_ms"], 3)
        # What the calls leave behind: live tensors (cached tables; a graph's inputs and
        # outputs) and reserved memory (the allocator's cache; a graph's private pool).
        row["allocated_mb"] = round((torch.cuda.memory_allocated(device) - allocated) / 2**20, 1)
        row["reserved_mb"] = round((torch.cuda.memory_reserved(device) - reserved) / 2**20, 1)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--target-vfe", type=float, default=DEFAULT_TARGET_VFE)
    parser.add_argument("--data-dir", default="", help="an ImageFolder tree: profile its 32x32 test images")
    parser.add_argument("--trace", default="", help="write a Chrome trace of one call here")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay the first attempt as a CUDA graph (without it: eager, whatever VISUALMIXER_CUDA_GRAPHS says)")
    args = parser.parse_args(argv)
    pool = load_dataset("folder", "test", args.data_dir).images if args.data_dir else None
    x = images(args.batch, args.size, pool).to(resolve_device(args.device))
    with _graphs.switched(args.cuda_graphs):
        row = profile_call(x, args.target_vfe, args.repeats, args.trace or None)
    print(json.dumps({**row, "cuda_graphs": args.cuda_graphs and x.device.type == "cuda"}), flush=True)


if __name__ == "__main__":
    main()
