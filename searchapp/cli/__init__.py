"""The `loupe` command line: one parser, one command group per module.

Each group module (`catalog`, `search`, `serve`, `training`) adds its subcommands with
`register(commands)` and gives each a handler `(settings, args, out) -> exit status`; the
settings are the core's `Settings`, or `ServiceSettings` for a command registered with
`service_settings=True` (those that serve, restore or generate).
Every command exits 0 on success, non-zero with a one-line reason."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Mapping, Sequence

from indexer.errors import LoupeError

from . import catalog, duplicates, search, serve, training

EXIT_ERROR = 1
EXIT_USAGE = 2  # what argparse exits with on a usage error
EXIT_INTERRUPTED = 130

COMMAND_GROUPS = (catalog, search, duplicates, serve, training)  # in the order `loupe --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loupe", description="Loupe: image similarity and reverse-image search.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def configure_logging(verbose: bool) -> None:
    """Log to stderr. Without --verbose, the messages of open_clip (root logger) and
    huggingface_hub are dropped: Loupe reports those conditions itself, in one line."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # read when huggingface_hub is imported
        handler.addFilter(lambda record: record.name != "root" and not record.name.startswith("huggingface_hub"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; returns the exit status (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    from indexer.settings import Settings

    from ..settings import ServiceSettings

    try:
        read = ServiceSettings.from_env if getattr(args, "service_settings", False) else Settings.from_env
        settings = read(environ)
        return args.handler(settings, args, sys.stdout) or 0
    except LoupeError as err:
        print(f"loupe: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("loupe: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> None:
    """The console script `loupe`."""
    sys.exit(main())
