"""The writer stage of indexing: read (and embedded) files ▸ catalog rows and vectors.

One batch is one catalog transaction, vectors included; FAISS is changed only after it
commits (`IndexDelta`), so a killed job loses at most the batch in flight and the index is
reconciled with the catalog when it is loaded. This module owns the FAISS-id ↔ row mapping on
the write side (as `Library` does on the read side): the images index is keyed by image
primary keys, the regions index by region primary keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .catalog import ImageRecord, ImageStatus, JobRecord, RegionRecord
from .embed import Embedded
from .library import Library
from .metadata import PictureMetadata, folder_of
from .reader import ReadItem

# The embed stage as the writer calls it: read items whose content is not indexed yet ▸ their vectors by hash.
EmbedNew = Callable[[list[ReadItem]], dict[str, Embedded]]


@dataclass
class IndexDelta:
    """Changes to apply to FAISS once the catalog transaction that caused them commits."""

    remove_ids: list[int] = field(default_factory=list)
    add_ids: list[int] = field(default_factory=list)
    add_vectors: list[np.ndarray] = field(default_factory=list)
    remove_region_ids: list[int] = field(default_factory=list)
    add_region_ids: list[int] = field(default_factory=list)
    add_region_vectors: list[np.ndarray] = field(default_factory=list)

    def add(self, id_: int, vector: np.ndarray) -> None:
        self.add_ids.append(id_)
        self.add_vectors.append(vector)

    def add_region(self, id_: int, vector: np.ndarray) -> None:
        self.add_region_ids.append(id_)
        self.add_region_vectors.append(vector)

    def remove(self, id_: int) -> None:
        """Drop `id_`: cancel a pending add of it, or remove it from the index."""
        _drop(id_, self.add_ids, self.add_vectors, self.remove_ids)

    def remove_region(self, id_: int) -> None:
        _drop(id_, self.add_region_ids, self.add_region_vectors, self.remove_region_ids)

    def merge(self, other: "IndexDelta") -> None:
        for id_ in other.remove_ids:
            self.remove(id_)
        for id_ in other.remove_region_ids:
            self.remove_region(id_)
        self.add_ids += other.add_ids
        self.add_vectors += other.add_vectors
        self.add_region_ids += other.add_region_ids
        self.add_region_vectors += other.add_region_vectors


def _drop(id_: int, add_ids: list[int], add_vectors: list[np.ndarray], remove_ids: list[int]) -> None:
    if id_ in add_ids:
        at = add_ids.index(id_)
        del add_ids[at], add_vectors[at]
    else:
        remove_ids.append(id_)


def apply_delta(library: Library, delta: IndexDelta) -> None:
    """Apply a committed catalog change to the library's in-memory indexes."""
    library.images.apply(delta.remove_ids, delta.add_ids, delta.add_vectors)
    library.regions.apply(delta.remove_region_ids, delta.add_region_ids, delta.add_region_vectors)


def retire(session: Session, record: ImageRecord) -> IndexDelta:
    """Delete `record`; if it held the vector for duplicates, the oldest duplicate inherits it
    (as a new FAISS id) and its regions (same ids), so no picture leaves the index by accident."""
    delta = IndexDelta()
    if record.status == ImageStatus.INDEXED:
        delta.remove(record.id)
        copies = session.scalars(
            select(ImageRecord).where(ImageRecord.duplicate_of == record.id).order_by(ImageRecord.id)
        ).all()
        if copies:
            heir, others = copies[0], copies[1:]
            heir.status = ImageStatus.INDEXED
            heir.duplicate_of = None
            heir.embedding = record.embedding
            heir.local_features = record.local_features
            for other in others:
                other.duplicate_of = heir.id
            session.flush()
            session.execute(
                update(RegionRecord).where(RegionRecord.image_id == record.id).values(image_id=heir.id)
            )
            delta.add(heir.id, record.vector())
        else:
            for region_id in session.scalars(select(RegionRecord.id).where(RegionRecord.image_id == record.id)):
                delta.remove_region(region_id)
    session.delete(record)
    session.flush()
    return delta


