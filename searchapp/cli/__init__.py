"""The `loupe` command line: one parser, one command group per module.

Each group module (`catalog`, `search`, `serve`, `training`) adds its subcommands with
`register(commands)` and gives each a handler `(settings, args, out) -> exit status`; the
settings are the core's `Settings`, or `ServiceSettings` for a command registered with
`service_settings=True` (those that serve, restore or generate).
Every command exits 0 on success, non-zero with a one-line reason (docs/cli.md lists the exit
statuses). `-v`/`-q` are accepted before or after the command; every option's help gives its
default."""

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
EXIT_CODES = {0: "success", EXIT_ERROR: "error (a one-line reason on stderr)",
              EXIT_USAGE: "usage error (a bad option or value, e.g. -k above 200)",
              EXIT_INTERRUPTED: "interrupted (Ctrl-C); rerun the same command to resume"}

COMMAND_GROUPS = (catalog, search, duplicates, serve, training)  # in the order `loupe --help` lists them


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it (or the
    option is a switch, whose default is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and action.nargs != 0 and "default" not in text.lower()
                and action.default not in (None, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


class LoupeParser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults; its subcommands' parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def loupe_version() -> str:
    """The installed package's version (`unknown` when run from a tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loupe")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = LoupeParser(prog="loupe", description="Loupe: image similarity and reverse-image search.",
                         epilog="Exit status: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items())
                         + ". docs/cli.md has every command.")
    parser.add_argument("--version", action="version", version=f"loupe {loupe_version()}")
    _add_verbosity(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(commands)
    for sub in _subparsers(parser):
        _add_verbosity(sub, default=argparse.SUPPRESS)  # SUPPRESS: a subcommand never resets the flag given before it
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, default) -> None:
    """-v/-q on `parser` (each command has them, so they are accepted anywhere)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default, help="log details to stderr")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="log only errors (and no access log from loupe serve)")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command's parser under `parser`, nested ones (`db upgrade`) included, once each."""
    found: dict[int, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if id(sub) not in found:
                    found[id(sub)] = sub
                    for nested in _subparsers(sub):
                        found.setdefault(id(nested), nested)
    return list(found.values())


def configure_logging(verbose: bool, quiet: bool = False) -> None:
    """Log to stderr. Without --verbose, the messages of open_clip (root logger) and
    huggingface_hub are dropped: Loupe reports those conditions itself, in one line. With
    --quiet, only errors."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # read when huggingface_hub is imported
        handler.addFilter(lambda record: record.name != "root" and not record.name.startswith("huggingface_hub"))
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet cannot be used together")
    configure_logging(args.verbose, args.quiet)
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
