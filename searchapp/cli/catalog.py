"""The catalog commands: `loupe index`, `remove`, `status`, `reembed` and `db`."""

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
    index.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders (searched recursively)")
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
                            "Ray) or a Ray address; needs the ray extra (default: off, a local job)")
    index.add_argument("--ray-embedders", type=positive_int, default=None, metavar="N",
                       help="with --ray: model actors (default: one per GPU, else one per node's CPUs)")
    index.add_argument("--no-progress", action="store_true", help="no progress bar")
    index.add_argument("--json", action="store_true", help="print the summary as JSON")
    index.set_defaults(handler=cmd_index)

    remove = commands.add_parser("remove", help="remove images (by path, folder or id:N) from the index and catalog")
    remove.add_argument("targets", nargs="*", metavar="PATH|id:N",
                        help="a file or folder (every picture indexed under it), or id:N for image id N; a bare "
                             "number is a path only when that path exists (else write id:N)")
    remove.add_argument("--missing", action="store_true", help="also remove every image whose file has vanished")
    remove.add_argument("--dry-run", action="store_true", help="list what would be removed; change nothing")
    remove.add_argument("--json", action="store_true", help="print what was removed as JSON")
    remove.set_defaults(handler=cmd_remove)

    status = commands.add_parser("status", help="counts, model identity, index type, device, database")
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    status.add_argument("--failures", action="store_true",
                        help="list every file that failed to index, with its error (with --json: as JSON)")
    status.set_defaults(handler=cmd_status)

    register_reembed(commands)

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


def _follow_index(library) -> None:
    """The kNN graph and the map after a removal (`indexer.collection_map`; no model needed)."""
    from indexer.collection_map import follow_index

    follow_index(library)


def cmd_remove(settings: Settings, args, out: TextIO) -> int:
    from indexer.previews import remove_previews
    from indexer.thumbnails import remove_thumbnail
    from indexer.uploads import discard_upload
    from indexer.writer import apply_delta, retire_all

    if not args.targets and not args.missing:
        raise ConfigError("name the images to remove (PATH or id:N), or use --missing")
    library = open_library(settings)
    if args.dry_run:
        return _print_dry_run(library, args, out)
    with library.writer():
        library.sync_store()
        with library.sessions.begin() as session:
            unique = _targets_and_missing(session, args)
            removed = [(r.id, r.content_hash, r.path) for r in unique]
            delta = retire_all(session, unique)
        apply_delta(library, delta)
        library.sync_store()
        _follow_index(library)
    for image_id, content_hash, path in removed:
        remove_thumbnail(settings.home, content_hash)
        remove_previews(settings.home, image_id)
        discard_upload(settings.home, path)
    removed_paths = [path for _, _, path in removed]
    if args.json:
        print_json({"removed": len(removed_paths), "paths": removed_paths}, out)
    else:
        print(f"loupe: removed {len(removed_paths)} images", file=out)
    return 0


def _targets_and_missing(session, args) -> list[ImageRecord]:
    """The rows `loupe remove` names (its targets, and the vanished files with --missing), once each."""
    from sqlalchemy import select

    from indexer.catalog import ImageRecord

    records = _resolve_targets(session, args.targets)
    if args.missing:
        records += session.scalars(select(ImageRecord).where(ImageRecord.missing_since.is_not(None))).all()
    return list({r.id: r for r in records}.values())


def _print_dry_run(library, args, out: TextIO) -> int:
    """`loupe remove --dry-run`: what would be removed (id and path of each), nothing changed."""
    with library.sessions() as session:
        rows = [(r.id, r.path) for r in _targets_and_missing(session, args)]
    if args.json:
        print_json({"dry_run": True, "removed": 0, "would_remove": len(rows),
                    "images": [{"id": i, "path": p} for i, p in rows], "paths": [p for _, p in rows]}, out)
        return 0
    for image_id, path in rows:
        print(f"would remove: id:{image_id}  {path}", file=out)
    print(f"loupe: dry run: {len(rows)} images would be removed; nothing was changed", file=out)
    return 0


def target_id(target: str) -> int | None:
    """The image id `target` names (`id:N`), None for a path; a bare number that is not an
    existing path is an error that says to write id:N (ids used to be given bare)."""
    if target.lower().startswith("id:"):
        number = target[3:].strip()
        if not number.isdigit() or int(number) < 1:
            raise ConfigError(f"{target!r} is not an image id: write id:N with N a positive whole number")
        return int(number)
    if target.isdigit() and not os.path.lexists(target):
        raise ConfigError(f"{target!r} is not an existing path; to remove image id {target}, write id:{target} "
                          f"(a path that no longer exists: write it as ./{target})")
    return None


