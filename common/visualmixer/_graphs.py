"""CUDA graphs for ``obfuscate``'s first attempt (on by default on CUDA).

On a GPU an ``obfuscate`` call is bound by host overhead: most of it goes to dispatching a
few hundred PyTorch operators one by one (docs/gpu.md); a CUDA graph replays them with one
launch. The first attempt (plan, shuffle with fixed shapes, measured VFE) is recorded per
(static arguments, input shapes and dtypes, seeded or not, device) when such a key is
called the second time, and kept in a small LRU, so a shape used once never pays for a
recording. The rare retries work on data-dependent subsets and stay eager.

Randomness: a graph's random kernels read their generator's seed and offset at each replay
(PyTorch's graph-safe RNG), so replays draw fresh numbers; unseeded calls use the device's
default generator, seeded ones a generator registered with the graph and re-seeded before
each replay, which makes a seeded call give the same bits as running the same stages
eagerly from a fresh generator with that seed (the fallback below does exactly that).

Before a graph is used, one replay must give the bits of the same stages run eagerly from
the same generator state (a graph that froze its random draws would fail this). A replay
returns the recorded outputs, which the next replay of the same graph overwrites: callers
hold :data:`LOCK` while they use them. If recording or that check fails, the key runs
eagerly from then on, with one warning.

Switch: environment variable ``VISUALMIXER_CUDA_GRAPHS=0`` turns them off (or
:func:`switched` in code, as the benchmarks do); docs/gpu.md has the measurements.
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
MAX_SEEN = 64  # keys called once, remembered so that their second call records

Stage = Callable[..., tuple[torch.Tensor, ...]]  # called as fn(*tensors, generator=...)

LOCK = threading.RLock()
_graphs: OrderedDict[Hashable, _Recorded | None] = OrderedDict()
_seen: OrderedDict[Hashable, None] = OrderedDict()
_switch: list[bool] = []  # innermost :func:`switched` wins over the environment


_ON, _OFF = ("", "1", "true", "yes", "on"), ("0", "false", "no", "off")


def enabled(device: torch.device) -> bool:
    """Whether ``obfuscate`` records and replays graphs for tensors on ``device``."""
    if device.type != "cuda":
        return False
    if _switch:
        return _switch[-1]
    value = os.environ.get(ENV, "1")
    flag = value.strip().lower()
    if flag not in _ON + _OFF:
        raise ValueError(f"{ENV} must be one of {', '.join(_ON[1:] + _OFF)}; got {value!r}")
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
    """One captured graph with its static inputs and outputs (and generator, if seeded).

    Capturing runs nothing: the outputs hold garbage until the first replay. The key was
    run eagerly just before (see :func:`run`), so the module's cached tables exist and
    every kernel is loaded: no warm-up runs are needed.
    """

    def __init__(self, fn: Stage, args: tuple[torch.Tensor, ...], seeded: bool):
        device = args[0].device
        with torch.cuda.device(device):
            self.generator = torch.Generator(device=device) if seeded else None
            self.inputs = tuple(a.clone() for a in args)
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
    """``fn(*args, generator=...)``, through a graph once this (name, static, argument shapes
    and dtypes, seeded or not, device) comes back; returns its outputs and the generator it
    drew from, which the caller's further draws continue (None: the device's default one).

    A key's first call runs eagerly: a shape seen once (an evaluation set, a ClientApp
    process that handles one message) never pays for a recording. Its second call runs
    eagerly too, and the graph is recorded and checked against that run; later calls replay.

    ``fn`` must be free of host syncs and of data-dependent shapes and depend on nothing
    but ``args``, ``static`` and its generator. Call with :data:`LOCK` held.
    """
    device = args[0].device
    key = (name, static, seed is not None, device, tuple((a.shape, a.dtype) for a in args))
    if key in _graphs:
        _graphs.move_to_end(key)
        recorded = _graphs[key]
        if recorded is not None:
            return recorded(args, seed), recorded.generator
        return _eagerly(fn, args, seed)
    if key not in _seen:
        _seen[key] = None
        while len(_seen) > MAX_SEEN:
            _seen.popitem(last=False)
        return _eagerly(fn, args, seed)
    del _seen[key]
    default = _default_generator(device)
    before = default.get_state()
    outputs, generator = _eagerly(fn, args, seed)
    after = default.get_state()
    try:
        recorded = _Recorded(fn, args, seeded=seed is not None)
        _check_replay(recorded, args, seed, before, outputs)
    except Exception as error:  # recording is an optimisation: fall back, say so once
        warnings.warn(f"VisualMixer: CUDA graph for {name} not recorded ({error!r}); running eagerly")
        recorded = None
    finally:  # the default generator continues from the eager run, whatever the check drew
        default.set_state(after)
    _graphs[key] = recorded
    while len(_graphs) > MAX_GRAPHS:
        _graphs.popitem(last=False)
    return outputs, generator


def _eagerly(
    fn: Stage, args: tuple[torch.Tensor, ...], seed: int | None
) -> tuple[tuple[torch.Tensor, ...], torch.Generator | None]:
    generator = make_generator(seed, args[0].device)
    return fn(*args, generator=generator), generator


def _check_replay(
    recorded: _Recorded,
    args: tuple[torch.Tensor, ...],
    seed: int | None,
    before: torch.Tensor,
    expected: tuple[torch.Tensor, ...],
) -> None:
    """Raise unless a replay gives ``expected``, what ``fn`` gave eagerly from the same
    generator state (for an unseeded call, the default generator's state ``before`` it): a
    graph that froze its random draws, or recorded anything else than ``fn`` computes, is
    never used."""
    if seed is None:
        _default_generator(args[0].device).set_state(before)
    replayed = recorded(args, seed)
    if not all(_same(a, b) for a, b in zip(replayed, expected, strict=True)):
        raise RuntimeError("a replay differs from the same stages run eagerly")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bits for integers (images, rungs, indices); floats may differ in the last
    place if the library picks another kernel inside the graph."""
    if a.is_floating_point():
        return torch.allclose(a, b, rtol=1e-5, atol=1e-7, equal_nan=True)
    return torch.equal(a, b)


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def clear() -> None:
    """Drop every recorded graph (their memory goes back to the caching allocator) and
    forget the keys seen once."""
    with LOCK:
        _graphs.clear()
        _seen.clear()
