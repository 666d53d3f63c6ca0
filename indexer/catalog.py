"""The SQL catalog: typed SQLAlchemy 2.0 models for images, jobs and the index's model.

The catalog is the source of truth. An image row with status `indexed` owns one vector,
stored here (float32 bytes) and mirrored in FAISS under the row's primary key; a row's
vector never changes (a changed file gets a new row), so FAISS can always be reconciled with
the catalog by comparing id sets.
"""

from __future__ import annotations

import enum
from datetime import date, datetime, timezone

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL; INTEGER on SQLite so the key is the rowid (with AUTOINCREMENT, never reused).
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator):
    """A tz-aware instant stored as UTC, read back tz-aware (UTC) on every database. SQLite keeps
    datetimes as text without an offset: without this, an aware value would be stored, and
    compared in filters, as its wall time in whatever offset it carried."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, date) and not isinstance(value, datetime):
            value = datetime(value.year, value.month, value.day)  # a date: its start, in UTC
        # naive values are taken as UTC already
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ImageStatus(str, enum.Enum):
    INDEXED = "indexed"  # embedded; its vector is in FAISS
    DUPLICATE = "duplicate"  # same bytes as `duplicate_of`, which holds the vector
    FAILED = "failed"  # could not be read; `error` says why


class JobState(str, enum.Enum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"


class ImageRecord(Base):
    __tablename__ = "images"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    duplicate_of: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("images.id", ondelete="SET NULL"), index=True
    )
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    noise_level: Mapped[float | None] = mapped_column(Float)  # σ̂ of the model input (indexer.noise)
    # The picture's local features (indexer.features blob, at most 16 KB), loaded only when
    # asked for; null until computed (pictures indexed before they existed: `loupe index` backfills).
    local_features: Mapped[bytes | None] = deferred(mapped_column(LargeBinary))
    job_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("jobs.id", ondelete="SET NULL"))
    missing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What the library filters and sorts by (indexer.metadata reads it at index time; rows indexed
    # before it existed have metadata_version null, and the next `loupe index` backfills them
    # without re-embedding). `folder` is the absolute parent folder of `path`.
    folder: Mapped[str | None] = mapped_column(Text, index=True)
    # When the picture was taken, as a UTC instant: EXIF DateTimeOriginal (with OffsetTimeOriginal
    # when present, else read as UTC) or, without it, the file's modification time. `taken_source`
    # says which ("exif" or "file"); `taken_offset_min` is the EXIF offset in minutes, when given.
    taken_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    taken_source: Mapped[str | None] = mapped_column(String(8))
    taken_offset_min: Mapped[int | None] = mapped_column(SmallInteger)
    camera_make: Mapped[str | None] = mapped_column(String(64))
    camera_model: Mapped[str | None] = mapped_column(String(64))
    orientation: Mapped[int | None] = mapped_column(SmallInteger)  # EXIF orientation, 1-8
    has_gps: Mapped[bool | None] = mapped_column(Boolean)
    # Coordinates are kept only when the user opts in (LOUPE_KEEP_GPS); else null even with has_gps.
    gps_lat: Mapped[float | None] = mapped_column(Float)
    gps_lon: Mapped[float | None] = mapped_column(Float)
    metadata_version: Mapped[int | None] = mapped_column(SmallInteger)  # null: not read yet
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def vector(self) -> np.ndarray:
        return np.frombuffer(self.embedding, dtype=np.float32)


class RegionRecord(Base):
    """A square part of an indexed image with its own vector, mirrored in the regions index
    under this row's key. Regions belong to the image that holds the vector; when a duplicate
    inherits that vector, it inherits the regions too (same keys, so FAISS is untouched)."""

    __tablename__ = "image_regions"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(BigId, ForeignKey("images.id", ondelete="CASCADE"), index=True)
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)


class JobRecord(Base):
    __tablename__ = "jobs"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    roots: Mapped[str] = mapped_column(Text)  # JSON list of absolute paths
    state: Mapped[str] = mapped_column(String(16), index=True)
    files_seen: Mapped[int] = mapped_column(Integer, default=0)
    added: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    missing: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IndexInfo(Base):
    """One row: the model whose vectors the catalog and index hold."""

    __tablename__ = "index_info"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    architecture: Mapped[str] = mapped_column(String(128))
    pretrained: Mapped[str] = mapped_column(String(256))
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    embed_dim: Mapped[int] = mapped_column(Integer)
    # The scores from which a whole-picture or a region match counts as the same picture,
    # calibrated on the index's own images (see indexer.matching); null until calibrated.
    whole_cutoff: Mapped[float | None] = mapped_column(Float)
    region_cutoff: Mapped[float | None] = mapped_column(Float)
    cutoff_basis: Mapped[str | None] = mapped_column(Text)
    calibrated_images: Mapped[int | None] = mapped_column(Integer)  # indexed images at calibration
    # The indexed pictures' noise levels (indexer.noise), taken at calibration: median and 99th centile.
    noise_median: Mapped[float | None] = mapped_column(Float)
    noise_high: Mapped[float | None] = mapped_column(Float)
    # The inliers from which geometric verification counts as a copy (indexer.verify), calibrated
    # with the cut-offs; null until then.
    inlier_cutoff: Mapped[int | None] = mapped_column(Integer)
    inlier_basis: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
