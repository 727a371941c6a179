"""Reusable scratch buffers for the large temporaries of one ``obfuscate`` call.

On small CPUs a fresh multi-megabyte tensor can cost more in page faults than the
arithmetic done in it (docs/benchmarks.md, "Obfuscation speed"), so the transform keeps its
large temporaries, per thread and per device, grown to the largest batch seen.

Rules that keep this safe: a scratch tensor is only used inside the call that asked for it
and is never returned to the caller; each name is used by one temporary at a time. CUDA
tensors are not kept, because PyTorch's caching allocator already reuses device memory.
Memory held: about 20 bytes per value of the largest batch (63 MB for 1024 images of
32x32x3: the regions, their float copy and differences, the int64 gather index, the
shuffled regions), released when the thread ends or :func:`release_scratch` is called.
"""

from __future__ import annotations

import math
import threading

import torch

_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` that may share memory with earlier calls' ``name``."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    numel = math.prod(shape)
    key = (name, dtype)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = torch.empty(numel, dtype=dtype)
        buffers[key] = buffer
    return buffer[:numel].view(shape)


def release_scratch() -> None:
    """Drop this thread's scratch buffers (the next call allocates them again)."""
    _local.buffers = {}
