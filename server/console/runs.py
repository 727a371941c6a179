"""What the console reads from a runs dir: one folder per run, as ``server.run_store``
writes it, and the output folders of ``simulations.compare``.

Only names the console itself lists are served: a run name is one path component of
letters, digits, ``.``, ``_`` and ``-``, and a file is one of a fixed set, resolved
(symlinks included) inside the runs dir. Anything else is "not found".
"""

from __future__ import annotations

import csv
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.run_store import read_json_object

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
RUN_FILES = ("config.json", "metrics.jsonl", "events.jsonl", "summary.json", "samples.png", "final_model.pt")
COMPARE_FILES = ("results.csv", "report.md", "accuracy_per_round.png", "privacy_utility.png", "gallery.png")
# A run folder without summary.json whose files changed this recently is taken as running
# when no SuperLink says otherwise.
ACTIVE_SECONDS = 600.0


class NotFound(LookupError):
    """A run, compare folder or file the console does not serve."""


def safe_child(root: Path, name: str, allowed: tuple[str, ...] | None = None) -> Path:
    """``root/name`` when ``name`` is a plain name (and in ``allowed``, if given) whose
    resolved path stays inside ``root``; otherwise :class:`NotFound`."""
    if not NAME.match(name) or (allowed is not None and name not in allowed):
        raise NotFound(name)
    path = root / name
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as err:
        raise NotFound(name) from err
    if not resolved.is_relative_to(root.resolve()):
        raise NotFound(name)
    return path


@dataclass
class JsonLines:
    """The rows of a JSONL file, and the lines skipped (half-written or malformed)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def read_jsonl(path: Path) -> JsonLines:
    """Every line that is a JSON object; a line being written (no newline yet) or broken
    is skipped with a note, never an error."""
    result = JsonLines()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return result
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            last = number == len(lines)  # no newline after it: still being written
            result.skipped.append(f"{path.name} line {number}: {'incomplete' if last else 'not valid JSON'}")
            continue
        if isinstance(row, dict):
            result.rows.append(row)
        else:
            result.skipped.append(f"{path.name} line {number}: not a JSON object")
    return result


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class RunFolder:
    """One run's folder and what its files say."""

    name: str
    path: Path

    @property
    def config(self) -> dict[str, Any]:
        return read_json_object(self.path / "config.json")

    @property
    def summary(self) -> dict[str, Any]:
        return read_json_object(self.path / "summary.json")

    def metrics(self) -> JsonLines:
        return read_jsonl(self.path / "metrics.jsonl")

    def events(self) -> JsonLines:
        return read_jsonl(self.path / "events.jsonl")

    def last_modified(self) -> float:
        times = [p.stat().st_mtime for p in self.path.iterdir() if p.is_file()]
        return max(times, default=self.path.stat().st_mtime)

    def flower_run_ids(self) -> list[int]:
        ids = self.config.get("flower-run-ids", [])
        return [int(i) for i in ids if isinstance(i, int)] if isinstance(ids, list) else []

    def folder_status(self) -> tuple[str, str]:
        """(status, reason) from the files alone, in Flower's words."""
        summary = self.summary
        if summary:
            return f"finished:{summary.get('status', 'unknown')}", str(summary.get("message", ""))
        if time.time() - self.last_modified() < ACTIVE_SECONDS:
            return "running", ""
        return "unknown", "no summary.json, and nothing written for a while: stopped or killed"

    def overview(self, flower: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The runs page's row. ``flower``: ``flwr list`` rows by run id; when the SuperLink
        knows the run's latest Flower run, its status wins over the files'."""
        config = self.config.get("run_config", {})
        rows = self.metrics().rows
        completed = [r for r in rows if r.get("status") == "completed"]
        last = completed[-1] if completed else {}
        status, reason = self.folder_status()
        ids = self.flower_run_ids()
        flower_row = (flower or {}).get(str(ids[-1])) if ids else None
        if flower_row:
            flower_status = str(flower_row.get("status", ""))
            details = str(flower_row.get("status-details") or "")
            if flower_status:
                status = flower_status
                reason = details if details not in ("", "N/A") else reason
        started = self.path.stat().st_mtime
        config_path = self.path / "config.json"
        if config_path.exists():
            started = config_path.stat().st_ctime
        return {
            "name": self.name,
            "status": status,
            "reason": reason,
            "flower-run-id": str(ids[-1]) if ids else None,  # 64-bit: a string for JavaScript
            "exchange": config.get("exchange"),
            "defense": config.get("defense"),
            "dataset": config.get("dataset"),
            "model": config.get("model"),
            "rounds-done": len(completed),
            "rounds-planned": config.get("num-server-rounds"),
            "federated-accuracy": _number(last.get("federated-accuracy")),
            "central-accuracy": _number(last.get("central-accuracy")),
            "elapsed": round(sum(_number(r.get("seconds")) or 0.0 for r in completed), 1),
            "started-at": started,
        }

    def detail(self, flower: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything the run page shows: the overview, the rounds, the events, the
        resolved config and which files can be downloaded."""
        metrics, events = self.metrics(), self.events()
        return {
            **self.overview(flower),
            "rounds": metrics.rows,
            # Warnings the server attached to rounds (e.g. a run that is not learning).
            "warnings": [f"round {r.get('round')}: {r['warning']}" for r in metrics.rows if r.get("warning")],
            "events": events.rows[-500:],
            "nodes": last_outcomes(events.rows),
            "skipped-lines": metrics.skipped + events.skipped,
            "run-config": self.config.get("run_config", {}),
            # What the run's defense adds to the page (charts, headline); None if unknown here.
            "defense-info": describe_defense(self.config.get("run_config", {}).get("defense")),
            "versions": self.config.get("versions", {}),
            "summary": self.summary,
            "files": [name for name in RUN_FILES if (self.path / name).is_file()],
        }


def last_outcomes(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each node's last event: what became of its last reply."""
    latest: dict[str, dict[str, Any]] = {}
    for event in events:
        if "node" in event:
            latest[str(event["node"])] = event
    return latest


class RunsDir:
    """The runs dir the console serves."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _folders(self, marker: str) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            try:
                child = safe_child(self.root, path.name)
            except NotFound:
                continue
            if child.is_dir() and (child / marker).is_file():
                found.append(child)
        return found

    def runs(self) -> list[RunFolder]:
        return [RunFolder(p.name, p) for p in self._folders("config.json")]

    def run(self, name: str) -> RunFolder:
        path = safe_child(self.root, name)
        if not (path / "config.json").is_file():
            raise NotFound(name)
        return RunFolder(name, path)

    def run_file(self, name: str, file: str) -> Path:
        return safe_child(self.run(name).path, file, RUN_FILES)

    def comparisons(self) -> list[str]:
        return [p.name for p in self._folders("results.csv")]

    def comparison(self, name: str) -> dict[str, Any]:
        path = safe_child(self.root, name)
        table = path / "results.csv"
        if not table.is_file():
            raise NotFound(name)
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return {
            "name": name, "rows": rows, "columns": list(rows[0]) if rows else [],
            "plots": [f for f in COMPARE_FILES if f.endswith(".png") and (path / f).is_file()],
        }

    def comparison_file(self, name: str, file: str) -> Path:
        return safe_child(safe_child(self.root, name), file, COMPARE_FILES)


def describe_defense(name: Any) -> dict[str, Any] | None:
    """The registry's description of defense ``name`` (``common.defenses``), or None for a
    name this version does not know (a run written by another version)."""
    from common.defenses import DEFENSES

    defense = DEFENSES.get(name) if isinstance(name, str) else None
    return None if defense is None else defense.describe()