def _resolve_targets(session, targets: list[str]) -> list[ImageRecord]:
    """Rows for each target (id:N, file path or folder); any target matching nothing is an error."""
    from sqlalchemy import select

    from indexer.catalog import ImageRecord

    found: list[ImageRecord] = []
    for target in targets:
        image_id = target_id(target)
        if image_id is not None:
            rows = session.scalars(select(ImageRecord).where(ImageRecord.id == image_id)).all()
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
    from indexer.embedder import ModelIdentity, configured_model, resolve_device
    from indexer.job_report import IndexingJobReport
    from indexer.reembed import staged_progress
    from indexer.vectorstore import faiss_build

    library = open_library(settings)
    if args.failures:
        return _print_failures(library, args, out)
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
            # true: a published pretrained tag; false: untrained (none); "unknown": a checkpoint file
            "semantic": stored.semantic if stored else configured_model(settings.model, settings.pretrained)["semantic"],
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
        "reembed": staged_progress(library),  # a re-embed staged and not swapped yet, else null
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
    if report["reembed"] is not None:
        staged = report["reembed"]
        target = ModelIdentity.from_dict(staged["model"])
        print(f"reembed:  {staged['staged']} of {counts['indexed']} pictures staged for "
              f"{target.describe() if target else '?'} (rerun `loupe reembed` with it to finish, or --discard)", file=out)
    for failure in report["failures"]:
        print(f"failed:   {failure['path']}: {failure['error']}", file=out)
    if counts["failed"] > len(report["failures"]):
        print(f"failed:   ... {counts['failed']} in all: `loupe status --failures` lists every one", file=out)
    return 0


def _print_failures(library, args, out: TextIO) -> int:
    """`loupe status --failures`: every file that failed to index, with its error, by id."""
    from sqlalchemy import select

    from indexer.catalog import ImageRecord, ImageStatus

    with library.sessions() as session:
        rows = session.execute(select(ImageRecord.id, ImageRecord.path, ImageRecord.error)
                               .where(ImageRecord.status == ImageStatus.FAILED).order_by(ImageRecord.id)).all()
    failures = [{"id": row.id, "path": row.path, "error": row.error or ""} for row in rows]
    if args.json:
        print_json({"failed": len(failures), "failures": failures}, out)
        return 0
    for failure in failures:
        print(f"{failure['path']}: {failure['error']}", file=out)
    print(f"loupe: {len(failures)} files failed to index", file=out)
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


def register_reembed(commands: argparse._SubParsersAction) -> None:
    reembed = commands.add_parser(
        "reembed", help="re-embed the whole library with another model (LOUPE_MODEL/LOUPE_PRETRAINED or "
                        "--model/--pretrained), then swap it in; resumable")
    reembed.add_argument("--model", default=None, help="open_clip architecture (default: LOUPE_MODEL)")
    reembed.add_argument("--pretrained", default=None,
                         help="pretrained tag, checkpoint path or none (default: LOUPE_PRETRAINED)")
    reembed.add_argument("--batch-size", type=positive_int, default=32, help="images per model batch (default 32)")
    reembed.add_argument("--workers", type=non_negative_int, default=None, help="decoding processes (as for index)")
    reembed.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: LOUPE_DEVICE)")
    reembed.add_argument("--decode", choices=("auto", "pillow", "torchvision"), default="auto",
                         help="JPEG decoding (as for index)")
    reembed.add_argument("--allow-unreadable", action="store_true",
                         help="swap even if some indexed files cannot be read now (they become failed)")
    reembed.add_argument("--discard", action="store_true",
                         help="drop a stopped re-embed's staged vectors instead (the index is untouched)")
    reembed.add_argument("--no-progress", action="store_true", help="no progress bar")
    reembed.add_argument("--json", action="store_true", help="print the summary as JSON")
    reembed.set_defaults(handler=cmd_reembed)


def cmd_reembed(settings: Settings, args, out: TextIO) -> int:
    from indexer.reembed import Reembed, ReembedOptions, discard

    library = open_library(settings)
    if args.discard:
        dropped = discard(library)
        if args.json:
            print_json({"discarded": dropped}, out)
        else:
            print(f"loupe: discarded {dropped} staged vectors; the index is unchanged", file=out)
        return 0
    settings = settings.with_overrides(model=args.model, pretrained=args.pretrained)
    embedder = load_embedder(settings, args.device)
    options = ReembedOptions(batch_size=args.batch_size, workers=args.workers, decode=args.decode,
                             progress=not args.no_progress, allow_unreadable=args.allow_unreadable)
    summary = Reembed(library, embedder, options).run()
    if args.json:
        print_json(summary.as_dict(), out)
    else:
        print(f"loupe: {summary.line()}", file=out)
        if summary.discarded:
            print(f"loupe: discarded {summary.discarded} vectors staged earlier for another model", file=out)
        print(f"loupe: restart `loupe serve` with LOUPE_MODEL={summary.new_model.architecture} and "
              f"LOUPE_PRETRAINED set to these weights; searches with the old model are refused", file=out)
    return 0
