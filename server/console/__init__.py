"""The operator console: follow, compare and stop runs from a browser or a terminal.

    visualmixer-console [--runs-dir outputs] [--superlink NAME] [--host 127.0.0.1] [--port 8050]
    visualmixer-console --text RUN_DIR

See ``server/console/app.py`` for the pages and endpoints, ``auth.py`` for the token
needed off loopback, ``text.py`` for the terminal view.
"""

from __future__ import annotations

from typing import Any


def create_app(*args: Any, **kwargs: Any) -> Any:
    """:func:`server.console.app.create_app`, imported on first use so that
    ``visualmixer --help`` stays free of torch and FastAPI."""
    from server.console.app import create_app as create

    return create(*args, **kwargs)
