"""What each `loupe` command does, given the settings and parsed arguments."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TextIO

from sqlalchemy import select

from .catalog import ImageRecord
from .cli import print_json
from .errors import ConfigError, LoupeError, NotIndexedError
from .settings import Settings, ensure_home, redact_url

MAX_K = 200


def load_embedder(settings: Settings, device: str | None = None):
    from .embedder import ModelSpec, create_embedder

    spec = ModelSpec(settings.model, settings.pretrained, device or settings.device)
    return create_embedder(spec, settings.models_dir)


def open_library(settings: Settings):
    from .library import Library

    return Library.open(settings)


def cmd_index(settings: Settings, args, out: TextIO) -> int:
    from .jobs import IndexJob, IndexOptions

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
        from .distributed import RayIndexJob, RayOptions

        job = RayIndexJob(library, embedder, options, RayOptions(address=args.ray, embedders=args.ray_embedders))
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
        raise NotIndexedError(f"no image files (JPEG, PNG, WebP, GIF, BMP, TIFF) under {' '.join(args.paths)}")
    return 0


def cmd_search(settings: Settings, args, out: TextIO, image_lookup=None, page_json=None) -> int:
    """`loupe search`. `image_lookup(library, embedder, data, k, offset, regions, verify)` →
    (page, report dict or None) replaces the plain reverse lookup (searchapp's restoration);
    `page_json(page)` → dict serialises the results (searchapp's adds the web URLs)."""
    if (args.text is None) == (args.image is None):
        raise ConfigError("give either TEXT or --image FILE")
    if args.text is not None and not args.text.strip():
        raise ConfigError("the search text is empty")
    k = min(args.k, MAX_K)
    library = open_library(settings)
    if library.stored_identity() is None:
        raise NotIndexedError("nothing is indexed yet: run `loupe index PATH` first")
    embedder = load_embedder(settings, args.device)
    library.bind_model(embedder.identity)
    restoration = None
    if args.image is not None:
        from .images import DecodeLimits, read_file
        from .lookup import reverse_lookup

        from .verify import VerifyOptions

        data = read_file(Path(args.image), DecodeLimits()).data
        wanted = settings.verify if getattr(args, "verify", None) is None else args.verify == "on"
        verify = VerifyOptions(candidates=settings.verify_candidates) if wanted else None
        if image_lookup is None:
            page = reverse_lookup(library, embedder, data, k, args.offset, regions=not args.no_regions, verify=verify)
        else:
            page, restoration = image_lookup(library, embedder, data, k, args.offset, not args.no_regions, verify)
    else:
        t0 = time.perf_counter()
        page = library.search(embedder.encode_texts([args.text]), k=k, offset=args.offset, started=t0)
    if args.json:
        body = page.as_dict() if page_json is None else page_json(page)
        print_json({**body, **({"restoration": restoration} if restoration is not None else {})}, out)
        return 0
    if restoration is not None:
        print(_restoration_line(restoration), file=out)
    if embedder.identity.caveat():
        print(f"note: {embedder.identity.caveat()}", file=out)
    if not page.results:
        print("no results", file=out)
    if page.copy_found is False:
        print("no copy of this picture is in the collection; the most similar pictures:", file=out)
    verified = next((r for r in page.results if r.verification is not None), None)
    if page.copy_found and verified is not None:
        print(f"verdict: a copy is in the collection (id {verified.id}): {verified.verification.describe()}", file=out)
    for rank, result in enumerate(page.results, start=args.offset + 1):
        label = f"  [{result.match}{' in region ' + 'x'.join(map(str, result.region.as_list())) if result.region else ''}]" \
            if result.match else ""
        print(f"{rank:4d}  {result.score:7.4f}  {result.path}  ({result.width}x{result.height}, id {result.id}){label}",
              file=out)
        if result.verification is not None:
            print(f"      verified: {result.verification.describe()} ({_verification_facts(result.verification)})",
                  file=out)
    return 0


def _verification_facts(found) -> str:
    return (f"{found.inliers} inliers; {found.overlap_query:.0%} of the query, {found.overlap_result:.0%} of the "
            f"result; scale {found.scale:.2f}; {found.relation}")


def _restoration_line(report: dict) -> str:
    detected = ", ".join(report.get("detected") or []) or "nothing"
    applied = ", ".join(report.get("applied") or []) or "no stage"
    skipped = "".join(f"; skipped {stage}: {why}" for stage, why in (report.get("skipped") or {}).items())
    return f"restoration: detected {detected}; ran {applied} ({report.get('ms', 0):.0f} ms){skipped}"


def cmd_remove(settings: Settings, args, out: TextIO) -> int:
    from .thumbnails import remove_thumbnail
    from .uploads import discard_upload

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
            delta = library.remove(unique, session)
        library.apply(delta)
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
    from .embedder import resolve_device
    from .job_report import IndexingJobReport
    from .vectorstore import faiss_build

    library = open_library(settings)
    stored = library.stored_identity()
    store = library.store
    job = library.last_job()
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
        "matching": library.match_cutoff().as_dict(),
        "verification": {"enabled": settings.verify, "candidates": settings.verify_candidates,
                         **library.inlier_cutoff().as_dict()},
        "noise": library.noise_profile().as_dict(),
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
    from .database import current_and_head, make_engine, upgrade

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


def cmd_demo(settings: Settings, args, out: TextIO) -> int:
    from .demo import run_demo

    run_demo(settings, out, progress=not args.no_progress)
    return 0
