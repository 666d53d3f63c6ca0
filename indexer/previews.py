"""Previews: a picture at most PREVIEW_SIZE px a side as a JPEG, for the detail view (so a
20 MB JPEG is not sent whole, and TIFF or BMP originals show in any browser). Made on first
request from the catalogued file and cached under LOUPE_HOME/previews.

A preview's name holds its image's id and the start of its content hash, so a cached file
can only ever be served for the picture it was made from: a catalog rebuilt from scratch that
gives the id to another picture asks for another name."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from .atomic import atomic_path
from .images import DecodeLimits, decode_image

PREVIEW_SIZE = 1600
FOLDER = "previews"
_HASH_CHARS = 16
_LOCK_STRIPES = 64


class _StripedLocks:
    """One lock per image id (striped), so a burst of requests for one new preview decodes its
    original once."""

    def __init__(self, stripes: int = _LOCK_STRIPES):
        self._locks = [threading.Lock() for _ in range(stripes)]

    def __call__(self, image_id: int) -> threading.Lock:
        return self._locks[image_id % len(self._locks)]


_locks: _StripedLocks | None = None
_locks_made = threading.Lock()


def _lock_for(image_id: int) -> threading.Lock:
    global _locks
    if _locks is None:
        with _locks_made:
            if _locks is None:
                _locks = _StripedLocks()
    return _locks(image_id)


def preview_path(home: Path, image_id: int, content_hash: str) -> Path:
    """Where image `image_id` with content `content_hash` (hex sha256) has its preview."""
    return home / FOLDER / f"{image_id % 1000:03d}" / f"{image_id}-{content_hash[:_HASH_CHARS]}.jpg"


def ensure_preview(home: Path, image_id: int, content_hash: str, read: Callable[[], bytes],
                   limits: DecodeLimits = DecodeLimits(), size: int = PREVIEW_SIZE) -> Path:
    """The cached preview of the image (at most `size` px a side, EXIF orientation applied,
    JPEG), made from the bytes `read()` gives if needed, under the id's lock; written to a
    temporary file and renamed (`indexer.atomic`)."""
    path = preview_path(home, image_id, content_hash)
    if path.exists():
        return path
    with _lock_for(image_id):
        if path.exists():  # made while this request waited
            return path
        image = decode_image(read(), limits, draft_size=size).image
        image.thumbnail((size, size))
        with atomic_path(path) as tmp:
            image.save(tmp, format="JPEG", quality=85, optimize=True)
    return path


def remove_previews(home: Path, image_id: int) -> None:
    """Delete image `image_id`'s cached previews (whatever content they were made from)."""
    for path in (home / FOLDER / f"{image_id % 1000:03d}").glob(f"{image_id}-*.jpg"):
        path.unlink(missing_ok=True)
