#!/usr/bin/env python
"""Disk and memory a picture costs: bytes per picture in LOUPE_HOME, split by what holds them.

    python bench/disk_usage.py --count 64                   # index 64 generated JPEGs per region setting
    python bench/disk_usage.py --count 64 --regions off     # one setting (default: default,off)
    python bench/disk_usage.py --loupe-home ~/.local/share/loupe   # measure an existing library, index nothing

With --count, each region setting gets a fresh LOUPE_HOME (SQLite, FAISS) in its own process:
the photographs (`index_throughput.py`'s: seeded crops of scikit-image's photographs, about
1024 px, JPEG quality 90) are indexed as `loupe index` does, then every picture's thumbnail
and preview are made as the web page would. Reported, per indexed picture:

  database     the SQLite file after a WAL checkpoint (all of it: rows, indexes, free pages),
               and inside it the whole-picture vectors, the region vectors and the local
               features (the sum of their column lengths);
  vectors      index.faiss and regions.faiss (caches of the vectors in the database);
  thumbnails   thumbs/ (320 px JPEGs, made on first view), previews/ (1600 px, on first view);
  RAM          peak resident memory of the indexing process (model loaded), and its resident
               memory after the job with the model and both indexes loaded (about what
               `loupe serve` holds; the model dominates at small sizes).

With --loupe-home only what is on disk is measured (nothing is made or changed; the database
is read-only). The numbers scale linearly with the picture count except the database's fixed
overhead and the model. Everything else lives under --home (default /tmp/loupe-bench-home,
whose models/ holds the untrained checkpoint `index_throughput.py` also uses).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

import common
from provenance import print_header, print_result

MIB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=64, help="photographs to generate and index (default 64)")
    p.add_argument("--regions", default="default,off",
                   help="region settings, a comma list of default (LOUPE_REGIONS unset), off, or scales such as 2+3")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (default ViT-B-32)")
    p.add_argument("--pretrained", default="none", help="pretrained tag, checkpoint path or none (default none)")
    p.add_argument("--seed", type=int, default=0, help="seed for the generated photographs")
    p.add_argument("--home", type=Path, default=Path(common.DEFAULT_HOME),
                   help="benchmark folder; its models/ is reused between runs")
    p.add_argument("--loupe-home", type=Path, default=None, help="measure this existing LOUPE_HOME instead")
    p.add_argument("--keep", action="store_true", help="keep the generated photographs and homes")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be positive")
    if args.loupe_home is not None and not (args.loupe_home / "loupe.db").is_file():
        p.error(f"--loupe-home {args.loupe_home} has no loupe.db")
    return args


# -- measuring a home ---------------------------------------------------------------------------------
def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def file_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def measure_home(home: Path) -> dict:
    """What `home` holds on disk: totals in bytes, and the picture count they are divided by."""
    db = home / "loupe.db"
    uri = f"file:{db}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        pictures, vectors, features = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(embedding)), 0), COALESCE(SUM(LENGTH(local_features)), 0) "
            "FROM images WHERE status = 'indexed'").fetchone()
        regions, region_vectors = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(embedding)), 0) FROM image_regions").fetchone()
    finally:
        conn.close()
    return {
        "pictures": pictures,
        "regions": regions,
        "database": file_bytes(db) + file_bytes(home / "loupe.db-wal"),
        "db_vectors": vectors,
        "db_region_vectors": region_vectors,
        "db_local_features": features,
        "index_faiss": file_bytes(home / "index.faiss"),
        "regions_faiss": file_bytes(home / "regions.faiss"),
        "thumbs": folder_bytes(home / "thumbs"),
        "previews": folder_bytes(home / "previews"),
        "uploads": folder_bytes(home / "uploads"),
    }


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- indexing one setting (in a child process, so its peak memory is its own) ---------------------
def index_one(photo_dir: str, home: str, env: dict) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from indexer.factory import load_embedder, open_library
    from indexer.images import DecodeLimits
    from indexer.jobs import IndexJob, IndexOptions
    from indexer.previews import ensure_preview
    from indexer.settings import Settings
    from indexer.thumbnails import ensure_thumbnail

    settings = Settings.from_env(env)
    embedder = load_embedder(settings)
    library = open_library(settings)
    try:
        IndexJob(library, embedder, IndexOptions(progress=False)).run([Path(photo_dir)])
        for record in _records(library):
            data = Path(record.path).read_bytes()
            ensure_thumbnail(settings.home, record.id, lambda: data)
            ensure_preview(settings.home, record.id, record.content_hash, lambda: data, DecodeLimits())
        library.store  # both indexes loaded, as a server holds them
        library.regions.store
        resident = rss_bytes()
        with library.sessions() as session:
            session.connection().exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        library.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {**measure_home(Path(home)), "rss_after": resident, "rss_peak": peak}


def _records(library):
    from sqlalchemy import select

    from indexer.catalog import ImageRecord, ImageStatus

    with library.sessions() as session:
        return session.scalars(select(ImageRecord).where(ImageRecord.status == ImageStatus.INDEXED)).all()


# -- report -------------------------------------------------------------------------------------------
ROWS = (
    ("database (file)", "database"),
    ("  of which whole-picture vectors", "db_vectors"),
    ("  of which region vectors", "db_region_vectors"),
    ("  of which local features", "db_local_features"),
    ("index.faiss (cache)", "index_faiss"),
    ("regions.faiss (cache)", "regions_faiss"),
    ("thumbs/ (cache)", "thumbs"),
    ("previews/ (cache)", "previews"),
    ("uploads/", "uploads"),
)


def report(label: str, figures: dict) -> dict:
    n = max(1, figures["pictures"])
    per = {key: figures[key] / n for _, key in ROWS}
    total = sum(per[k] for k in ("database", "index_faiss", "regions_faiss", "thumbs", "previews", "uploads"))
    print(f"-- {label}: {figures['pictures']} pictures, {figures['regions']} regions "
          f"({figures['regions'] / n:.1f} a picture)")
    print(f"{'':36}{'bytes/picture':>14}{'MiB total':>12}{'GiB at 80k':>12}")
    for name, key in ROWS:
        print(f"{name:36}{per[key]:14,.0f}{figures[key] / MIB:12.2f}{per[key] * 80_000 / 2**30:12.2f}")
    print(f"{'all of LOUPE_HOME but models/':36}{total:14,.0f}{total * n / MIB:12.2f}{total * 80_000 / 2**30:12.2f}")
    if "rss_peak" in figures:
        print(f"RAM: peak {figures['rss_peak'] / MIB:,.0f} MiB while indexing; "
              f"{figures['rss_after'] / MIB:,.0f} MiB resident after, model and indexes loaded")
    return {**figures, "per_picture": per, "per_picture_total": total}


def main(argv=None) -> int:
    args = parse_args(argv)
    label = common.clip_model_label(args.model, args.pretrained)
    header = print_header("disk_usage", args, model=None if args.loupe_home else label)
    if args.loupe_home is not None:
        print_result("disk_usage", {"home": report(str(args.loupe_home), measure_home(args.loupe_home))}, header)
        return 0
    from index_throughput import make_photos, parse_regions

    settings_list = parse_regions(args.regions)
    work = Path(tempfile.mkdtemp(prefix="disk-usage-"))
    models = args.home.expanduser().absolute() / "models"
    models.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        photos = work / "photos"
        make_photos(photos, args.count, args.seed)
        context = multiprocessing.get_context("spawn")
        for regions in settings_list:
            home = work / f"home-{regions.label}"
            home.mkdir()
            (home / "models").symlink_to(models, target_is_directory=True)
            env = {"LOUPE_HOME": str(home), "LOUPE_MODEL": args.model, "LOUPE_PRETRAINED": args.pretrained,
                   "LOUPE_DEVICE": "cpu"}
            if regions.value is not None:
                env["LOUPE_REGIONS"] = regions.value
            with context.Pool(1) as pool:
                figures = pool.apply(index_one, (str(photos), str(home), env))
            results[regions.label] = report(f"regions {regions.describe()}", figures)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_result("disk_usage", {"count": args.count, "regions": results}, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
