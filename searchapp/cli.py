"""The `loupe` console script: the indexer's commands plus `serve` (the web service)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Mapping, Sequence

from indexer import cli as indexer_cli

if TYPE_CHECKING:
    from .settings import ServiceSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument("--dev", action="store_true", help="Flask's development server with the reloader")
    parser.add_argument("--insecure-no-token", action="store_true",
                        help="serve beyond loopback without LOUPE_API_TOKEN: anyone who can reach the port can "
                             "read and change the collection (the page says so)")


def check_exposure(settings: "ServiceSettings", host: str, insecure: bool) -> None:
    """Refuse a bind beyond loopback without an API token, unless the user said it is meant."""
    from indexer.errors import ConfigError

    from .security import is_loopback

    if not is_loopback(host) and not settings.api_token and not insecure:
        raise ConfigError(
            f"refusing to serve on {host} without LOUPE_API_TOKEN: anyone who can reach the port could read "
            "every indexed picture and change the collection. Set LOUPE_API_TOKEN (e.g. to the output of "
            "`openssl rand -hex 32`), serve on 127.0.0.1, or pass --insecure-no-token if that is what you want"
        )


def cmd_serve(settings: "ServiceSettings", args, out) -> int:
    from . import create_app
    from .security import AccessPolicy

    insecure = getattr(args, "insecure_no_token", False)
    check_exposure(settings, args.host, insecure)
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


def configure_demo(parser: argparse.ArgumentParser) -> None:
    indexer_cli.configure_demo(parser)
    configure_serve(parser)
    parser.add_argument("--no-serve", action="store_true", help="index and search the samples, then exit")


def cmd_demo(settings: "ServiceSettings", args, out) -> int:
    """Index the sample photographs, run sample searches, then serve them."""
    from indexer.demo import run_demo

    demo = run_demo(settings.core, out, progress=not args.no_progress)
    return 0 if args.no_serve else cmd_serve(replace(settings, core=demo), args, out)


def configure_train_generator(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=25.0,
                        help="wall-clock budget of this run (default 25); rerun to train longer")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=None,
                        help="picture size in pixels for a new model (default: 64 on CUDA, 32 on the CPU, "
                             "where a 64-px model gets too few steps in minutes)")
    _add_training_options(parser, "the trained model")


def _add_training_options(parser: argparse.ArgumentParser, restarted: str) -> None:
    """The options every `train-*` command shares."""
    parser.add_argument("--max-pictures", type=int, default=20_000,
                        help="indexed pictures to learn from (a seeded sample when there are more)")
    parser.add_argument("--restart", action="store_true", help=f"discard {restarted} and start over")
    parser.add_argument("--steps", type=int, default=None,
                        help="stop each model after this many training steps in this run, within the time budget "
                             "(seeded: the same steps give the same model)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: LOUPE_DEVICE)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true")


def cmd_train_generator(settings, args, out) -> int:
    """Train (or go on training) Loupe's own generator on the indexed pictures."""
    import shutil
    from dataclasses import asdict

    from indexer.commands import open_library
    from indexer.embedder import resolve_device
    from indexer.errors import LoupeError

    from .diffusion.training import TrainOptions, load_pictures, read_info, train
    from .diffusion.unet import UNetConfig
    from .generation.backends import OWN_MODEL_FOLDER

    device = resolve_device(args.device or settings.device)
    size = args.size or (64 if device.startswith("cuda") else 32)
    if args.minutes <= 0 or args.batch_size < 1 or size < 16 or size % 8 or (args.steps is not None and args.steps < 1):
        raise LoupeError("--minutes, --batch-size and --steps must be positive, --size a multiple of 8 from 16")
    folder = settings.home / OWN_MODEL_FOLDER
    if args.restart:
        shutil.rmtree(folder, ignore_errors=True)
    info = read_info(folder)
    config = UNetConfig.from_dict(info["config"]) if info else UNetConfig(
        sample_size=size, block_out_channels=(32, 64, 128, 128)[: 4 if size >= 64 else 3])
    library = open_library(settings)
    try:
        paths = library.indexed_paths()
    finally:
        library.close()
    if not paths:
        raise LoupeError("nothing is indexed yet: the generator trains on the indexed pictures (loupe index PATH)")
    pictures = load_pictures(paths, config.sample_size, args.max_pictures)
    options = TrainOptions(budget_seconds=args.minutes * 60, batch_size=args.batch_size, max_steps=args.steps,
                           progress=not args.no_progress)
    summary = train(folder, pictures, config, options, device=device)
    if args.json:
        indexer_cli.print_json({**asdict(summary), "folder": str(folder)}, out)
    else:
        print(f"loupe: {summary.line()}; saved in {folder}", file=out)
    return 0


def configure_search(parser: argparse.ArgumentParser) -> None:
    from .restoration.stages import MODES

    indexer_cli.configure_search(parser)
    parser.add_argument("--restore", choices=MODES, default="auto",
                        help="with --image: reconstruct a damaged query first (default auto: the stages that "
                             "help for what is detected; off; or one stage by name)")


