"""The web service commands: `loupe serve`, and `loupe demo` (index the samples, then serve them)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import TextIO

from indexer.errors import ConfigError

from ..settings import ServiceSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve the API and the web UI")
    _add_serve_options(serve)
    serve.set_defaults(handler=cmd_serve, service_settings=True)

    demo = commands.add_parser("demo", help="index the bundled sample photographs, run sample searches and serve them")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar while indexing the samples")
    _add_serve_options(demo)
    demo.add_argument("--no-serve", action="store_true", help="index and search the samples, then exit")
    demo.set_defaults(handler=cmd_demo, service_settings=True)


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument("--dev", action="store_true", help="Flask's development server with the reloader")
    parser.add_argument("--insecure-no-token", action="store_true",
                        help="serve beyond loopback without LOUPE_API_TOKEN: anyone who can reach the port can "
                             "read and change the collection (the page says so)")


def check_exposure(settings: ServiceSettings, host: str, insecure: bool) -> None:
    """Refuse a bind beyond loopback without an API token, unless the user said it is meant."""
    from ..security import is_loopback

    if not is_loopback(host) and not settings.api_token and not insecure:
        raise ConfigError(
            f"refusing to serve on {host} without LOUPE_API_TOKEN: anyone who can reach the port could read "
            "every indexed picture and change the collection. Set LOUPE_API_TOKEN (e.g. to the output of "
            "`openssl rand -hex 32`), serve on 127.0.0.1, or pass --insecure-no-token if that is what you want"
        )


def cmd_serve(settings: ServiceSettings, args, out: TextIO) -> int:
    from .. import create_app
    from ..security import AccessPolicy

    insecure = getattr(args, "insecure_no_token", False)
    check_exposure(settings, args.host, insecure)
    _enable_access_log(quiet=getattr(args, "quiet", False))
    app = create_app({"LOUPE_SETTINGS": settings, "LOUPE_SERVE_HOST": args.host})
    rules = AccessPolicy.create(settings, args.host)
    print(f"loupe: serving {settings.core.home} on http://{args.host}:{args.port}/", file=out, flush=True)
    if rules.insecure:
        print("loupe: WARNING: no token: anyone who can reach this port can read and change the collection",
              file=out, flush=True)
    elif rules.reads_protected:
        print("loupe: reads need LOUPE_READ_TOKEN or LOUPE_API_TOKEN; writes need LOUPE_API_TOKEN", file=out,
              flush=True)
    if args.dev:
        app.run(host=args.host, port=args.port, debug=False, use_reloader=True)
        return 0
    from waitress import serve

    serve(app, host=args.host, port=args.port, threads=args.threads, channel_timeout=60,
          max_request_body_size=app.config["MAX_CONTENT_LENGTH"] + 1024 * 1024, ident="loupe")
    return 0


def _enable_access_log(quiet: bool) -> None:
    """One line per request on stderr (`searchapp.access_log`), unless -q."""
    import logging

    from ..access_log import LOGGER

    logging.getLogger(LOGGER).setLevel(logging.ERROR if quiet else logging.INFO)


def cmd_demo(settings: ServiceSettings, args, out: TextIO) -> int:
    """Index the sample photographs, run sample searches, then serve them."""
    from indexer.demo import run_demo

    demo = run_demo(settings.core, out, progress=not args.no_progress)
    if not args.no_serve:
        print(f"loupe demo: the map of the collection: http://{args.host}:{args.port}/map", file=out, flush=True)
    return 0 if args.no_serve else cmd_serve(replace(settings, core=demo), args, out)
