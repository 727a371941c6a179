"""CUDA graphs for the deterministic stages of ``obfuscate`` (experimental, off by default).

On a GPU an ``obfuscate`` call is bound by host overhead, not by the device: an H100 was
busy for 0.41 ms of a 3.97 ms call on 256 CIFAR images, the rest went to dispatching about
250 PyTorch operators one by one (docs/gpu.md). A CUDA graph replays a recorded sequence
of kernels with one launch. Only the two stages that draw no random numbers are recorded:

* the plan (regions, their statistics, importance, margin and rungs), and
* the measurement of the first draw's VFE,

so every random draw (the shuffle, and the rare retries, which work on data-dependent
subsets) stays eager and uses the caller's generator exactly as without graphs: seeded
calls give the same bits with graphs on or off, and nothing random is frozen into a graph.

Each stage is recorded once per (stage, static arguments, input shapes and dtypes,
device), after two warm-up runs on a side stream (which fill the module's cached tables),
and kept in a small LRU. A replay copies the arguments into the recorded inputs and
returns the recorded outputs, which the next replay of the same graph overwrites: callers
hold :data:`LOCK` for as long as they use them. If recording fails, the stage runs
eagerly for that key from then on, with one warning.

Switch: environment variable ``VISUALMIXER_CUDA_GRAPHS=1`` (or :func:`switched` in code,
as the benchmarks do). Off by default until it has been measured on a GPU (the recording
needs one; see docs/gpu.md).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

import torch

ENV = "VISUALMIXER_CUDA_GRAPHS"
MAX_GRAPHS = 8
WARMUP_RUNS = 2

LOCK = threading.RLock()
_graphs: OrderedDict[Hashable, _Recorded | None] = OrderedDict()
_switch: list[bool] = []  # innermost :func:`switched` wins over the environment


def enabled(device: torch.device) -> bool:
    """Whether ``obfuscate`` records and replays graphs for tensors on ``device``."""
    if device.type != "cuda":
        return False
    if _switch:
        return _switch[-1]
    return os.environ.get(ENV, "0").strip().lower() in ("1", "true", "yes", "on")


@contextmanager
def switched(on: bool) -> Iterator[None]:
    """Graphs on or off inside the block, whatever the environment says (this thread's
    and every other's: for benchmarks and tests)."""
    _switch.append(bool(on))
    try:
        yield
    finally:
        _switch.pop()


class _Recorded:
    """One captured graph with its static inputs and outputs."""

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]], args: tuple[torch.Tensor, ...]):
        device = args[0].device
        with torch.cuda.device(device):
            self.inputs = tuple(a.clone() for a in args)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    fn(*self.inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.outputs = fn(*self.inputs)

    def __call__(self, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        for static, arg in zip(self.inputs, args):
            static.copy_(arg)
        self.graph.replay()
        return self.outputs


def run(
    name: str,
    static: Hashable,
    fn: Callable[..., tuple[torch.Tensor, ...]],
    args: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, ...]:
    """``fn(*args)`` through a graph recorded for this (name, static, argument shapes).

    ``fn`` must be deterministic, free of host syncs and of data-dependent shapes, and
    depend on nothing but ``args`` and ``static``. Call with :data:`LOCK` held.
    """
    key = (name, static, args[0].device, tuple((a.shape, a.dtype) for a in args))
    if key not in _graphs:
        try:
            _graphs[key] = _Recorded(fn, args)
        except Exception as error:  # recording is an optimisation: fall back, say so once
            warnings.warn(f"VisualMixer: CUDA graph for {name} not recorded ({error!r}); running eagerly")
            _graphs[key] = None
        while len(_graphs) > MAX_GRAPHS:
            _graphs.popitem(last=False)
    _graphs.move_to_end(key)
    recorded = _graphs[key]
    return fn(*args) if recorded is None else recorded(args)


def clear() -> None:
    """Drop every recorded graph (their memory goes back to the caching allocator)."""
    with LOCK:
        _graphs.clear()
