"""The `loupe` console script: the indexer's commands plus `serve` (the web service)."""

from __future__ import annotations

import argparse
import sys
from typing import Mapping, Sequence

from indexer import cli as indexer_cli

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument("--dev", action="store_true", help="Flask's development server with the reloader")


def cmd_serve(settings, args, out) -> int:
    from . import create_app

    app = create_app({"LOUPE_SETTINGS": settings})
    print(f"loupe: serving {settings.home} on http://{args.host}:{args.port}/", file=out, flush=True)
    if args.dev:
        app.run(host=args.host, port=args.port, debug=False, use_reloader=True)
        return 0
    from waitress import serve

    serve(app, host=args.host, port=args.port, threads=args.threads, channel_timeout=60,
          max_request_body_size=app.config["MAX_CONTENT_LENGTH"] + 1024 * 1024, ident="loupe")
    return 0


def configure_demo(parser: argparse.ArgumentParser) -> None:
    indexer_cli.configure_demo(parser)
    configure_serve(parser)
    parser.add_argument("--no-serve", action="store_true", help="index and search the samples, then exit")


def cmd_demo(settings, args, out) -> int:
    """Index the sample photographs, run sample searches, then serve them."""
    from indexer.demo import run_demo

    demo = run_demo(settings, out, progress=not args.no_progress)
    return 0 if args.no_serve else cmd_serve(demo, args, out)


EXTRA_COMMANDS: Mapping[str, indexer_cli.ExtraCommand] = {
    "serve": ("serve the API and the web UI", configure_serve, cmd_serve),
    "demo": ("index the bundled sample photographs, run sample searches and serve them", configure_demo, cmd_demo),
}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    return indexer_cli.main(argv, environ, extra=EXTRA_COMMANDS)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
