"""Which folders a path belongs to: the allowed roots a job started over HTTP may index (by
real path, so a symlink cannot lead out of them), and the indexed root a catalogued path can
be shown relative to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from .errors import PathNotAllowedError


def real(path: str | Path) -> Path:
    """The absolute path with every symlink resolved (a missing tail is kept as written)."""
    return Path(os.path.realpath(path))


def inside(path: Path, roots: Iterable[Path]) -> bool:
    """Whether `path` is one of `roots` or lies under one (compared as given: resolve both first)."""
    return any(path == root or root in path.parents for root in roots)


def allowed_job_paths(paths: Sequence[str], allowed: Sequence[Path]) -> list[Path]:
    """The real paths of `paths`, each required to lie inside a real allowed root.

    One answer for every refused path, whether it exists or not, so the refusal says nothing
    about the file system outside the roots."""
    if not allowed:
        raise PathNotAllowedError(
            "indexing over HTTP is off on this server: set LOUPE_ALLOWED_ROOTS to the folders it may index")
    roots = [real(root) for root in allowed]
    resolved = [real(path) for path in paths]
    if not all(inside(path, roots) for path in resolved):
        raise PathNotAllowedError("a job path lies outside the folders this server may index (LOUPE_ALLOWED_ROOTS)")
    return resolved


def relative_to_root(path: str, roots: Sequence[str]) -> str:
    """`path` relative to the deepest of `roots` (a job's roots) that holds it; a root that is the
    file itself gives its name; no root: the file's name alone (never the absolute path)."""
    target = Path(path)
    best: Path | None = None
    for text in roots:
        root = Path(text)
        if target == root:
            return target.name
        if root in target.parents and (best is None or len(root.parts) > len(best.parts)):
            best = root
    return str(target.relative_to(best)) if best is not None else target.name
