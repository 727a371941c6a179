"""Who may use the console: anyone on a loopback address; elsewhere, holders of the token.

Bound to anything but 127.0.0.1, ::1 or localhost, every request needs the bearer token:
an ``Authorization: Bearer TOKEN`` header, or the HTTP-only cookie that ``/login?token=``
sets once. The token is made on first start, stored beside the runs dir with mode 0600
and printed once; later starts read it back.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
COOKIE = "visualmixer_console"


def needs_token(host: str) -> bool:
    return host not in LOOPBACK


def token_path(runs_dir: Path) -> Path:
    """``<runs-dir>.console-token``: beside the runs dir, not inside it, so it is never
    served as a run file."""
    runs_dir = Path(runs_dir).resolve()
    return runs_dir.parent / f"{runs_dir.name}.console-token"


def load_or_create_token(runs_dir: Path) -> tuple[str, bool]:
    """(token, created now). A new token file is created with mode 0600 from the start."""
    path = token_path(runs_dir)
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, False
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.chmod(path, 0o600)
    return token, True


def token_matches(expected: str, header: str | None, cookie: str | None) -> bool:
    """Whether the request carries the token, compared in constant time."""
    offered = []
    if header and header.lower().startswith("bearer "):
        offered.append(header[7:].strip())
    if cookie:
        offered.append(cookie)
    return any(secrets.compare_digest(expected.encode(), value.encode()) for value in offered)