def retire_all(session: Session, records: Iterable[ImageRecord]) -> IndexDelta:
    """`retire` each of `records`; the FAISS changes of them all."""
    delta = IndexDelta()
    for record in records:
        delta.merge(retire(session, record))
    return delta


def store_counts(job: JobRecord, counts: dict[str, int]) -> None:
    """Copy a job's counters (`IndexJob.counts`) to its row."""
    for name in ("duplicates", "failed", "missing", "files_seen"):
        setattr(job, name, counts[name])
    job.added = counts["added"] + counts["changed"]  # images embedded by this job
    job.skipped = counts["unchanged"]


class BatchWriter:
    """Writes one job's batches to the catalog and the vector indexes, counting what it did in
    `counts` (the job's counters, stored on the job's row with each batch). Callers hold the
    write lock."""

    def __init__(self, library: Library, job_id: int, counts: dict[str, int]):
        self.library = library
        self.job_id = job_id
        self.counts = counts

    def write(self, batch: Sequence[ReadItem], embed_new: EmbedNew) -> None:
        """Commit `batch` in one transaction, then apply it to FAISS. `embed_new` is asked for
        the vectors of the batch's pictures whose content the index does not hold yet (at most
        one item per content); the Ray job answers from the vectors its workers computed."""
        with self.library.sessions.begin() as session:
            existing = _rows_by_path(session, [item.path for item in batch])
            unchanged = {item.path for item in batch if _same_content(item, existing.get(item.path))}
            replaced_ids = {existing[item.path].id for item in batch if item.path in existing} - {
                existing[path].id for path in unchanged
            }
            ok = [item for item in batch if item.error is None and item.path not in unchanged]
            canonical = {
                sha: row
                for sha, row in _indexed_by_hash(session, {item.sha256 for item in ok}).items()
                if row.id not in replaced_ids
            }
            new = _new_content(ok, canonical)
            vectors = embed_new(new) if new else {}
            delta = IndexDelta()
            for item in batch:
                old = existing.get(item.path)
                if item.path in unchanged:
                    old.size_bytes, old.mtime_ns, old.missing_since = item.size, item.mtime_ns, None
                    _set_metadata(old, item.metadata)  # the file time may have changed
                    self.counts["unchanged"] += 1
                else:
                    delta.merge(self._replace(session, item, old, canonical, vectors))
            store_counts(session.get(JobRecord, self.job_id), self.counts)
        apply_delta(self.library, delta)

    def add_features(self, found: Sequence[tuple[int, bytes | None]]) -> None:
        """Store the local features of indexed pictures (image id, blob; None: not read now)."""
        with self.library.sessions.begin() as session:
            for image_id, blob in found:
                if blob is not None:
                    session.execute(update(ImageRecord).where(ImageRecord.id == image_id)
                                    .values(local_features=blob))
                    self.counts["features_added"] += 1

    def add_metadata(self, found: Sequence[tuple[int, str, PictureMetadata | None]]) -> None:
        """Store the metadata of rows indexed before it was recorded (image id, path, metadata;
        None: the file could not be read now, only its folder is stored)."""
        with self.library.sessions.begin() as session:
            for image_id, path, metadata in found:
                values = {"folder": folder_of(path), **(metadata.columns() if metadata is not None else {})}
                session.execute(update(ImageRecord).where(ImageRecord.id == image_id).values(**values))
                if metadata is not None:
                    self.counts["metadata_added"] += 1

    def forget_gps(self, image_ids: Sequence[int]) -> None:
        """Erase the stored coordinates of these rows (LOUPE_KEEP_GPS turned off); `has_gps` stays."""
        with self.library.sessions.begin() as session:
            for start in range(0, len(image_ids), 1000):
                chunk = list(image_ids[start : start + 1000])
                session.execute(update(ImageRecord).where(ImageRecord.id.in_(chunk)).values(gps_lat=None, gps_lon=None))

    def _replace(self, session: Session, item: ReadItem, old: ImageRecord | None,
                 canonical: dict[str, ImageRecord], vectors: dict[str, Embedded]) -> IndexDelta:
        """Record `item` as a new row (indexed, duplicate or failed), retiring `old` first."""
        delta = IndexDelta()
        replaced = old is not None and old.status != ImageStatus.FAILED
        if old is not None:
            delta.merge(retire(session, old))
        record = ImageRecord(
            path=item.path,
            size_bytes=item.size,
            mtime_ns=item.mtime_ns,
            job_id=self.job_id,
            content_hash=item.sha256,
            width=item.width,
            height=item.height,
            format=item.format,
            folder=folder_of(item.path),
        )
        _set_metadata(record, item.metadata)
        source = canonical.get(item.sha256) if item.sha256 else None
        if item.error is not None:
            record.status, record.error = ImageStatus.FAILED, item.error
            self.counts["failed"] += 1
        elif source is not None:
            record.status, record.duplicate_of = ImageStatus.DUPLICATE, source.id
            self.counts["duplicates"] += 1
        else:
            record.status, record.embedding = ImageStatus.INDEXED, vectors[item.sha256].whole.tobytes()
            record.noise_level = _finite_or_none(vectors[item.sha256].noise)
            record.local_features = item.features
            self.counts["changed" if replaced else "added"] += 1
        session.add(record)
        session.flush()
        if record.status == ImageStatus.INDEXED:
            canonical[item.sha256] = record  # later copies in this batch point here
            embedded = vectors[item.sha256]
            delta.add(record.id, embedded.whole)
            regions = [
                RegionRecord(image_id=record.id, x=box.x, y=box.y, w=box.w, h=box.h, embedding=vector.tobytes())
                for box, vector in zip(item.regions, embedded.regions)
            ]
            if regions:
                session.add_all(regions)
                session.flush()
                for region, vector in zip(regions, embedded.regions):
                    delta.add_region(region.id, vector)
        return delta


