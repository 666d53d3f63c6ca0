"""A per-home write lock, so that one process at a time changes the catalog and index."""

from __future__ import annotations

import fcntl
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
    ensure_home(home)
    path = home / "write.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise JobLockedError(
                f"another Loupe process (pid {holder}) is changing the index in {home}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
