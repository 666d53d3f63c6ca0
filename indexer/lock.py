"""Write locks, so that one process at a time changes the catalog and index: a file lock per
data folder, and on PostgreSQL an advisory lock per catalog (two hosts, each with its own
data folder, may share one catalog)."""

from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import JobLockedError
from .settings import ensure_home


@contextmanager
def write_lock(home: Path) -> Iterator[None]:
    """Hold `home/write.lock`, released by the OS if the process dies.

    A POSIX record lock (`lockf`), not `flock`: forked children such as decode workers do not
    inherit it, so a killed job's orphaned workers cannot keep the next job out.
    """
    with _file_lock(home, "write.lock", "is changing the index in"):
        yield


@contextmanager
def reembed_lock(home: Path) -> Iterator[None]:
    """Hold `home/reembed.lock`: one `loupe reembed` at a time per data folder (it takes the
    write lock as well, but only for its catch-up and swap)."""
    with _file_lock(home, "reembed.lock", "is re-embedding the library in"):
        yield


@contextmanager
def _file_lock(home: Path, name: str, doing: str) -> Iterator[None]:
    ensure_home(home)
    path = home / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise JobLockedError(
                f"another Loupe process (pid {holder}) {doing} {home}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


# One key for "a Loupe writer holds this catalog" (a PostgreSQL advisory lock is a 64-bit number).
CATALOG_LOCK_KEY = int.from_bytes(hashlib.sha256(b"loupe:catalog-writer").digest()[:8], "big", signed=True)


@contextmanager
def catalog_lock(engine) -> Iterator[None]:
    """On PostgreSQL, hold a session advisory lock on a connection of its own for the duration,
    so writers on other hosts (other data folders) sharing the catalog are refused; released
    by the server if this process dies. Other databases need nothing beyond `write_lock`
    (an SQLite catalog lives in the data folder)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    from sqlalchemy import text

    conn = engine.connect()
    try:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": CATALOG_LOCK_KEY}).scalar()
        conn.commit()
        if not got:
            raise JobLockedError("another Loupe host is changing this catalog (its PostgreSQL lock is held); "
                                 "wait for it to finish")
        try:
            yield
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": CATALOG_LOCK_KEY})
                conn.commit()
            except Exception:  # the lock must not outlive us in the pool: drop the connection
                conn.invalidate()
    finally:
        conn.close()