def _set_metadata(record: ImageRecord, metadata: PictureMetadata | None) -> None:
    """Copy `metadata` (indexer.metadata) onto `record`; None leaves the row as it is."""
    record.folder = folder_of(record.path)
    if metadata is not None:
        for name, value in metadata.columns().items():
            setattr(record, name, value)


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _same_content(item: ReadItem, old: ImageRecord | None) -> bool:
    """The file was touched (size or mtime) but its bytes are what the catalog holds."""
    return (
        old is not None
        and item.error is None
        and old.status != ImageStatus.FAILED
        and old.content_hash == item.sha256
    )


def _new_content(ok: list[ReadItem], canonical: dict[str, ImageRecord]) -> list[ReadItem]:
    """One item per distinct content that the index does not hold yet."""
    picked: dict[str, ReadItem] = {}
    for item in ok:
        if item.sha256 not in canonical:
            picked.setdefault(item.sha256, item)
    return list(picked.values())


def _rows_by_path(session: Session, paths: list[str]) -> dict[str, ImageRecord]:
    rows = session.scalars(select(ImageRecord).where(ImageRecord.path.in_(paths))).all()
    return {row.path: row for row in rows}


def _indexed_by_hash(session: Session, hashes: set[str]) -> dict[str, ImageRecord]:
    if not hashes:
        return {}
    rows = session.scalars(
        select(ImageRecord)
        .where(ImageRecord.content_hash.in_(hashes), ImageRecord.status == ImageStatus.INDEXED)
        .order_by(ImageRecord.id)
    ).all()
    found: dict[str, ImageRecord] = {}
    for row in rows:
        found.setdefault(row.content_hash, row)
    return found
