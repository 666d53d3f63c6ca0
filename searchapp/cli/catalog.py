"""The catalog commands: `loupe index`, `remove`, `status` and `db`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from indexer.errors import ConfigError, LoupeError, NotIndexedError
from indexer.factory import load_embedder, open_library
from indexer.settings import Settings, ensure_home, redact_url

from .arguments import non_negative_int, positive_int
from .output import print_json

if TYPE_CHECKING:
    from indexer.catalog import ImageRecord


def register(commands: argparse._SubParsersAction) -> None:
    index = commands.add_parser("index", help="index image files and folders (recursive, incremental, resumable)")
    index.add_argument("paths", nargs="+", metavar="PATH")
    index.add_argument("--batch-size", type=positive_int, default=32, help="images per model batch (default 32)")
    index.add_argument("--workers", type=non_negative_int, default=None,
                       help="decoding processes (default: on CUDA cores - 1; on the CPU, decoding "
                            "runs in the main process between batches; 0: one decode thread)")
    index.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: LOUPE_DEVICE)")
    index.add_argument("--decode", choices=("auto", "pillow", "torchvision"), default="auto",
                       help="JPEG decoding: pillow (CPU processes/threads), torchvision (on the model's "
                            "device: nvJPEG on CUDA, with Pillow for other files), auto (torchvision on CUDA)")
    index.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="read and embed on a Ray cluster: auto (the running cluster, else a local "
                            "Ray) or a Ray address; needs the ray extra")
    index.add_argument("--ray-embedders", type=positive_int, default=None, metavar="N",
                       help="with --ray: model actors (default: one per GPU, else one per node's CPUs)")
    index.add_argument("--no-progress", action="store_true", help="no progress bar")
    index.add_argument("--json", action="store_true", help="print the summary as JSON")
    index.set_defaults(handler=cmd_index)

    remove = commands.add_parser("remove", help="remove images (by path, folder or id) from the index and catalog")
    remove.add_argument("targets", nargs="*", metavar="PATH|ID")
    remove.add_argument("--missing", action="store_true", help="also remove every image whose file has vanished")
    remove.add_argument("--json", action="store_true")
    remove.set_defaults(handler=cmd_remove)

    status = commands.add_parser("status", help="counts, model identity, index type, device, database")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser("upgrade", help="apply catalog migrations")
    db.set_defaults(handler=cmd_db)


def cmd_index(settings: Settings, args, out: TextIO) -> int:
    from indexer.jobs import IndexJob, IndexOptions

    for path in args.paths:
        if not Path(path).exists():
            raise LoupeError(f"no such file or folder: {path}")
    library = open_library(settings)
    embedder = load_embedder(settings, args.device)
    options = IndexOptions(
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress,
        decode=args.decode,
    )
    if args.ray is not None:
        if args.workers is not None:
            raise LoupeError("--workers is for local jobs; with --ray, Ray tasks decode the files")
        from indexer.distributed import RayIngest, RayOptions

        ingest = RayIngest(RayOptions(address=args.ray, embedders=args.ray_embedders))
        job = IndexJob(library, embedder, options, ingest=ingest)
    else:
        job = IndexJob(library, embedder, options)
    summary = job.run(args.paths)
    if args.json:
        print_json(summary.as_dict(), out)
    else:
        print(f"loupe: {summary.line()}", file=out)
        if summary.missing:
            print(f"loupe: {summary.missing} indexed files have vanished; `loupe remove --missing` removes them", file=out)
    if summary.files_seen == 0:
        raise NotIndexedError(f"no image files (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC) under {' '.join(args.paths)}")
    return 0


def cmd_remove(settings: Settings, args, out: TextIO) -> int:
    from sqlalchemy import select

    from indexer.catalog import ImageRecord
    from indexer.thumbnails import remove_thumbnail
    from indexer.uploads import discard_upload
    from indexer.writer import apply_delta, retire_all

    if not args.targets and not args.missing:
        raise ConfigError("name the images to remove (PATH or ID), or use --missing")
    library = open_library(settings)
    with library.writer():
        library.sync_store()
        with library.sessions.begin() as session:
            records = _resolve_targets(session, args.targets)
            if args.missing:
                records += session.scalars(select(ImageRecord).where(ImageRecord.missing_since.is_not(None))).all()
            unique = list({r.id: r for r in records}.values())
            removed = [(r.id, r.path) for r in unique]
            delta = retire_all(session, unique)
        apply_delta(library, delta)
        library.sync_store()
    for image_id, path in removed:
        remove_thumbnail(settings.home, image_id)
        discard_upload(settings.home, path)
    removed_paths = [path for _, path in removed]
    if args.json:
        print_json({"removed": len(removed_paths), "paths": removed_paths}, out)
    else:
        print(f"loupe: removed {len(removed_paths)} images", file=out)
    return 0


def _resolve_targets(session, targets: list[str]) -> list[ImageRecord]:
    """Rows for each target (id, file path or folder); any target matching nothing is an error."""
    from sqlalchemy import select

    from indexer.catalog import ImageRecord

    found: list[ImageRecord] = []
    for target in targets:
        if target.isdigit():
            rows = session.scalars(select(ImageRecord).where(ImageRecord.id == int(target))).all()
        else:
            path = os.path.abspath(target)
            prefix = path.rstrip(os.sep) + os.sep
            rows = session.scalars(
                select(ImageRecord).where(
                    (ImageRecord.path == path) | ImageRecord.path.startswith(prefix, autoescape=True)
                )
            ).all()
        if not rows:
            raise NotIndexedError(f"nothing indexed matches {target}; nothing was removed")
        found += rows
    return found


def cmd_status(settings: Settings, args, out: TextIO) -> int:
    from indexer.embedder import resolve_device
    from indexer.job_report import IndexingJobReport
    from indexer.vectorstore import faiss_build

    library = open_library(settings)
    stored = library.stored_identity()
    store = library.store
    job = library.last_job()
    calibration = library.calibration()
    report = {
        "images": library.counts(),
        "failures": [{"path": p, "error": e} for p, e in library.recent_failures()],
        "model": {
            "configured": {"architecture": settings.model, "pretrained": settings.pretrained},
            "index": stored.as_dict() if stored else None,
        },
        "index": {**store.describe(), "path": str(settings.index_path), "faiss": faiss_build()},
        "regions": {**library.regions.store.describe(), "path": str(settings.regions_path),
                    "scales": settings.regions.describe()},
        "matching": calibration.match.as_dict(),
        "verification": {"enabled": settings.verify, "candidates": settings.verify_candidates,
                         **calibration.inliers.as_dict()},
        "noise": calibration.noise.as_dict(),
        "device": resolve_device(settings.device),
        "database": redact_url(settings.database_url),
        "home": str(settings.home),
        "last_job": None if job is None else IndexingJobReport.of(job).brief(),
    }
    if args.json:
        print_json(report, out)
        return 0
    counts = report["images"]
    print(f"images:   {counts['indexed']} indexed, {counts['duplicate']} duplicates, "
          f"{counts['failed']} failed, {counts['missing']} missing", file=out)
    print(f"model:    {stored.describe() if stored else 'none yet'} "
          f"(configured: {settings.model}/{settings.pretrained})", file=out)
    if stored is not None and stored.caveat():
        print(f"note:     {stored.caveat()}", file=out)
    mapped = ", memory-mapped" if store.mapped else ""
    print(f"index:    {store.spec.factory}, {len(store)} vectors, {store.device}{mapped} ({settings.index_path})",
          file=out)
    build = report["index"]["faiss"]
    print(f"faiss:    {build['version']}, {'GPU' if build['gpu_build'] else 'CPU-only'} build, "
          f"GPUs visible: {build['gpus']}", file=out)
    regions = library.regions.store
    print(f"regions:  {regions.spec.factory}, {len(regions)} vectors, scales {settings.regions.describe()} "
          f"({settings.regions_path})", file=out)
    matching = report["matching"]
    print(f"matching: near-duplicate from score {matching['near_duplicate']:.4f} (whole picture), "
          f"{matching['near_duplicate_region']:.4f} (region); {matching['basis']}", file=out)
    noise = report["noise"]
    print(f"noise:    indexed pictures' noise level (model input, grey levels) median {noise['median']:.2f}, "
          f"99th centile {noise['p99']:.2f}" + ("" if noise["pictures"] else " (default: not calibrated yet)"), file=out)
    print(f"device:   {report['device']}", file=out)
    print(f"database: {report['database']}", file=out)
    if job is not None:
        print(f"last job: #{job.id} {job.state}, {job.added} added, {job.failed} failed, {job.seconds:.1f} s", file=out)
    for failure in report["failures"]:
        print(f"failed:   {failure['path']}: {failure['error']}", file=out)
    return 0


def cmd_db(settings: Settings, args, out: TextIO) -> int:
    from indexer.database import current_and_head, make_engine, upgrade

    if settings.is_sqlite:
        ensure_home(settings.home)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        current, _ = current_and_head(engine)
    finally:
        engine.dispose()
    print(f"loupe: database {redact_url(settings.database_url)} is at schema {current}", file=out)
    return 0
