"""``visualmixer-console``: serve the console (uvicorn) or show one run in the terminal.

    visualmixer-console [--runs-dir outputs] [--superlink NAME] [--host H] [--port P] | --text RUN_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default="outputs", help="folder holding one folder per run (output-dir)")
    parser.add_argument("--superlink", default=None, metavar="NAME",
                        help="a SuperLink connection of $FLWR_HOME/config.toml (e.g. local): lists its runs "
                             "and nodes and lets the console stop runs (none: the runs dir only)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; anything but 127.0.0.1, ::1 or localhost requires the token")
    parser.add_argument("--port", type=int, default=8050, help="port to bind")
    parser.add_argument("--ssl-certfile", default=None, help="TLS certificate (PEM), as for the SuperLink")
    parser.add_argument("--ssl-keyfile", default=None, help="TLS private key (PEM)")
    parser.add_argument("--text", default=None, metavar="RUN_DIR",
                        help="show this run folder live in the terminal instead of serving pages")


def run(args: argparse.Namespace) -> int:
    if args.text:
        from server.console.flower import FlowerLink
        from server.console.text import follow

        try:
            return follow(Path(args.text), link=FlowerLink(args.superlink) if args.superlink else None)
        except FileNotFoundError as err:
            print(f"error: --text: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    import uvicorn

    from server.console.app import create_app
    from server.console.auth import load_or_create_token, needs_token, token_path

    runs_dir = Path(args.runs_dir).expanduser()
    if not runs_dir.is_dir():
        print(f"note: --runs-dir {runs_dir} does not exist yet; runs appear once it does", file=sys.stderr)
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        print("error: --ssl-certfile and --ssl-keyfile go together", file=sys.stderr)
        return 2
    for flag, path in (("--ssl-certfile", args.ssl_certfile), ("--ssl-keyfile", args.ssl_keyfile)):
        if path and not Path(path).is_file():
            print(f"error: {flag} {path}: no such file", file=sys.stderr)
            return 2
    token = None
    scheme = "https" if args.ssl_certfile else "http"
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"{scheme}://{host}:{args.port}/"
    if needs_token(args.host):
        token, created = load_or_create_token(runs_dir)
        if created:
            print(f"console token (shown once; stored in {token_path(runs_dir)}, mode 0600): {token}")
        print(f"open {url}login?token=<token from {token_path(runs_dir)}>", flush=True)
    else:
        print(f"console: open {url}", flush=True)
    app = create_app(runs_dir, args.superlink, token)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="visualmixer-console", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="The operator console: follow, compare and stop runs in a browser (or --text).",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
