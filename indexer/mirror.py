"""A FAISS index file that mirrors the vectors one catalog table stores.

The table is the source of truth: its rows carry their vectors, and the index file is a
cache of them keyed by the rows' primary keys. The cache is reconciled with the table by id
sets when it is loaded, rebuilt when its size calls for another index type, and saved
atomically. A library holds two: whole images and their regions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .vectorstore import VectorStore, choose_index_spec, physical_memory, should_map

log = logging.getLogger(__name__)

_CHUNK = 5_000


class IndexMirror:
    """The FAISS file at `path` mirroring `id_column`/`vector_column` of the rows `where` selects."""

    def __init__(self, path: Path, sessions: sessionmaker[Session], id_column, vector_column,
                 where=None, dim: Callable[[], int | None] = lambda: None, mmap: str = "off",
                 stamp: Callable[[], str | None] = lambda: None):
        self.path = path
        self.mmap = mmap  # LOUPE_INDEX_MMAP: auto, on or off (see `should_map`)
        self.sessions = sessions
        self.id_column = id_column
        self.vector_column = vector_column
        self.where = where
        self.dim = dim
        # The table's model, written beside the file when it is saved: a file saved under another
        # model (a catalog re-embedded by another host) is rebuilt, never trusted by its ids.
        self.stamp = stamp
        self._store: VectorStore | None = None
        self._unsaved = False  # the in-memory index has changes the file lacks
        self._file_seen: tuple | None = None  # the file's stat when last loaded or saved

    @property
    def loaded(self) -> bool:
        return self._store is not None

    @property
    def store(self) -> VectorStore:
        """The index, loaded on first use and reconciled with the table (in memory)."""
        if self._store is None:
            self._store = self._load()
        return self._store

    def _load(self) -> VectorStore:
        dim = self.dim()
        self._file_seen = self._file_stat()
        store = None
        if self.path.exists():
            mapped = should_map(self.mmap, self.path.stat().st_size, physical_memory())
            store = VectorStore.load(self.path, mapped=mapped)
        if store is None or (dim is not None and store.dim != dim) or not self._stamp_matches():
            return self.rebuild()
        self._reconcile(store)
        return store

    def _file_stat(self) -> tuple | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def generation(self) -> tuple:
        """What identifies the index's contents: the file it was loaded from or saved to (or,
        not loaded yet, the file as it is now) and the writes made since, in this process."""
        if self._store is None:
            return (self._file_stat(), 0)
        return (self._file_seen, self._store.changes)

    def refresh(self) -> bool:
        """Reload if another process saved a newer file; the new index is loaded and
        reconciled before it replaces the old one. True if it reloaded."""
        if self._store is None or self._file_stat() == self._file_seen:
            return False
        self._store = self._load()
        return True

    def forget(self) -> None:
        """Drop the loaded index (the next use loads the file again), e.g. after the table's
        vectors were replaced by another model's."""
        self._store = None
        self._unsaved = False
        self._file_seen = None

    def _select(self, *columns):
        query = select(*columns)
        return query if self.where is None else query.where(self.where)

    def _reconcile(self, store: VectorStore) -> bool:
        """Make `store` hold exactly the table's ids; True if it changed."""
        with self.sessions() as session:
            table_ids = set(session.scalars(self._select(self.id_column)).all())
        index_ids = set(store.ids().tolist())
        extra = index_ids - table_ids
        missing = sorted(table_ids - index_ids)
        if extra:
            store.remove(extra)
        for ids, vectors in self.stored_vectors(missing):
            store.add(ids, vectors)
        if extra or missing:
            log.info("reconciled %s with the catalog: +%d -%d vectors", self.path.name, len(missing), len(extra))
        return bool(extra or missing)

    def stored_vectors(self, ids: Sequence[int] | None = None):
        """Yield (ids, vectors) chunks of stored vectors: for `ids`, or every row."""
        with self.sessions() as session:
            if ids is None:
                ids = session.scalars(self._select(self.id_column).order_by(self.id_column)).all()
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                rows = session.execute(
                    select(self.id_column, self.vector_column).where(self.id_column.in_(chunk))
                ).all()
                if rows:
                    yield (
                        np.array([r[0] for r in rows], dtype=np.int64),
                        np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]),
                    )

    def rebuild(self) -> VectorStore:
        """A new index from the stored vectors, of the type their number calls for."""
        chunks = list(self.stored_vectors())
        dim = self.dim()
        if not chunks:
            self._store = VectorStore.create(dim or 1)
        else:
            ids = np.concatenate([c[0] for c in chunks])
            vectors = np.concatenate([c[1] for c in chunks])
            spec = choose_index_spec(len(ids), vectors.shape[1], memory_bytes=physical_memory())
            self._store = VectorStore.build(ids, vectors, spec)
        return self._store

    def sync(self) -> VectorStore:
        """Reconcile, switch type if the size calls for another one, and save if anything
        changed. Callers hold the write lock."""
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # left by a process killed mid-save
            stale.unlink(missing_ok=True)
        store = self.store
        changed = self._reconcile(store)
        wanted = choose_index_spec(len(store), store.dim, memory_bytes=physical_memory())
        if wanted.factory != store.spec.factory and len(store) > 0:
            log.info("rebuilding %s as %s for %d vectors", self.path.name, wanted.factory, len(store))
            store = self.rebuild()
            changed = True
        if changed or self._unsaved or not self.path.exists():
            self.save()
        return store

    def apply(self, remove_ids: Iterable[int], add_ids: Sequence[int], add_vectors: Sequence[np.ndarray]) -> None:
        """Apply a committed table change to the in-memory index."""
        remove_ids = list(remove_ids)
        if not remove_ids and not add_ids:
            return
        store = self.store
        if remove_ids:
            store.remove(remove_ids)
        if add_ids:
            store.add(np.array(add_ids, dtype=np.int64), np.stack(add_vectors))
        self._unsaved = True

    @property
    def stamp_path(self) -> Path:
        return self.path.with_name(self.path.name + ".model")

    def _stamp_matches(self) -> bool:
        """Whether the file was saved under the table's model (a file without a stamp, saved by
        an earlier version, is taken as it is)."""
        wanted = self.stamp()
        try:
            found = self.stamp_path.read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return True
        return wanted is None or found == wanted

    def save(self) -> None:
        from .atomic import atomic_write

        self.store.save(self.path)
        stamp = self.stamp()
        if stamp is not None:  # after the file: a crash between the two leaves a file rebuilt, never misread
            try:
                current = self.stamp_path.read_text().strip()
            except OSError:
                current = None
            if current != stamp:
                atomic_write(self.stamp_path, stamp + "\n")
        self._unsaved = False
        self._file_seen = self._file_stat()
