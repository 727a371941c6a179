"""The console's view of a SuperLink, through the `flwr` CLI: runs, nodes, and stop.

Every `flwr` call is a process start (about 1.5 CPU-seconds), so answers are kept for a
few seconds and shared by every page that asks. The managed local SuperLink (connection
address ``:local:``) is only asked while it is running: `flwr` would otherwise start one.
"""

from __future__ import annotations

import subprocess
import threading
import time
import tomllib
from typing import Any

from server.flwr_cli import FlwrError, flwr_home, flwr_json, local_superlinks

CACHE_SECONDS = 10.0


class SuperLinkError(RuntimeError):
    """A `flwr` command against the SuperLink failed; the message says how."""


class FlowerLink:
    """One SuperLink connection of ``$FLWR_HOME/config.toml``, by name."""

    def __init__(self, connection: str, cache_seconds: float = CACHE_SECONDS) -> None:
        self.connection = connection
        self.cache_seconds = cache_seconds
        self._cache: dict[tuple[str, ...], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def is_local(self) -> bool:
        try:
            config = tomllib.loads((flwr_home() / "config.toml").read_text())
        except (OSError, tomllib.TOMLDecodeError):
            return self.connection == "local"
        address = config.get("superlink", {}).get(self.connection, {}).get("address", "")
        return str(address).startswith(":local")

    def available(self) -> tuple[bool, str]:
        """Whether asking will not start anything: False with the reason for a local
        SuperLink that is not running."""
        if self.is_local() and not local_superlinks():
            return False, "the local SuperLink is not running (it starts with the next `flwr run`)"
        return True, ""

    def _json(self, *args: str, cached: bool = True) -> dict[str, Any]:
        key = args
        with self._lock:
            hit = self._cache.get(key)
            if cached and hit and time.monotonic() - hit[0] < self.cache_seconds:
                return hit[1]
            ok, why = self.available()
            if not ok:
                raise SuperLinkError(why)
            try:
                data = flwr_json(*args, self.connection, timeout=60)
            except subprocess.TimeoutExpired as err:
                raise SuperLinkError(f"`flwr {' '.join(args)}` did not answer within 60 s") from err
            except FlwrError as err:
                raise SuperLinkError(str(err)) from err
            self._cache[key] = (time.monotonic(), data)
            return data

    def runs(self) -> dict[str, dict[str, Any]]:
        """``flwr list`` rows by run id (as a string)."""
        return {str(row["run-id"]): row for row in self._json("list").get("runs", [])}

    def nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list`` rows: node id, status, when online/offline."""
        return list(self._json("supernode", "list").get("nodes", []))

    def stop(self, run_id: int) -> dict[str, Any]:
        """``flwr stop RUN_ID``; forgets cached run lists so the next page sees it."""
        data = self._json("stop", str(run_id), cached=False)
        with self._lock:
            self._cache.pop(("list",), None)
        return data
