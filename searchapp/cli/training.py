"""The training commands: `loupe train-generator` and `loupe train-restorer`, both learning
from the indexed pictures."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import asdict
from typing import TextIO

from indexer.errors import LoupeError
from indexer.factory import load_embedder, open_library
from indexer.settings import Settings

from .output import print_json


def register(commands: argparse._SubParsersAction) -> None:
    generator = commands.add_parser(
        "train-generator", help="train Loupe's own image generator on the indexed pictures (for generate similar)")
    generator.add_argument("--minutes", type=float, default=25.0,
                           help="wall-clock budget of this run (default 25); rerun to train longer")
    generator.add_argument("--batch-size", type=int, default=16)
    generator.add_argument("--size", type=int, default=None,
                           help="picture size in pixels for a new model (default: 64 on CUDA, 32 on the CPU, "
                                "where a 64-px model gets too few steps in minutes)")
    _add_training_options(generator, "the trained model")
    generator.set_defaults(handler=cmd_train_generator)

    restorer = commands.add_parser(
        "train-restorer",
        help="train the query restorers (pixel denoiser, embedding model) on the indexed pictures")
    restorer.add_argument("--stage", choices=("all", "pixel", "embedding"), default="all",
                          help="which restorer to train (default all: the pixel denoiser, then the embedding model)")
    restorer.add_argument("--minutes", type=float, default=20.0,
                          help="wall-clock budget of the pixel denoiser in this run (default 20); rerun to train "
                               "longer")
    restorer.add_argument("--embedding-minutes", type=float, default=2.0,
                          help="training budget of the embedding model, after embedding its examples (default 2)")
    restorer.add_argument("--batch-size", type=int, default=16)
    _add_training_options(restorer, "the trained pixel denoiser")
    restorer.set_defaults(handler=cmd_train_restorer)


def _add_training_options(parser: argparse.ArgumentParser, restarted: str) -> None:
    """The options every `train-*` command shares."""
    parser.add_argument("--max-pictures", type=int, default=20_000,
                        help="indexed pictures to learn from (a seeded sample when there are more)")
    parser.add_argument("--restart", action="store_true", help=f"discard {restarted} and start over")
    parser.add_argument("--steps", type=int, default=None,
                        help="stop each model after this many training steps in this run, within the time budget "
                             "(seeded: the same steps give the same model) (default: no limit but the time)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: LOUPE_DEVICE)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_train_generator(settings: Settings, args, out: TextIO) -> int:
    """Train (or go on training) Loupe's own generator on the indexed pictures."""
    from indexer.embedder import resolve_device

    from ..diffusion.training import TrainOptions, load_pictures, read_info, train
    from ..diffusion.unet import UNetConfig
    from ..generation.backends import OWN_MODEL_FOLDER

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
        print_json({**asdict(summary), "folder": str(folder)}, out)
    else:
        print(f"loupe: {summary.line()}; saved in {folder}", file=out)
    return 0


def cmd_train_restorer(settings: Settings, args, out: TextIO) -> int:
    """Train the query restorers on the indexed pictures."""
    from indexer.embedder import resolve_device

    from ..restoration import embedding, pixel
    from ..restoration.training import PixelTraining, train_embedding, train_pixel_restorer

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
        print_json(report, out)
    return 0
