"""CUDA graphs for ``obfuscate``'s first attempt (experimental, off by default).

On a GPU an ``obfuscate`` call is bound by host overhead, not by the device: an H100 was
busy for 0.41 ms of a 3.97 ms call on 256 CIFAR images, the rest went to dispatching about
250 PyTorch operators one by one (docs/gpu.md). A CUDA graph replays a recorded sequence
of kernels with one launch. The first attempt (plan, shuffle with fixed shapes, measured
VFE) is recorded once per (static arguments, input shapes and dtypes, seeded or not,
device), after two warm-up runs on a side stream that fill the module's cached tables,
and kept in a small LRU. The rare retries work on data-dependent subsets and stay eager.

Randomness: a graph's random kernels read their generator's seed and offset at each replay
(PyTorch's graph-safe RNG), so replays draw fresh numbers; unseeded calls use the device's
default generator, seeded ones a generator registered with the graph and re-seeded before
each replay, which makes a seeded call give the same bits as running the same stages
eagerly from a fresh generator with that seed (the fallback below does exactly that).

Before a graph is used, one replay must give the bits of the same stages run eagerly from
the same generator state (a graph that froze its random draws would fail this). A replay
copies the arguments into the recorded inputs and returns the recorded outputs, which the
next replay of the same graph overwrites: callers hold :data:`LOCK` for as long as they use
them. If recording or that check fails, the key runs eagerly from then on, with one warning.

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

from .shuffle import make_generator

ENV = "VISUALMIXER_CUDA_GRAPHS"
MAX_GRAPHS = 8
WARMUP_RUNS = 2

Stage = Callable[..., tuple[torch.Tensor, ...]]  # called as fn(*tensors, generator=...)

LOCK = threading.RLock()
_graphs: OrderedDict[Hashable, _Recorded | None] = OrderedDict()
_switch: list[bool] = []  # innermost :func:`switched` wins over the environment


_ON, _OFF = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def enabled(device: torch.device) -> bool:
    """Whether ``obfuscate`` records and replays graphs for tensors on ``device``."""
    if device.type != "cuda":
        return False
    if _switch:
        return _switch[-1]
    value = os.environ.get(ENV, "0")
    flag = value.strip().lower()
    if flag not in _ON + _OFF:
        raise ValueError(f"{ENV} must be one of {', '.join(_ON + _OFF[1:])}; got {value!r}")
    return flag in _ON


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
    """One captured graph with its static inputs and outputs (and generator, if seeded)."""

    def __init__(self, fn: Stage, args: tuple[torch.Tensor, ...], seeded: bool):
        device = args[0].device
        with torch.cuda.device(device):
            self.generator = torch.Generator(device=device) if seeded else None
            self.inputs = tuple(a.clone() for a in args)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    fn(*self.inputs, generator=self.generator)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            if self.generator is not None:
                self.graph.register_generator_state(self.generator)
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.outputs = fn(*self.inputs, generator=self.generator)

    def __call__(self, args: tuple[torch.Tensor, ...], seed: int | None) -> tuple[torch.Tensor, ...]:
        for static, arg in zip(self.inputs, args):
            static.copy_(arg)
        if self.generator is not None:
            self.generator.manual_seed(int(seed))
        self.graph.replay()
        return self.outputs


def run(
    name: str,
    static: Hashable,
    fn: Stage,
    args: tuple[torch.Tensor, ...],
    seed: int | None,
) -> tuple[tuple[torch.Tensor, ...], torch.Generator | None]:
    """``fn(*args, generator=...)`` through a graph recorded for this (name, static,
    argument shapes, seeded or not); returns its outputs and the generator it drew from,
    which the caller's further draws continue (None: the device's default one).

    ``fn`` must be free of host syncs and of data-dependent shapes and depend on nothing
    but ``args``, ``static`` and its generator. Call with :data:`LOCK` held.
    """
    device = args[0].device
    key = (name, static, seed is not None, device, tuple((a.shape, a.dtype) for a in args))
    if key not in _graphs:
        try:
            recorded = _Recorded(fn, args, seeded=seed is not None)
            _check_replay(recorded, fn, args)
            _graphs[key] = recorded
        except Exception as error:  # recording is an optimisation: fall back, say so once
            warnings.warn(f"VisualMixer: CUDA graph for {name} not recorded ({error!r}); running eagerly")
            _graphs[key] = None
        while len(_graphs) > MAX_GRAPHS:
            _graphs.popitem(last=False)
    _graphs.move_to_end(key)
    recorded = _graphs[key]
    if recorded is None:
        generator = make_generator(seed, device)
        return fn(*args, generator=generator), generator
    return recorded(args, seed), recorded.generator


def _check_replay(recorded: _Recorded, fn: Stage, args: tuple[torch.Tensor, ...]) -> None:
    """Raise unless a replay gives the bits of ``fn`` run eagerly from the same generator
    state: a graph that froze its random draws, or recorded anything else than ``fn``
    computes, is never used. Runs once per recorded graph."""
    device = args[0].device
    if recorded.generator is not None:
        replayed = recorded(args, _CHECK_SEED)
        expected = fn(*args, generator=make_generator(_CHECK_SEED, device))
    else:
        default = _default_generator(device)
        state = default.get_state()
        replayed = recorded(args, None)
        default.set_state(state)
        expected = fn(*args, generator=None)
    if not all(_same(a, b) for a, b in zip(replayed, expected, strict=True)):
        raise RuntimeError("a replay differs from the same stages run eagerly")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bits for integers (images, rungs, indices); floats may differ in the last
    place if the library picks another kernel inside the graph."""
    if a.is_floating_point():
        return torch.allclose(a, b, rtol=1e-5, atol=1e-7, equal_nan=True)
    return torch.equal(a, b)


_CHECK_SEED = 20241127


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def clear() -> None:
    """Drop every recorded graph (their memory goes back to the caching allocator)."""
    with LOCK:
        _graphs.clear()
