"""``visualmixer-console --text RUN_DIR``: the run page's figures as a live terminal table,
for SSH sessions. Refreshes as rounds land; returns when ``summary.json`` appears, or, with
``--superlink``, when the SuperLink reports the run finished (a run stopped with ``flwr
stop`` outside the console writes no summary)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from server.console.flower import FlowerLink, SuperLinkError
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


def render(run: RunFolder, last: int = 20, flower: dict[str, dict[str, Any]] | None = None) -> Group:
    """The header (status, config) and the table of the last ``last`` rounds."""
    detail = run.detail(flower)
    cfg = detail["run-config"]
    info = detail.get("defense-info") or {}
    headline = "".join(f"  {label} {cfg[key]}" for label, key in info.get("headline", []) if key in cfg)
    header = Text.assemble(
        (f"{run.name}  ", "bold"),
        (f"{detail['status']}", "green" if detail["status"] == "finished:completed" else "yellow"),
        f"  {detail['exchange']} / {detail['defense']} / {detail['dataset']} / {detail['model']}",
        f"  rounds {detail['rounds-done']}/{detail['rounds-planned']}",
        headline,
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
    rejected = [e for e in detail["events"] if e.get("outcome") in ("rejected", "failed", "silent", "clamped")][-5:]
    for event in rejected:
        parts.append(Text(f"round {event.get('round')} node {event.get('node')}: {event.get('outcome')} "
                          f"{event.get('what')}: {event.get('reason', '')}", style="red"))
    for warning in detail["warnings"]:
        parts.append(Text(warning, style="yellow"))
    for note in detail["skipped-lines"][-3:]:
        parts.append(Text(f"skipped {note}", style="dim"))
    if detail["summary"]:
        parts.append(Text(f"{detail['summary'].get('status')}: {detail['summary'].get('message', '')}", style="bold"))
    return Group(*parts)


def _flower_runs(link: FlowerLink | None) -> dict[str, dict[str, Any]] | None:
    if link is None:
        return None
    try:
        return link.runs()
    except SuperLinkError:
        return None


def follow(
    run_dir: Path, refresh: float = 1.0, console: Console | None = None, timeout: float | None = None,
    link: FlowerLink | None = None,
) -> int:
    """Show ``run_dir`` live until it ends (or ``timeout`` seconds); 0 when it completed,
    1 otherwise. It has ended when ``summary.json`` exists or ``link``'s SuperLink reports
    its latest Flower run finished."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (it has no config.json)")
    run = RunFolder(run_dir.name, run_dir)
    started = time.monotonic()

    def ended() -> tuple[bool, Group]:
        flower = _flower_runs(link)
        status = run.overview(flower)["status"] if flower else ""
        return (run_dir / "summary.json").exists() or status.startswith("finished"), render(run, flower=flower)

    done, view = ended()
    with Live(view, console=console, refresh_per_second=4, auto_refresh=False) as live:
        while not done:
            if timeout is not None and time.monotonic() - started > timeout:
                return 1
            time.sleep(refresh)
            done, view = ended()
            live.update(view, refresh=True)
    return 0 if run.overview(_flower_runs(link))["status"] == "finished:completed" else 1
