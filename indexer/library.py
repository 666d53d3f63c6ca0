"""A Loupe library: the SQL catalog and the FAISS index kept in agreement.

This is the one place that converts between FAISS ids and catalog rows (they are the same
numbers: image primary keys). The catalog is the source of truth; the index file is a cache
of the catalog's stored vectors, reconciled by id when it is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .catalog import ImageRecord, ImageStatus, IndexInfo, JobRecord
from .database import open_database
from .embedder import ModelIdentity
from .errors import ModelMismatchError, NotIndexedError
from .settings import Settings
from .vectorstore import VectorStore, choose_index_spec

log = logging.getLogger(__name__)

_CHUNK = 5_000


@dataclass
class IndexDelta:
    """Changes to apply to FAISS once the catalog transaction that caused them commits."""

    remove_ids: list[int] = field(default_factory=list)
    add_ids: list[int] = field(default_factory=list)
    add_vectors: list[np.ndarray] = field(default_factory=list)

    def add(self, id_: int, vector: np.ndarray) -> None:
        self.add_ids.append(id_)
        self.add_vectors.append(vector)

    def remove(self, id_: int) -> None:
        """Drop `id_`: cancel a pending add of it, or remove it from the index."""
        if id_ in self.add_ids:
            at = self.add_ids.index(id_)
            del self.add_ids[at], self.add_vectors[at]
        else:
            self.remove_ids.append(id_)

    def merge(self, other: "IndexDelta") -> None:
        for id_ in other.remove_ids:
            self.remove(id_)
        self.add_ids += other.add_ids
        self.add_vectors += other.add_vectors


@dataclass(frozen=True)
class SearchResult:
    id: int
    path: str
    score: float
    width: int | None
    height: int | None

    @property
    def thumb_url(self) -> str:
        return f"/images/{self.id}/thumb"

    @property
    def file_url(self) -> str:
        return f"/images/{self.id}/file"

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "path": self.path,
            "score": round(self.score, 6),
            "width": self.width,
            "height": self.height,
            "thumb_url": self.thumb_url,
            "file_url": self.file_url,
        }


@dataclass(frozen=True)
class SearchPage:
    results: tuple[SearchResult, ...]
    total: int
    took_ms: float

    def as_dict(self) -> dict:
        return {"results": [r.as_dict() for r in self.results], "total": self.total, "took_ms": round(self.took_ms, 2)}


class Library:
    """The catalog and vector index under one `Settings`."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]):
        self.settings = settings
        self.sessions = sessions
        self._store: VectorStore | None = None
        self._unsaved = False  # the in-memory index has changes the file lacks
        self._file_seen: tuple | None = None  # the index file's stat when last loaded or saved
        self._identity: ModelIdentity | None = None

    @classmethod
    def open(cls, settings: Settings) -> "Library":
        return cls(settings, open_database(settings))

    def close(self) -> None:
        self.sessions.kw["bind"].dispose()

    # -- model identity -------------------------------------------------------------------
    def stored_identity(self) -> ModelIdentity | None:
        """The index's model (read once it exists: it never changes afterwards)."""
        if self._identity is None:
            with self.sessions() as session:
                info = session.get(IndexInfo, 1)
            if info is not None:
                self._identity = ModelIdentity(info.architecture, info.pretrained, info.checkpoint_sha256, info.embed_dim)
        return self._identity

    def bind_model(self, identity: ModelIdentity) -> None:
        """Check that `identity` is the index's model, recording it if the index has none yet."""
        stored = self.stored_identity()
        if stored is None:
            with self.sessions.begin() as session:
                if session.get(IndexInfo, 1) is None:
                    session.add(
                        IndexInfo(
                            id=1,
                            architecture=identity.architecture,
                            pretrained=identity.pretrained,
                            checkpoint_sha256=identity.checkpoint_sha256,
                            embed_dim=identity.embed_dim,
                        )
                    )
            stored = self.stored_identity()
        if not stored.same_weights(identity):
            raise ModelMismatchError(
                f"this index was built with {stored.describe()} but the configured model is "
                f"{identity.describe()}: set LOUPE_MODEL/LOUPE_PRETRAINED to match the index, "
                "or use another LOUPE_HOME (or database) for the new model"
            )

    # -- the vector index -----------------------------------------------------------------
    @property
    def store(self) -> VectorStore:
        """The FAISS index, loaded on first use and reconciled with the catalog (in memory)."""
        if self._store is None:
            self._store = self._load_store()
        return self._store

    def _load_store(self) -> VectorStore:
        path = self.settings.index_path
        dim = self._dim()
        self._file_seen = self._index_file_stat()
        store = VectorStore.load(path) if path.exists() else None
        if store is None or (dim is not None and store.dim != dim):
            return self.rebuild_store()
        self._reconcile(store)
        return store

    def _index_file_stat(self) -> tuple | None:
        try:
            st = self.settings.index_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self) -> bool:
        """Reload the index if another process saved a new one (e.g. a finished bulk job).

        The new index is loaded and reconciled before it replaces the old one, so searches
        never see a half-loaded index. Returns True if it reloaded.
        """
        if self._store is None or self._index_file_stat() == self._file_seen:
            return False
        fresh = self._load_store()
        self._store = fresh
        return True

    def _dim(self) -> int | None:
        identity = self.stored_identity()
        return identity.embed_dim if identity else None

    def _reconcile(self, store: VectorStore) -> bool:
        """Make `store` hold exactly the catalog's indexed ids; True if it changed."""
        with self.sessions() as session:
            catalog_ids = set(
                session.scalars(select(ImageRecord.id).where(ImageRecord.status == ImageStatus.INDEXED)).all()
            )
        index_ids = set(store.ids().tolist())
        extra = index_ids - catalog_ids
        missing = sorted(catalog_ids - index_ids)
        if extra:
            store.remove(extra)
        for ids, vectors in self._stored_vectors(missing):
            store.add(ids, vectors)
        if extra or missing:
            log.info("reconciled index with catalog: +%d -%d vectors", len(missing), len(extra))
        return bool(extra or missing)

    def _stored_vectors(self, ids: Sequence[int] | None = None):
        """Yield (ids, vectors) chunks of stored vectors: for `ids`, or all indexed rows."""
        with self.sessions() as session:
            if ids is None:
                ids = session.scalars(
                    select(ImageRecord.id).where(ImageRecord.status == ImageStatus.INDEXED).order_by(ImageRecord.id)
                ).all()
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                rows = session.execute(
                    select(ImageRecord.id, ImageRecord.embedding).where(ImageRecord.id.in_(chunk))
                ).all()
                if rows:
                    yield (
                        np.array([r.id for r in rows], dtype=np.int64),
                        np.stack([np.frombuffer(r.embedding, dtype=np.float32) for r in rows]),
                    )

    def rebuild_store(self) -> VectorStore:
        """A new index from the catalog's stored vectors, of the type its size calls for."""
        chunks = list(self._stored_vectors())
        dim = self._dim()
        if not chunks:
            self._store = VectorStore.create(dim or 1)
            return self._store
        ids = np.concatenate([c[0] for c in chunks])
        vectors = np.concatenate([c[1] for c in chunks])
        self._store = VectorStore.build(ids, vectors, choose_index_spec(len(ids), vectors.shape[1]))
        return self._store

    def sync_store(self) -> VectorStore:
        """Reconcile the index with the catalog, switch its type if its size calls for another
        one, and save it. Callers hold the write lock."""
        path = self.settings.index_path
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-save
            stale.unlink(missing_ok=True)
        store = self.store
        changed = self._reconcile(store)
        wanted = choose_index_spec(len(store), store.dim)
        if wanted.factory != store.spec.factory and len(store) > 0:
            log.info("rebuilding index as %s for %d vectors", wanted.factory, len(store))
            store = self.rebuild_store()
            changed = True
        if changed or self._unsaved or not self.settings.index_path.exists():
            self.save_index()
        return store

    def apply(self, delta: IndexDelta) -> None:
        """Apply a committed catalog change to the in-memory index."""
        store = self.store
        if delta.remove_ids:
            store.remove(delta.remove_ids)
        if delta.add_ids:
            store.add(np.array(delta.add_ids, dtype=np.int64), np.stack(delta.add_vectors))
        self._unsaved = self._unsaved or bool(delta.remove_ids or delta.add_ids)

    def save_index(self) -> None:
        self.store.save(self.settings.index_path)
        self._unsaved = False
        self._file_seen = self._index_file_stat()

    # -- catalog changes --------------------------------------------------------------------
    @staticmethod
    def retire(session: Session, record: ImageRecord) -> IndexDelta:
        """Delete `record`; if it held the vector for duplicates, the oldest duplicate
        inherits it (as a new FAISS id), so no picture leaves the index by accident."""
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
                for other in others:
                    other.duplicate_of = heir.id
                delta.add(heir.id, record.vector())
        session.delete(record)
        session.flush()
        return delta

    def remove(self, records: Iterable[ImageRecord], session: Session) -> IndexDelta:
        delta = IndexDelta()
        for record in records:
            delta.merge(self.retire(session, record))
        return delta

    # -- queries ------------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int = 20, offset: int = 0, started: float | None = None) -> SearchPage:
        """The best `k` images after `offset` for one query vector, joined to the catalog."""
        import time

        t0 = started if started is not None else time.perf_counter()
        store = self.store
        hits = store.search(query, k + offset)[0][offset:]
        ids = [h.id for h in hits]
        with self.sessions() as session:
            rows = {
                r.id: r
                for r in session.execute(
                    select(ImageRecord.id, ImageRecord.path, ImageRecord.width, ImageRecord.height).where(
                        ImageRecord.id.in_(ids)
                    )
                ).all()
            }
        results = tuple(
            SearchResult(h.id, rows[h.id].path, h.score, rows[h.id].width, rows[h.id].height)
            for h in hits
            if h.id in rows
        )
        return SearchPage(results, total=len(store), took_ms=(time.perf_counter() - t0) * 1000)

    def counts(self) -> dict[str, int]:
        with self.sessions() as session:
            by_status = dict(
                session.execute(select(ImageRecord.status, func.count()).group_by(ImageRecord.status)).all()
            )
            missing = session.scalar(select(func.count()).where(ImageRecord.missing_since.is_not(None)))
        counts = {status.value: int(by_status.get(status.value, 0)) for status in ImageStatus}
        counts["missing"] = int(missing or 0)
        return counts

    def recent_failures(self, limit: int = 5) -> list[tuple[str, str]]:
        with self.sessions() as session:
            rows = session.execute(
                select(ImageRecord.path, ImageRecord.error)
                .where(ImageRecord.status == ImageStatus.FAILED)
                .order_by(ImageRecord.id.desc())
                .limit(limit)
            ).all()
        return [(r.path, r.error or "") for r in rows]

    def last_job(self) -> JobRecord | None:
        with self.sessions() as session:
            return session.scalars(select(JobRecord).order_by(JobRecord.id.desc()).limit(1)).first()

    def image(self, id_: int) -> ImageRecord | None:
        with self.sessions() as session:
            return session.get(ImageRecord, id_)

    def image_by_path(self, path: str) -> ImageRecord | None:
        with self.sessions() as session:
            return session.scalars(select(ImageRecord).where(ImageRecord.path == path)).first()

    @staticmethod
    def record(session: Session, id_: int) -> ImageRecord:
        record = session.get(ImageRecord, id_)
        if record is None:
            raise NotIndexedError(f"no image with id {id_}")
        return record

    def vector_of(self, id_: int) -> np.ndarray:
        """The stored vector of an image (a duplicate's is its original's)."""
        with self.sessions() as session:
            record = self.record(session, id_)
            if record.status == ImageStatus.DUPLICATE and record.duplicate_of is not None:
                record = self.record(session, record.duplicate_of)
            if record.embedding is None:
                raise NotIndexedError(f"image {id_} has no vector ({record.status}: {record.error or 'not embedded'})")
            return record.vector()
