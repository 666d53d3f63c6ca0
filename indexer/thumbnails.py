"""Thumbnails: made on first request from the catalogued file and cached under LOUPE_HOME."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .images import DecodeLimits, load_image_file

THUMB_SIZE = 320


def thumbnail_path(home: Path, image_id: int) -> Path:
    # Ids are immutable per content (a changed file gets a new id), so a cached thumbnail
    # never goes stale; shard folders keep directories small.
    return home / "thumbs" / f"{image_id % 1000:03d}" / f"{image_id}.jpg"


def ensure_thumbnail(home: Path, image_id: int, source: Path, limits: DecodeLimits = DecodeLimits()) -> Path:
    """The cached thumbnail of `source` (at most THUMB_SIZE px a side, JPEG), made if needed.

    Written to a temporary file and renamed, so concurrent requests never see half a file.
    """
    path = thumbnail_path(home, image_id)
    if path.exists():
        return path
    decoded = load_image_file(source, limits, draft_size=THUMB_SIZE)
    image = decoded.image
    image.thumbnail((THUMB_SIZE, THUMB_SIZE))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        image.save(tmp, format="JPEG", quality=85, optimize=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def remove_thumbnail(home: Path, image_id: int) -> None:
    thumbnail_path(home, image_id).unlink(missing_ok=True)
