"""Where a message's time goes inside the ClientApp process, returned with every reply.

Flower starts a fresh ClientApp process for every message in deployment (in simulation an
actor process answers many), so a reply says:

* ``stage-startup``: seconds from the process's start to the ClientApp module loaded
  (Python, Flower and the app's light modules); 0 when this process answered before;
* ``stage-imports``: importing what answering needs (torch, the exchanges); 0 when this
  process has imported them before;
* ``stage-setup``: the run config, the node's data (the decoded cache) and its exchange;
* ``stage-handler``: the message's own work (model, transform, training or forward pass,
  the reply's arrays); VisualMixer's share of it is ``obfuscation-seconds``;
* ``cpu-seconds``: CPU time of the process for this message (from its start on the first);
* ``peak-rss-mb``: the process's peak resident memory so far.

With a node worker (``client/worker.py``) the ClientApp process only forwards: it adds
``stage-forward`` (seconds from sending the message to the worker to its reply) and
``forwarder-peak-rss-mb``, and the setup, handler, CPU and memory figures are the worker's.

They are logged at debug level and the server keeps them in ``events.jsonl``.
"""

from __future__ import annotations

import os
import resource
import time
from contextlib import contextmanager

LOADED_AT = time.time()  # this module is imported with the ClientApp


def process_started_at() -> float | None:
    """When this process started (Unix time), from /proc on Linux; None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


_STARTED_AT = process_started_at()
_first_message = True


class StageTimer:
    """Seconds per stage of one message, and the process's CPU time and peak memory."""

    def __init__(self, count_startup: bool = True) -> None:
        """``count_startup``: the process's start-up belongs to its first message (a
        ClientApp process); a long-lived worker passes False."""
        global _first_message
        first = _first_message and count_startup
        self.metrics: dict[str, float] = {}
        if count_startup:
            startup = (LOADED_AT - _STARTED_AT) if first and _STARTED_AT is not None else 0.0
            self.metrics["stage-startup"] = max(0.0, startup)
        self._cpu_start = 0.0 if first else time.process_time()
        _first_message = False

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.metrics[f"stage-{name}"] = self.metrics.get(f"stage-{name}", 0.0) + time.perf_counter() - start

    @staticmethod
    def peak_rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def finish(self) -> dict[str, float]:
        self.metrics["cpu-seconds"] = time.process_time() - self._cpu_start
        self.metrics["peak-rss-mb"] = self.peak_rss_mb()
        return {k: round(v, 4) for k, v in self.metrics.items()}
