"""What a run leaves on disk in ``<output-dir>/<run-name>/``, and how it resumes.

* ``config.json``: the resolved run config and package versions;
* ``metrics.jsonl``: one JSON object per round (appended as rounds complete);
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

    def write_config(self, config: dict[str, Any]) -> None:
        self.write_json("config.json", {"run_config": config, "versions": package_versions()})

    def append_metrics(self, row: dict[str, Any]) -> None:
        """One line of strict JSON: a non-finite number is written as null."""
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_finite(row), default=float, allow_nan=False) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

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
