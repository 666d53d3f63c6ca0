"""Thumbnails: made on first request from the catalogued file and cached under LOUPE_HOME."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from .atomic import atomic_path
from .images import DecodeLimits, decode_image

THUMB_SIZE = 320
_LOCK_STRIPES = 64


class _IdLocks:
    """One lock per image id (striped: ids share `stripes` locks), so that a burst of requests
    for one new thumbnail decodes its original once, not once per request."""

    def __init__(self, stripes: int = _LOCK_STRIPES):
        self._locks = [threading.Lock() for _ in range(stripes)]

    def __call__(self, image_id: int) -> threading.Lock:
        return self._locks[image_id % len(self._locks)]


_locks: _IdLocks | None = None
_locks_made = threading.Lock()


def _lock_for(image_id: int) -> threading.Lock:
    global _locks
    if _locks is None:
        with _locks_made:
            if _locks is None:
                _locks = _IdLocks()
    return _locks(image_id)


def thumbnail_path(home: Path, image_id: int) -> Path:
    # Ids are immutable per content (a changed file gets a new id), so a cached thumbnail
    # never goes stale; shard folders keep directories small.
    return home / "thumbs" / f"{image_id % 1000:03d}" / f"{image_id}.jpg"


def ensure_thumbnail(home: Path, image_id: int, read: Callable[[], bytes],
                     limits: DecodeLimits = DecodeLimits()) -> Path:
    """The cached thumbnail of image `image_id` (at most THUMB_SIZE px a side, JPEG), made from
    the bytes `read()` gives (the checked catalogued file) if needed, under the id's lock.

    Written to a temporary file and renamed, so concurrent readers never see half a file.
    """
    path = thumbnail_path(home, image_id)
    if path.exists():
        return path
    with _lock_for(image_id):
        if path.exists():  # made while this request waited
            return path
        image = decode_image(read(), limits, draft_size=THUMB_SIZE).image
        image.thumbnail((THUMB_SIZE, THUMB_SIZE))
        with atomic_path(path) as tmp:
            image.save(tmp, format="JPEG", quality=85, optimize=True)
    return path


def remove_thumbnail(home: Path, image_id: int) -> None:
    thumbnail_path(home, image_id).unlink(missing_ok=True)