def cmd_search(settings: "ServiceSettings", args, out) -> int:
    """`loupe search`, with query restoration for image searches."""
    from indexer.commands import cmd_search as plain_search
    from indexer.embedder import resolve_device

    from .restoration.pipeline import Restorers, restored_lookup
    from .urls import Urls

    core = settings.core
    restorers = Restorers(settings.restore, core.home, resolve_device(args.device or core.device))

    def lookup(library, embedder, data, k, offset, regions, verify):
        page, report = restored_lookup(library, embedder, data, k, offset, regions, mode=args.restore,
                                       restorers=restorers, verify=verify)
        return page, {**report.as_dict(), "reconstruction": None}

    def page_json(page) -> dict:  # the web URLs with each result, built only for --json
        return Urls.offline().page_json(page)

    return plain_search(core, args, out, image_lookup=lookup, page_json=page_json)


def configure_train_restorer(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=("all", "pixel", "embedding"), default="all",
                        help="which restorer to train (default all: the pixel denoiser, then the embedding model)")
    parser.add_argument("--minutes", type=float, default=20.0,
                        help="wall-clock budget of the pixel denoiser in this run (default 20); rerun to train longer")
    parser.add_argument("--embedding-minutes", type=float, default=2.0,
                        help="training budget of the embedding model, after embedding its examples (default 2)")
    parser.add_argument("--batch-size", type=int, default=16)
    _add_training_options(parser, "the trained pixel denoiser")


def cmd_train_restorer(settings, args, out) -> int:
    """Train the query restorers on the indexed pictures."""
    import shutil
    from dataclasses import asdict

    from indexer.commands import load_embedder, open_library
    from indexer.embedder import resolve_device
    from indexer.errors import LoupeError

    from .restoration import embedding, pixel
    from .restoration.training import PixelTraining, train_embedding, train_pixel_restorer

    if (args.minutes <= 0 or args.embedding_minutes <= 0 or args.batch_size < 1 or args.max_pictures < 1
            or (args.steps is not None and args.steps < 1)):
        raise LoupeError("--minutes, --embedding-minutes, --batch-size, --max-pictures and --steps must be positive")
    device = resolve_device(args.device or settings.device)
    library = open_library(settings)
    report: dict = {}
    try:
        if library.stored_identity() is None:
            raise LoupeError("nothing is indexed yet: the restorers train on the indexed pictures (loupe index PATH)")
        embedder = load_embedder(settings, args.device) if args.stage in ("all", "embedding") else None
        if embedder is not None:
            library.bind_model(embedder.identity)
        if args.stage in ("all", "pixel"):
            folder = settings.home / pixel.OWN_FOLDER
            if args.restart:
                shutil.rmtree(folder, ignore_errors=True)
            size = embedder.input_size[0] if embedder is not None else PixelTraining.input_size
            summary = train_pixel_restorer(library, folder, PixelTraining(
                budget_seconds=args.minutes * 60, batch_size=args.batch_size, max_pictures=args.max_pictures,
                input_size=size, max_steps=args.steps, progress=not args.no_progress), device)
            report["pixel"] = {**asdict(summary), "folder": str(folder)}
            if not args.json:
                print(f"loupe: pixel restorer: {summary.line()}; saved in {folder}", file=out)
        if embedder is not None:
            folder = settings.home / embedding.OWN_FOLDER
            summary = train_embedding(library, embedder, folder, args.embedding_minutes * 60,
                                      embedding.PairOptions(max_pictures=args.max_pictures), max_steps=args.steps,
                                      progress=not args.no_progress)
            report["embedding"] = {**asdict(summary), "folder": str(folder)}
            if not args.json:
                print(f"loupe: {summary.line()}; saved in {folder}", file=out)
    finally:
        library.close()
    if args.json:
        indexer_cli.print_json(report, out)
    return 0


EXTRA_COMMANDS: Mapping[str, indexer_cli.ExtraCommand] = {
    "search": ("search by text or by image", configure_search, cmd_search),
    "serve": ("serve the API and the web UI", configure_serve, cmd_serve),
    "demo": ("index the bundled sample photographs, run sample searches and serve them", configure_demo, cmd_demo),
    "train-generator": ("train Loupe's own image generator on the indexed pictures (for generate similar)",
                        configure_train_generator, cmd_train_generator),
    "train-restorer": ("train the query restorers (pixel denoiser, embedding model) on the indexed pictures",
                       configure_train_restorer, cmd_train_restorer),
}


SERVICE_COMMANDS = ("search", "serve", "demo")  # their handlers take `ServiceSettings`


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ

    def with_service_settings(handler):
        from .settings import ServiceSettings

        return lambda settings, args, out: handler(ServiceSettings.from_env(env, core=settings), args, out)

    extra = {name: (text, configure, with_service_settings(handler) if name in SERVICE_COMMANDS else handler)
             for name, (text, configure, handler) in EXTRA_COMMANDS.items()}
    return indexer_cli.main(argv, environ, extra=extra)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
