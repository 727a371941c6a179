"""``visualmixer console --text RUN_DIR``: the run page's figures as a live terminal table,
for SSH sessions. Refreshes as rounds land; returns when ``summary.json`` appears."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from server.console.runs import RunFolder

COLUMNS = (
    ("round", "round", "{}"),
    ("train-loss", "train loss", "{:.4f}"),
    ("federated-accuracy", "fed. acc", "{:.4f}"),
    ("central-accuracy", "central acc", "{:.4f}"),
    ("vfe-sent", "VFE sent", "{:.3f}"),
    ("epsilon-max", "eps max", "{:.2f}"),
    ("replies", "replies", "{}"),
    ("rejected", "rejected", "{}"),
    ("bytes-up", "MB up", None),
    ("obfuscation-seconds", "VM s", "{:.2f}"),
    ("seconds", "s", "{:.1f}"),
)


def _cell(row: dict[str, Any], key: str, fmt: str | None) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if fmt is None:  # bytes
        return f"{value / 1e6:.2f}"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def render(run: RunFolder, last: int = 20) -> Group:
    """The header (status, config) and the table of the last ``last`` rounds."""
    detail = run.detail()
    cfg = detail["run-config"]
    target = cfg.get("target-vfe") if "visualmixer" in str(cfg.get("defense", "")) else None
    header = Text.assemble(
        (f"{run.name}  ", "bold"),
        (f"{detail['status']}", "green" if detail["status"] == "finished:completed" else "yellow"),
        f"  {detail['exchange']} / {detail['defense']} / {detail['dataset']} / {detail['model']}",
        f"  rounds {detail['rounds-done']}/{detail['rounds-planned']}",
        f"  target VFE {target}" if target is not None else "",
    )
    table = Table(expand=False)
    for _, title, _ in COLUMNS:
        table.add_column(title, justify="right")
    for row in detail["rounds"][-last:]:
        if row.get("status") == "failed":
            table.add_row(str(row.get("round")), f"failed: {row.get('reason', '')}", *[""] * (len(COLUMNS) - 2))
        else:
            table.add_row(*[_cell(row, key, fmt) for key, _, fmt in COLUMNS])
    parts: list[Any] = [header, table]
    rejected = [e for e in detail["events"] if e.get("outcome") in ("rejected", "failed", "silent")][-5:]
    for event in rejected:
        parts.append(Text(f"round {event.get('round')} node {event.get('node')}: {event.get('outcome')} "
                          f"{event.get('what')}: {event.get('reason', '')}", style="red"))
    for note in detail["skipped-lines"][-3:]:
        parts.append(Text(f"skipped {note}", style="dim"))
    if detail["summary"]:
        parts.append(Text(f"{detail['summary'].get('status')}: {detail['summary'].get('message', '')}", style="bold"))
    return Group(*parts)


def follow(run_dir: Path, refresh: float = 1.0, console: Console | None = None, timeout: float | None = None) -> int:
    """Show ``run_dir`` live until its ``summary.json`` exists (or ``timeout`` seconds);
    0 when the run completed, 1 otherwise."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (it has no config.json)")
    run = RunFolder(run_dir.name, run_dir)
    started = time.monotonic()
    with Live(render(run), console=console, refresh_per_second=4, auto_refresh=False) as live:
        while not (run_dir / "summary.json").exists():
            if timeout is not None and time.monotonic() - started > timeout:
                return 1
            time.sleep(refresh)
            live.update(render(run), refresh=True)
        live.update(render(run), refresh=True)
    return 0 if run.summary.get("status") == "completed" else 1
