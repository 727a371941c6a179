"""What a run leaves on disk in ``<output-dir>/<run-name>/``, and how it resumes.

* ``config.json``: the resolved run config and package versions;
* ``metrics.jsonl``: one JSON object per round (appended as rounds complete);
* ``events.jsonl``: what became of each reply (accepted, rejected with the reason, failed,
  silent), one JSON object per node and message;
* ``checkpoint.pt``: the state after the last completed round (written atomically);
* ``final_model.pt``: the trained model's state dict;
* ``samples.png``: a few uploads exactly as the server received them (``images`` exchange);
* ``summary.json``: written at the end, with the status of the run.

A run started again with the same run name finds ``checkpoint.pt`` and continues from the
round after the last completed one; the rounds already in ``metrics.jsonl`` stay.
"""

from __future__ import annotations

import json
import math
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def package_versions(*extra: str) -> dict[str, str]:
    """Python's version and the installed version of torch, torchvision, flwr, numpy and ``extra``."""
    versions = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "flwr", "numpy", *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (nested in dicts and lists) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when missing, unreadable or not an object (a run
    still being written, or killed mid-write)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RunStore:
    def __init__(self, output_dir: str, run_name: str) -> None:
        self.path = Path(output_dir).expanduser() / run_name
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def write_json(self, name: str, data: Any) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path / name)

    def write_config(self, config: dict[str, Any], flower_run_id: int | None = None) -> None:
        """``config.json``; ``flower-run-ids`` lists every Flower run that worked on this run
        (a resume is a new Flower run), so tools can join the folder with ``flwr list``."""
        ids = self.read_json("config.json").get("flower-run-ids", [])
        if flower_run_id is not None and flower_run_id not in ids:
            ids.append(flower_run_id)
        self.write_json("config.json", {"run_config": config, "versions": package_versions(), "flower-run-ids": ids})

    def read_json(self, name: str) -> dict[str, Any]:
        """A JSON file of the run as a dict; empty when missing or unreadable."""
        return read_json_object(self.path / name)

    def _append(self, name: str, row: dict[str, Any]) -> None:
        with open(self.path / name, "a") as f:
            f.write(json.dumps(_finite(row), default=float, allow_nan=False) + "\n")

    def append_metrics(self, row: dict[str, Any]) -> None:
        """One line of strict JSON: a non-finite number is written as null."""
        self._append("metrics.jsonl", row)

    def append_event(self, row: dict[str, Any]) -> None:
        """One line of ``events.jsonl`` (strict JSON, like the metrics)."""
        self._append("events.jsonl", row)

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short by a crash mid-write
                continue
        return rows

    def summarise(self, status: str, message: str, **extra: Any) -> dict[str, Any]:
        """Write ``summary.json``: the status, why, the rounds completed so far, and the
        ``warning`` of any round (such as a run that is not learning)."""
        completed = [r for r in self.read_metrics() if r.get("status") == "completed"]
        summary = {
            "status": status, "message": message, "rounds_completed": len(completed),
            "last": completed[-1] if completed else None,
            "warnings": [f"round {r['round']}: {r['warning']}" for r in completed if r.get("warning")], **extra,
        }
        self.write_json("summary.json", summary)
        return summary

    def mark_stopped(self, message: str) -> dict[str, Any] | None:
        """``summary.json`` with status ``stopped`` for a run ended from outside (``flwr
        stop``), whose ServerApp cannot write one; a summary already there is kept."""
        if (self.path / "summary.json").exists():
            return None
        return self.summarise("stopped", message)

    def clear_summary(self) -> None:
        """Forget the summary of an earlier attempt: a resumed run is running again."""
        (self.path / "summary.json").unlink(missing_ok=True)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        # Write then rename, so a crash mid-write never destroys the last good checkpoint.
        tmp = self.path / ".checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)

    def save_model(self, state_dict: dict[str, torch.Tensor]) -> None:
        torch.save(state_dict, self.path / "final_model.pt")

    def save_samples(self, images: torch.Tensor, nrow: int = 8) -> None:
        from torchvision.utils import save_image

        save_image(images.float() / 255, self.path / "samples.png", nrow=nrow, padding=1)
