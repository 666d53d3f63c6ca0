"""Thumbnails: made on first request from the catalogued file and cached under LOUPE_HOME.

The cache is keyed by the picture's content hash (SHA-256 of its bytes), never by its row id:
ids restart when a catalog is deleted and made again, and a cached file named after an id
would then show on another picture. A file named after the bytes it was made from can only
ever show those bytes. Duplicates (same bytes) share one thumbnail.
"""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path
from typing import Callable

from .atomic import atomic_path
from .images import DecodeLimits, decode_image

THUMB_SIZE = 320
THUMB_VERSION = 16  # hex digits of the content hash a thumbnail URL carries as its version (`v`)
_LOCK_STRIPES = 64
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LEGACY_SHARD = re.compile(r"[0-9]{3}")  # the old id-keyed cache: thumbs/NNN/<id>.jpg


class _StripedLocks:
    """Locks shared by stripes of keys, so that a burst of requests for one new cached picture
    decodes its original once, not once per request."""

    def __init__(self, stripes: int = _LOCK_STRIPES):
        self._locks = [threading.Lock() for _ in range(stripes)]

    def __call__(self, key: int) -> threading.Lock:
        return self._locks[key % len(self._locks)]


_locks: _StripedLocks | None = None
_locks_made = threading.Lock()


def _lock_for(key: int) -> threading.Lock:
    global _locks
    if _locks is None:
        with _locks_made:
            if _locks is None:
                _locks = _StripedLocks()
    return _locks(key)


def ensure_scaled_jpeg(path: Path, lock_key: int, size: int, read: Callable[[], bytes],
                       limits: DecodeLimits = DecodeLimits()) -> Path:
    """`path`, a JPEG of the picture at most `size` px a side (EXIF orientation applied), made
    from the bytes `read()` gives if it is not there yet, under `lock_key`'s lock. Written to a
    temporary file and renamed, so concurrent readers never see half a file. Thumbnails and
    previews (`indexer.previews`) are both made here."""
    if path.exists():
        return path
    with _lock_for(lock_key):
        if path.exists():  # made while this request waited
            return path
        image = decode_image(read(), limits, draft_size=size).image
        image.thumbnail((size, size))
        with atomic_path(path) as tmp:
            image.save(tmp, format="JPEG", quality=85, optimize=True)
    return path


def thumbnail_path(home: Path, content_hash: str) -> Path:
    """Where the thumbnail of the bytes with SHA-256 `content_hash` is cached (sharded by its
    first two hex digits, so folders stay small). Raises ValueError for anything but a hash."""
    if not isinstance(content_hash, str) or not _SHA256.fullmatch(content_hash):
        raise ValueError(f"not a SHA-256 content hash: {content_hash!r}")
    return home / "thumbs" / content_hash[:2] / f"{content_hash}.jpg"


def ensure_thumbnail(home: Path, content_hash: str, read: Callable[[], bytes],
                     limits: DecodeLimits = DecodeLimits()) -> Path:
    """The cached thumbnail of the picture whose bytes hash to `content_hash` (at most
    THUMB_SIZE px a side, JPEG), made from the bytes `read()` gives if needed, under the hash's
    lock. The caller gives the checked catalogued file of a row with that hash."""
    return ensure_scaled_jpeg(thumbnail_path(home, content_hash), int(content_hash[:8], 16), THUMB_SIZE,
                              read, limits)


def remove_thumbnail(home: Path, content_hash: str | None) -> None:
    """Drop the cached thumbnail of `content_hash` (a duplicate still indexed makes it again)."""
    if content_hash is not None and _SHA256.fullmatch(content_hash):
        thumbnail_path(home, content_hash).unlink(missing_ok=True)


def remove_legacy_thumbnails(home: Path) -> int:
    """Delete the cache of earlier versions, keyed by row id (thumbs/NNN/<id>.jpg), which could
    show a picture's thumbnail on another once ids restarted; returns the folders removed.
    Nothing reads those files any more, so removing them is only about disk space."""
    root = home / "thumbs"
    removed = 0
    if not root.is_dir():
        return 0
    for folder in root.iterdir():
        if folder.is_dir() and not folder.is_symlink() and _LEGACY_SHARD.fullmatch(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed
