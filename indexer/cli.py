"""The `loupe` command line. Every command exits 0 on success, non-zero with a one-line reason."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .errors import LoupeError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# An extra command: (help text, function adding its arguments, handler(settings, args, out) -> int).
ExtraCommand = tuple[str, Callable[[argparse.ArgumentParser], None], Callable]


def build_parser(extra: Mapping[str, ExtraCommand] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loupe", description="Loupe: image similarity and reverse-image search.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    index = commands.add_parser("index", help="index image files and folders (recursive, incremental, resumable)")
    index.add_argument("paths", nargs="+", metavar="PATH")
    index.add_argument("--batch-size", type=_positive_int, default=32, help="images per model batch (default 32)")
    index.add_argument("--workers", type=_non_negative_int, default=None,
                       help="decoding processes (default: on CUDA cores - 1; on the CPU, decoding "
                            "runs in the main process between batches; 0: one decode thread)")
    index.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: LOUPE_DEVICE)")
    index.add_argument("--decode", choices=("auto", "pillow", "torchvision"), default="auto",
                       help="JPEG decoding: pillow (CPU processes/threads), torchvision (on the model's "
                            "device: nvJPEG on CUDA, with Pillow for other files), auto (torchvision on CUDA)")
    index.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="read and embed on a Ray cluster: auto (the running cluster, else a local "
                            "Ray) or a Ray address; needs the ray extra")
    index.add_argument("--ray-embedders", type=_positive_int, default=None, metavar="N",
                       help="with --ray: model actors (default: one per GPU, else one per node's CPUs)")
    index.add_argument("--no-progress", action="store_true", help="no progress bar")
    index.add_argument("--json", action="store_true", help="print the summary as JSON")

    if "search" not in (extra or {}):
        configure_search(commands.add_parser("search", help="search by text or by image"))

    remove = commands.add_parser("remove", help="remove images (by path, folder or id) from the index and catalog")
    remove.add_argument("targets", nargs="*", metavar="PATH|ID")
    remove.add_argument("--missing", action="store_true", help="also remove every image whose file has vanished")
    remove.add_argument("--json", action="store_true")

    status = commands.add_parser("status", help="counts, model identity, index type, device, database")
    status.add_argument("--json", action="store_true")

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser("upgrade", help="apply catalog migrations")

    if "demo" not in (extra or {}):
        demo = commands.add_parser("demo", help="index the bundled sample photographs and run sample searches")
        configure_demo(demo)
    for name, (help_text, configure, _) in (extra or {}).items():
        configure(commands.add_parser(name, help=help_text))
    return parser


def _configure_logging(verbose: bool) -> None:
    """Log to stderr. Without --verbose, the messages of open_clip (root logger) and
    huggingface_hub are dropped: Loupe reports those conditions itself, in one line."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # read when huggingface_hub is imported
        handler.addFilter(lambda record: record.name != "root" and not record.name.startswith("huggingface_hub"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)


def configure_search(search: argparse.ArgumentParser) -> None:
    search.add_argument("text", nargs="?", metavar="TEXT")
    search.add_argument("--image", type=Path, metavar="FILE", help="search with this picture instead of text")
    search.add_argument("-k", type=_positive_int, default=10, help="number of results (default 10, max 200)")
    search.add_argument("--offset", type=_non_negative_int, default=0)
    search.add_argument("--no-regions", action="store_true",
                        help="with --image: match whole pictures only, not their regions")
    search.add_argument("--verify", choices=("on", "off"), default=None,
                        help="with --image: verify the top results with local features (default LOUPE_VERIFY: on)")
    search.add_argument("--device", default=None)
    search.add_argument("--json", action="store_true", help="print results as JSON")


def configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
         extra: Mapping[str, ExtraCommand] | None = None) -> int:
    """Run one command; returns the exit status (the console script exits with it).

    `extra` adds commands from other packages (the `serve` command comes from `searchapp`,
    so that `indexer` itself never imports Flask)."""
    args = build_parser(extra).parse_args(argv)
    _configure_logging(args.verbose)
    from . import commands
    from .settings import Settings

    try:
        settings = Settings.from_env(environ)
        handler = extra[args.command][2] if extra and args.command in extra else getattr(commands, f"cmd_{args.command}")
        return handler(settings, args, sys.stdout) or 0
    except LoupeError as err:
        print(f"loupe: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("loupe: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> None:
    sys.exit(main())


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def print_json(obj, out) -> None:
    json.dump(obj, out, indent=2, sort_keys=False)
    out.write("\n")
