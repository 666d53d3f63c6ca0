"""Previews: a picture at most PREVIEW_SIZE px a side as a JPEG, for the detail view (so a
20 MB JPEG is not sent whole, and TIFF or BMP originals show in any browser). Made on first
request from the catalogued file and cached under LOUPE_HOME/previews.

A preview's name holds its image's id and the start of its content hash, so a cached file
can only ever be served for the picture it was made from: a catalog rebuilt from scratch that
gives the id to another picture asks for another name."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .images import DecodeLimits
from .thumbnails import ensure_scaled_jpeg

PREVIEW_SIZE = 1600
FOLDER = "previews"
_HASH_CHARS = 16


def preview_path(home: Path, image_id: int, content_hash: str) -> Path:
    """Where image `image_id` with content `content_hash` (hex sha256) has its preview."""
    return home / FOLDER / f"{image_id % 1000:03d}" / f"{image_id}-{content_hash[:_HASH_CHARS]}.jpg"


def ensure_preview(home: Path, image_id: int, content_hash: str, read: Callable[[], bytes],
                   limits: DecodeLimits = DecodeLimits(), size: int = PREVIEW_SIZE) -> Path:
    """The cached preview of the image (at most `size` px a side, EXIF orientation applied,
    JPEG), made from the bytes `read()` gives if needed (`thumbnails.ensure_scaled_jpeg`)."""
    return ensure_scaled_jpeg(preview_path(home, image_id, content_hash), image_id, size, read, limits)


def remove_previews(home: Path, image_id: int) -> None:
    """Delete image `image_id`'s cached previews (whatever content they were made from)."""
    for path in (home / FOLDER / f"{image_id % 1000:03d}").glob(f"{image_id}-*.jpg"):
        path.unlink(missing_ok=True)
