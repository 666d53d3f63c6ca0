"""Readiness: whether this server can answer searches now, and if not, why. `/api/health` runs
these checks on every call, so each is cheap: one `SELECT 1`, a file's existence, the model's
weights looked for on disk (never loaded), the free space under `LOUPE_HOME`.

A check's `reason` names no server path, URL or error text (anyone may call `/api/health`);
its `detail` does, and is shown only to callers who may read (`Readiness.as_dict(detailed)`)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

OK, DEGRADED = "ok", "degraded"
CHECKS = ("database", "index", "model", "disk")


@dataclass(frozen=True)
class Check:
    """One part's state (`ok` or `degraded`), why (`reason`: for anyone; `detail`: paths and
    errors, for callers who may read), and the facts behind it."""

    state: str
    reason: str
    facts: dict = field(default_factory=dict)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == OK

    def as_dict(self, detailed: bool = True) -> dict:
        shown = {"detail": self.detail} if detailed and self.detail else {}
        return {"state": self.state, "reason": self.reason, **self.facts, **shown}


@dataclass(frozen=True)
class Readiness:
    """Every check; `status` is `ok` only when all are."""

    checks: dict[str, Check]

    @property
    def status(self) -> str:
        return OK if all(check.ok for check in self.checks.values()) else DEGRADED

    def as_dict(self, detailed: bool = True) -> dict:
        return {name: check.as_dict(detailed) for name, check in self.checks.items()}


def check_database(open_library: Callable[[], object]) -> tuple[Check, object | None]:
    """The catalog answers a query; returns the check and the library (None when it cannot open)."""
    from sqlalchemy import text

    try:
        library = open_library()
        with library.sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as err:  # any failure to reach the catalog makes the server unready
        return Check(DEGRADED, "the catalog cannot be used", detail=_first_line(err)), None
    return Check(OK, "the catalog answers"), library


def check_index(library, counts: dict | None) -> Check:
    """The whole-picture index is on disk and loaded (an empty collection is ready: nothing to
    load). `counts` are the catalog's (None: unknown)."""
    if library is None:
        return Check(DEGRADED, "unknown: the catalog cannot be used")
    path: Path = library.settings.index_path
    indexed = (counts or {}).get("indexed", 0)
    if library.stored_identity() is None or indexed == 0:
        return Check(OK, "empty: nothing is indexed yet", {"loaded": library.images.loaded})
    if not path.exists():
        return Check(DEGRADED, f"missing: {path.name} is not on disk although {indexed} pictures are catalogued "
                               "(`loupe index` rebuilds and saves it)", {"loaded": library.images.loaded})
    try:
        vectors = len(library.store)  # loaded once, then kept
    except Exception as err:
        return Check(DEGRADED, f"cannot load {path.name}", {"loaded": False}, detail=_first_line(err))
    return Check(OK, f"loaded: {vectors} vectors", {"loaded": True})


def check_model(settings, loaded: bool, failed: str | None = None) -> Check:
    """The model is loaded, or its weights are on disk to load (`failed`: why the last load failed)."""
    if loaded:
        return Check(OK, "loaded", {"loaded": True})
    if failed:
        return Check(DEGRADED, "the last load failed", {"loaded": False}, detail=failed)
    from indexer.weights import find_weights

    try:
        found = find_weights(settings.model, settings.pretrained, settings.models_dir)
    except Exception as err:
        return Check(DEGRADED, "cannot look for the weights", {"loaded": False}, detail=_first_line(err))
    state = OK if found.present else DEGRADED
    return Check(state, f"not loaded yet; {found.reason}", {"loaded": False}, detail=found.detail)


def check_disk(home: Path, min_free_bytes: int, free_bytes: Callable[[Path], int] | None = None) -> Check:
    """At least `min_free_bytes` free on the file system holding `home` (LOUPE_MIN_FREE_MB)."""
    measure = free_bytes or _free_bytes
    try:
        free = measure(_existing(home))
    except OSError as err:
        return Check(DEGRADED, "cannot measure the free space under LOUPE_HOME", detail=f"{home}: {err}")
    facts = {"free_bytes": free, "min_free_bytes": min_free_bytes}
    if free < min_free_bytes:
        return Check(DEGRADED, f"low: {free / 2**20:.0f} MB free under LOUPE_HOME, below LOUPE_MIN_FREE_MB "
                               f"({min_free_bytes / 2**20:.0f} MB)", facts, detail=str(home))
    return Check(OK, f"{free / 2**20:.0f} MB free under LOUPE_HOME", facts, detail=str(home))


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _existing(path: Path) -> Path:
    """`path`, or its nearest folder that exists (a fresh home is made on first use)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]
