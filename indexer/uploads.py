"""Uploaded pictures kept under LOUPE_HOME/uploads, named by their content's SHA-256."""

from __future__ import annotations

import os
from pathlib import Path

from .atomic import atomic_write
from .images import content_hash

FOLDER = "uploads"


def upload_path(home: Path, data: bytes, suffix: str) -> Path:
    return home / FOLDER / f"{content_hash(data)}{suffix}"


def store_upload(home: Path, data: bytes, suffix: str) -> Path:
    """Write `data` as an upload (once: the same bytes share one file) and return its path.

    Written atomically (`indexer.atomic`), so a crash leaves either the whole file or none,
    and two writers never share a temporary file. Callers hold the writer lock."""
    path = upload_path(home, data, suffix)
    if path.exists():
        return path
    atomic_write(path, data)
    return path


def discard_upload(home: Path, path: str) -> bool:
    """Delete the file of a removed image if it is an upload (Loupe's own copy); True if it was."""
    uploads = Path(os.path.abspath(home / FOLDER))
    target = Path(os.path.abspath(path))
    if target.parent != uploads:
        return False
    target.unlink(missing_ok=True)
    return True
