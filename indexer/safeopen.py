"""Opening a catalogued file for reading: the file that was indexed, or nothing.

A path in the catalog is only a name; between indexing and serving, the file can be replaced
by a symlink to a secret, a FIFO or a device, or by other content. The file is opened without
following a final symlink (`O_NOFOLLOW`) or, where the catalogued path is a symlink, through
its real path only when that lies inside the image's roots; without blocking (`O_NONBLOCK`: a
FIFO cannot hang the reader); and the open file must be a regular file with the size and mtime
the catalog recorded. Every check is on the open descriptor, so nothing can change in between.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Sequence

from .errors import FileChangedError, FileMissingError
from .roots import inside, real

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW


def open_catalogued(path: str, size: int, mtime_ns: int, roots: Sequence[Path]) -> BinaryIO:
    """The open file at `path`, if it is still the file the catalog describes (see the module).

    `roots` are the folders the image was indexed from (its job's roots and the allowed
    roots); the file's real path must lie inside one of them."""
    real_roots = [real(root) for root in roots]
    target = real(path)
    if real_roots and not inside(target, real_roots):
        raise FileChangedError(f"{path} now leads outside the folders it was indexed from")
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as err:
        if err.errno == errno.ELOOP:  # the catalogued path is a symlink: open its checked target
            fd = _open_target(target)
        elif err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileMissingError(f"the file is no longer at {path}") from None
        else:
            raise FileChangedError(f"cannot open {path}: {err.strerror or err}") from None
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise FileChangedError(f"{path} is no longer a regular file")
        if found.st_size != size or found.st_mtime_ns != mtime_ns:
            raise FileChangedError(f"{path} changed since it was indexed (size or modification time)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_target(target: Path) -> int:
    try:
        return os.open(target, OPEN_FLAGS)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileMissingError(f"the file behind the link is gone ({target})") from None
        raise FileChangedError(f"cannot open {target}: {err.strerror or err}") from None
