"""The library's metadata as columns in memory: what filters and sorts read, vectorised.

`MetadataTable` holds, for every indexed picture (the ids FAISS holds), its folder, date
taken, format, pixel size, file size and camera as numpy arrays in id order; strings are
coded (a picture's folder is an index into `folders`), so a filter is a few array operations
over the codes, whatever the number of pictures. `Library.table()` loads one from the catalog
and loads it again when the index generation changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Sequence

import numpy as np

from .filters import LibraryFilter

TAKEN_NONE = np.iinfo(np.int64).min  # no date taken (metadata not read yet)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def micros(moment: datetime) -> int:
    """A datetime as microseconds since the epoch (a naive one is read as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, eq=False)
class MetadataTable:
    """Columns of the indexed pictures, row i being picture `ids[i]` (ids ascending)."""

    ids: np.ndarray  # int64
    folder: np.ndarray  # int32 codes into `folders` (-1: unknown)
    folders: tuple[str, ...]
    taken: np.ndarray  # int64 microseconds since the epoch, UTC (TAKEN_NONE: unknown)
    width: np.ndarray  # int32 (-1: unknown)
    height: np.ndarray  # int32 (-1: unknown)
    size_bytes: np.ndarray  # int64
    format: np.ndarray  # int16 codes into `formats` (-1: unknown)
    formats: tuple[str, ...]  # upper case
    camera: np.ndarray  # int32 codes into `cameras` (-1: unknown)
    cameras: tuple[str, ...]  # "make model", lower case

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence]) -> "MetadataTable":
        """A table from rows of (id, folder, taken_at, format, width, height, camera make,
        camera model, size_bytes), in any order."""
        rows = sorted(rows, key=lambda r: r[0])
        if not rows:
            empty = np.zeros(0, np.int64)
            return cls(empty, empty.astype(np.int32), (), empty, empty.astype(np.int32), empty.astype(np.int32),
                       empty, empty.astype(np.int16), (), empty.astype(np.int32), ())
        ids, folders, taken, formats, widths, heights, makes, models, sizes = zip(*rows)
        folder, folder_names = _codes(folders)
        fmt, format_names = _codes([f.upper() if f else None for f in formats])
        pair, pairs = _codes(list(zip(makes, models)))  # few distinct cameras: name each once
        names = [" ".join(" ".join(p for p in both if p).split()).lower() or None for both in pairs]
        name_code, camera_names = _codes(names)
        camera = np.append(name_code, -1)[pair]  # pair code -1 (none) reads the appended -1
        return cls(np.array(ids, np.int64), folder, folder_names, _micros_column(taken),
                   np.array([-1 if w is None else w for w in widths], np.int32),
                   np.array([-1 if h is None else h for h in heights], np.int32),
                   np.array([-1 if b is None else b for b in sizes], np.int64),
                   fmt.astype(np.int16), format_names, camera, camera_names)

    @classmethod
    def load(cls, session) -> "MetadataTable":
        """The indexed pictures' metadata, read from the catalog in one query."""
        from sqlalchemy import select

        from .catalog import ImageRecord, ImageStatus

        r = ImageRecord
        rows = session.execute(select(r.id, r.folder, r.taken_at, r.format, r.width, r.height, r.camera_make,
                                      r.camera_model, r.size_bytes).where(r.status == ImageStatus.INDEXED))
        return cls.from_rows(rows)

    # -- filters ----------------------------------------------------------------------------
    def mask(self, wanted: LibraryFilter) -> np.ndarray:
        """Which rows pass `wanted` (a boolean array)."""
        keep = np.ones(len(self.ids), dtype=bool)
        if wanted.folders:
            keep &= _coded_in(self.folder, [i for i, f in enumerate(self.folders)
                                            if any(_under(f, p) for p in wanted.folders)])
        if wanted.formats:
            keep &= _coded_in(self.format, [i for i, f in enumerate(self.formats) if f in wanted.formats])
        if wanted.cameras:
            keep &= _coded_in(self.camera, [i for i, c in enumerate(self.cameras)
                                            if any(part in c for part in wanted.cameras)])
        if wanted.taken_after is not None or wanted.taken_before is not None:
            keep &= self.taken != TAKEN_NONE
            if wanted.taken_after is not None:
                keep &= self.taken >= micros(wanted.taken_after)
            if wanted.taken_before is not None:
                keep &= self.taken <= micros(wanted.taken_before)
        if wanted.min_width is not None:
            keep &= self.width >= wanted.min_width
        if wanted.min_height is not None:
            keep &= self.height >= wanted.min_height
        return keep

    def select(self, wanted: LibraryFilter) -> np.ndarray:
        """The ids (ascending) of the pictures passing `wanted`."""
        return self.ids[self.mask(wanted)]

    # -- sort orders --------------------------------------------------------------------------
    def order(self, ids: Sequence[int], sort: str) -> np.ndarray:
        """Positions into `ids` (given best first) that list them by `sort`: `taken` oldest
        first, `-taken` newest first, `size` most pixels first (then largest file). Pictures
        without the key come last; ties keep their relevance order."""
        ids = np.asarray(ids, dtype=np.int64)
        rank = np.arange(len(ids))
        if sort not in ("taken", "-taken", "size") or not len(ids):
            return rank
        rows = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1) if len(self.ids) else None
        known = self.ids[rows] == ids if rows is not None else np.zeros(len(ids), dtype=bool)
        if sort in ("taken", "-taken"):
            taken = np.where(known, self.taken[rows], TAKEN_NONE) if rows is not None else np.full(len(ids), TAKEN_NONE)
            missing = taken == TAKEN_NONE
            key = taken if sort == "taken" else -np.where(missing, 0, taken)
            return np.lexsort((rank, key, missing))
        if rows is None:
            return rank
        pixels = np.where(known & (self.width[rows] >= 0) & (self.height[rows] >= 0),
                          self.width[rows].astype(np.int64) * self.height[rows], -1)
        size = np.where(known, self.size_bytes[rows], -1)
        return np.lexsort((rank, -size, -pixels, pixels < 0))

    def taken_of(self, image_id: int) -> int | None:
        row = int(np.searchsorted(self.ids, image_id))
        if row < len(self.ids) and self.ids[row] == image_id and self.taken[row] != TAKEN_NONE:
            return int(self.taken[row])
        return None

    # -- folders ----------------------------------------------------------------------------
    def folder_counts(self) -> list[tuple[str, int, int]]:
        """(folder, pictures in it, pictures in it and below) for every folder that holds
        indexed pictures, by path."""
        direct = np.bincount(self.folder[self.folder >= 0], minlength=len(self.folders))
        own = {f: int(direct[i]) for i, f in enumerate(self.folders)}
        below = dict(own)
        for folder, count in own.items():  # add each folder's pictures to the listed folders above it
            parent = folder
            while parent not in ("/", ""):
                parent = parent.rsplit("/", 1)[0] or "/"
                if parent in below:
                    below[parent] += count
        return sorted((f, own[f], below[f]) for f in own)


