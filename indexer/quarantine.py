"""Quarantine: pictures moved out of the way under `$LOUPE_HOME/quarantine`, never deleted, and
put back with one call.

Moving a picture checks that its file lies inside the folders it was indexed from (its job's
roots) or LOUPE_ALLOWED_ROOTS, by real path, and that it is still the file that was indexed; the
file is renamed (copied, fsynced and then unlinked across file systems) to
`quarantine/<entry>/<name>`, and in one catalog transaction the row leaves the catalog
(`writer.retire`: out of search, its same-bytes copies inherit its vector) while a
`QuarantineRecord` keeps the row's facts, vector, local features and regions. Restoring moves
the file back and rebuilds the row from that record (`writer.reinstate`): no model is needed.
Callers hold the writer lock (`Library.writer`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

import numpy as np
from sqlalchemy import select

from .atomic import fsync_folder
from .catalog import ImageRecord, ImageStatus, QuarantineRecord, RegionRecord
from .errors import FileChangedError, NotIndexedError, PathNotAllowedError, QuarantineConflictError
from .library import Library
from .roots import inside, real

FOLDER = "quarantine"
FACT_COLUMNS = ("path", "content_hash", "size_bytes", "mtime_ns", "width", "height", "format", "noise_level",
                "job_id", "folder", "taken_at", "taken_source", "taken_offset_min", "camera_make", "camera_model",
                "orientation", "has_gps", "gps_lat", "gps_lon", "metadata_version")


@dataclass(frozen=True)
class QuarantineEntry:
    id: int
    group_id: str | None
    image_id: int
    kept_id: int | None
    original_path: str
    stored_path: str
    moved_at: str

    @classmethod
    def of(cls, row: QuarantineRecord) -> "QuarantineEntry":
        return cls(row.id, row.group_id, row.image_id, row.kept_id, row.original_path, row.stored_path,
                   row.moved_at.isoformat() if row.moved_at else "")

    def as_dict(self) -> dict:
        return {"id": self.id, "group": self.group_id, "image_id": self.image_id, "kept_id": self.kept_id,
                "original_path": self.original_path, "stored_path": self.stored_path, "moved_at": self.moved_at}


@dataclass(frozen=True)
class Restored:
    entry: QuarantineEntry
    image_id: int  # the picture's new row


def pack_regions(regions: Sequence[tuple[tuple[int, int, int, int], np.ndarray]]) -> bytes | None:
    if not regions:
        return None
    buf = io.BytesIO()
    np.savez(buf, boxes=np.array([b for b, _ in regions], np.int64).reshape(-1, 4),
             vectors=np.stack([np.asarray(v, np.float32) for _, v in regions]))
    return buf.getvalue()


def unpack_regions(blob: bytes | None) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    if not blob:
        return []
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return [(tuple(int(v) for v in box), vec) for box, vec in zip(data["boxes"], data["vectors"])]


def allowed_roots(library: Library, image_id: int) -> list[Path]:
    """The real folders `image_id`'s file may be moved from: its job's roots and LOUPE_ALLOWED_ROOTS."""
    roots = library.roots_of([image_id]).get(image_id, []) + [str(r) for r in library.settings.allowed_roots]
    return [real(r) for r in roots]


def quarantine_images(library: Library, image_ids: Sequence[int], group_id: str | None = None,
                      kept_id: int | None = None) -> list[QuarantineEntry]:
    """Move each picture's file into the quarantine folder and its row out of the catalog (see
    the module); all are checked before any moves. The index is saved at the end."""
    from .writer import apply_delta, retire

    checked = [_check_movable(library, image_id) for image_id in image_ids]
    entries = []
    for checked_record in checked:
        record = library.image(checked_record.id)  # fresh: an earlier move may have made it the holder
        snapshot = _snapshot(library, record)
        target = library.settings.home / FOLDER / uuid.uuid4().hex[:16] / Path(record.path).name
        _move(Path(record.path), target)
        try:
            with library.sessions.begin() as session:
                row = QuarantineRecord(group_id=group_id, image_id=record.id, kept_id=kept_id,
                                       original_path=record.path, stored_path=str(target),
                                       content_hash=record.content_hash, **snapshot)
                session.add(row)
                delta = retire(session, library.record(session, record.id))
                session.flush()
                entry = QuarantineEntry.of(row)
        except BaseException:
            _move(target, Path(record.path))  # the catalog did not follow: the file goes back
            raise
        apply_delta(library, delta)
        entries.append(entry)
    if entries:
        library.save_index()
    return entries


def restore_entries(library: Library, entry_ids: Sequence[int]) -> list[Restored]:
    """Move each entry's file back to its original path and rebuild its catalog row; refused
    (nothing moved) when an original path is taken again or its folder has gone."""
    from .writer import apply_delta, reinstate

    with library.sessions() as session:
        rows = {r.id: r for r in session.scalars(select(QuarantineRecord).where(QuarantineRecord.id.in_(list(entry_ids))))}
        taken = set(session.scalars(select(ImageRecord.path).where(
            ImageRecord.path.in_([r.original_path for r in rows.values()]))))
    for entry_id in entry_ids:
        row = rows.get(entry_id)
        if row is None:
            raise NotIndexedError(f"no quarantined picture with id {entry_id}")
        original = Path(row.original_path)
        if os.path.lexists(original) or row.original_path in taken:
            raise QuarantineConflictError(f"{original} exists again: move it away first; nothing was restored")
        if not original.parent.is_dir():
            raise QuarantineConflictError(f"the folder {original.parent} has gone; nothing was restored")
        if not Path(row.stored_path).is_file():
            raise FileChangedError(f"the quarantined file {row.stored_path} has gone; nothing was restored")
    restored = []
    for entry_id in entry_ids:
        with library.sessions() as session:
            row = session.get(QuarantineRecord, entry_id)
            entry = QuarantineEntry.of(row)
            facts = json.loads(row.facts)
            vector = np.frombuffer(row.embedding, np.float32) if row.embedding is not None else None
            features, regions = row.local_features, unpack_regions(row.regions)
        stored, original = Path(entry.stored_path), Path(entry.original_path)
        _move(stored, original)
        stat = original.stat()
        facts.update(path=str(original), size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns)
        if facts.get("taken_at"):
            facts["taken_at"] = datetime.fromisoformat(facts["taken_at"])
        try:
            with library.sessions.begin() as session:
                record, delta = reinstate(session, facts, vector, features, regions)
                new_id = record.id
                session.delete(session.get(QuarantineRecord, entry_id))
        except BaseException:
            _move(original, stored)
            raise
        apply_delta(library, delta)
        try:
            stored.parent.rmdir()  # the entry's own folder, empty now
        except OSError:
            pass
        restored.append(Restored(entry, new_id))
    if restored:
        library.save_index()
    return restored


def list_entries(library: Library, group_id: str | None = None, limit: int = 1000) -> list[QuarantineEntry]:
    """Quarantined pictures, newest first (of one group when given)."""
    query = select(QuarantineRecord).order_by(QuarantineRecord.id.desc()).limit(limit)
    if group_id is not None:
        query = query.where(QuarantineRecord.group_id == group_id)
    with library.sessions() as session:
        return [QuarantineEntry.of(r) for r in session.scalars(query)]


def _check_movable(library: Library, image_id: int) -> ImageRecord:
    record = library.image(image_id)
    if record is None or record.status not in (ImageStatus.INDEXED, ImageStatus.DUPLICATE):
        raise NotIndexedError(f"no indexed picture with id {image_id}")
    path = Path(record.path)
    roots = allowed_roots(library, image_id)
    if not roots or not inside(real(path), roots) or path.is_symlink():
        raise PathNotAllowedError(f"{record.path} lies outside the folders it was indexed from and "
                                  "LOUPE_ALLOWED_ROOTS: it is not moved")
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise FileChangedError(f"{record.path} has gone; nothing was moved") from None
    if not path.is_file() or stat.st_size != record.size_bytes or stat.st_mtime_ns != record.mtime_ns:
        raise FileChangedError(f"{record.path} changed since it was indexed (run loupe index); nothing was moved")
    return record


def _snapshot(library: Library, record: ImageRecord) -> dict:
    """What the row holds, for `reinstate`: its facts, and the vector, features and regions of
    the row that holds them (the row itself, or the original of a same-bytes copy)."""
    holder = record.duplicate_of if record.status == ImageStatus.DUPLICATE and record.duplicate_of else record.id
    facts = {}
    for name in FACT_COLUMNS:
        value = getattr(record, name)
        facts[name] = value.isoformat() if isinstance(value, datetime) else value
    with library.sessions() as session:
        held = session.get(ImageRecord, holder)
        embedding = held.embedding if held is not None else None
        features = held.local_features if held is not None else None
        regions = [((r.x, r.y, r.w, r.h), np.frombuffer(r.embedding, np.float32))
                   for r in session.scalars(select(RegionRecord).where(RegionRecord.image_id == holder))]
    return {"facts": json.dumps(facts), "embedding": embedding, "local_features": features,
            "regions": pack_regions(regions)}


def _move(source: Path, target: Path) -> None:
    """Rename `source` to `target` (refusing to replace anything), durably; across file systems,
    copy (with its times), fsync, then unlink the source."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):
        raise QuarantineConflictError(f"{target} exists; nothing was moved")
    try:
        os.link(source, target)  # fails rather than replacing; then drop the old name
        os.unlink(source)
    except OSError as err:
        if err.errno not in (18, 1, 95, 38):  # EXDEV, EPERM, EOPNOTSUPP, ENOSYS: no hard link there
            raise
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        shutil.copy2(source, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_folder(target.parent)
        os.unlink(source)
    fsync_folder(target.parent)
    fsync_folder(source.parent)