def _codes(values: Sequence) -> tuple[np.ndarray, tuple]:
    """Each value's code (its index among the distinct values, in order of appearance; -1:
    None or empty)."""
    seen: dict = {}
    codes = np.array([-1 if v is None or v == "" else seen.setdefault(v, len(seen)) for v in values], np.int32)
    return codes, tuple(seen)


def _micros_column(values: Sequence[datetime | None]) -> np.ndarray:
    """Datetimes (naive ones read as UTC) as microseconds since the epoch; TAKEN_NONE for None."""
    utc = timezone.utc
    seconds = np.array([np.nan if v is None else (v if v.tzinfo else v.replace(tzinfo=utc)).timestamp()
                        for v in values], dtype=np.float64)
    known = ~np.isnan(seconds)
    # Whole seconds and microseconds apart, so that no instant loses a microsecond to rounding.
    whole = np.floor(np.where(known, seconds, 0))
    micro = np.round((np.where(known, seconds, 0) - whole) * 1_000_000)
    return np.where(known, whole.astype(np.int64) * 1_000_000 + micro.astype(np.int64), TAKEN_NONE)


def _under(folder: str, prefix: str) -> bool:
    """Whether `folder` is `prefix` or lies below it (whole path components)."""
    return prefix == "/" or folder == prefix or folder.startswith(prefix + "/")


def _coded_in(codes: np.ndarray, wanted: list[int]) -> np.ndarray:
    """Whether each code is one of `wanted` (one gather: code -1, unknown, reads the table's
    last entry, which is never wanted)."""
    lookup = np.zeros(int(codes.max(initial=-1)) + 2, dtype=bool)
    lookup[[w for w in wanted if w < len(lookup) - 1]] = True
    return lookup[codes]
