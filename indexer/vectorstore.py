"""The FAISS vector store: inner product over L2-normalised vectors, ids = catalog keys."""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path

log = logging.getLogger(__name__)

EXACT_LIMIT = 50_000  # below this many vectors an exact flat index is fast enough
COMPRESS_LIMIT = 2_000_000  # beyond this, scalar quantisation keeps memory in check
PQ_LIMIT = 50_000_000  # beyond this (or past the memory budget), product quantisation
TARGET_RECALL = 0.95  # recall@10 against exact search that nprobe is tuned to reach
TRAINING_POINTS_PER_LIST = 64  # k-means sample per inverted list (FAISS warns below 39)


@dataclass(frozen=True)
class IndexSpec:
    """A FAISS index type: its factory string and how many probes to search with."""

    factory: str
    nprobe: int = 1

    @property
    def exact(self) -> bool:
        return self.factory == "Flat"

    @property
    def needs_training(self) -> bool:
        return not self.exact


def choose_index_spec(count: int, dim: int, exact_limit: int = EXACT_LIMIT,
                      memory_bytes: int | None = None) -> IndexSpec:
    """The index type for `count` vectors of `dim` dimensions (a pure function).

    Exact `Flat` while small; beyond `exact_limit`, an inverted file with about 4·√n lists
    (at least 39 training points per list are available), searched with a starting number of
    probes (`VectorStore.build` tunes it to reach `TARGET_RECALL`); past `COMPRESS_LIMIT`,
    8-bit scalar quantisation (4x smaller) instead of raw vectors; past `PQ_LIMIT`, or when
    even 8-bit codes would not fit in `memory_bytes`, OPQ-rotated product quantisation with
    one byte per 8 dimensions (16x smaller than raw vectors).
    """
    if count < 0 or dim <= 0:
        raise ValueError(f"bad index size: count={count}, dim={dim}")
    if count < exact_limit:
        return IndexSpec("Flat")
    nlist = _round_to_power_of_two(4 * math.sqrt(count))
    nlist = max(16, min(nlist, count // 39))
    nprobe = max(8, nlist // 16)
    too_big = memory_bytes is not None and count * dim > memory_bytes
    if (count >= PQ_LIMIT or too_big) and dim % 8 == 0:
        m = dim // 8
        return IndexSpec(f"OPQ{m}_{dim},IVF{nlist},PQ{m}", nprobe=nprobe)
    raw_too_big = memory_bytes is not None and count * dim * 4 > memory_bytes
    codec = "SQ8" if count >= COMPRESS_LIMIT or raw_too_big else "Flat"
    return IndexSpec(f"IVF{nlist},{codec}", nprobe=nprobe)


MAP_FRACTION = 0.25  # LOUPE_INDEX_MMAP=auto maps index files larger than this share of RAM


def should_map(policy: str, file_bytes: int, memory_bytes: int | None) -> bool:
    """Whether to memory-map an index file rather than read it (a pure function): `on`,
    `off`, or `auto`: when the file is over `MAP_FRACTION` of the machine's memory."""
    if policy == "on":
        return True
    if policy == "off" or memory_bytes is None:
        return False
    return file_bytes > MAP_FRACTION * memory_bytes


def physical_memory() -> int | None:
    """This machine's RAM in bytes, when the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _round_to_power_of_two(value: float) -> int:
    return 1 << max(0, round(math.log2(max(1.0, value))))


@dataclass(frozen=True)
class Hit:
    id: int
    score: float


class VectorStore:
    """A FAISS index addressed by int64 ids, safe to search from several threads.

    Writes (add, remove) take a lock; searches take it too, since FAISS indexes are not
    safe to search while being modified. The CPU index is the master copy (it is what is
    written and saved); when FAISS sees GPUs, searches run on a GPU clone that is refreshed
    after writes.
    """

    def __init__(self, index, spec: IndexSpec, dim: int, use_gpu: bool | None = None):
        self._index = index
        self.spec = spec
        self.dim = dim
        self._lock = threading.RLock()
        self.use_gpu = gpu_count() > 0 if use_gpu is None else use_gpu
        self._gpu_index = None
        self.tuned: Tuning | None = None  # how nprobe was chosen, when this process built the index
        self.mapped = False  # searching a memory-mapped file (see `load`)
        self.read_only: str | None = None  # why writes are refused, for stores that cannot take them
        self.changes = 0  # writes since it was loaded or saved (part of `IndexMirror.generation`)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(cls, dim: int, spec: IndexSpec | None = None, training: np.ndarray | None = None) -> "VectorStore":
        """An empty store; approximate types are trained on `training` vectors first."""
        import faiss

        spec = spec or IndexSpec("Flat")
        inner = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.try_extract_index_ivf(inner)
        if ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
            # Polysemous code training serves Hamming-distance filtering, which Loupe does not
            # use, and is most of the training time.
            faiss.downcast_index(ivf).do_polysemous_training = False
        if spec.needs_training:
            if training is None or len(training) == 0:
                raise ValueError(f"index type {spec.factory} needs training vectors")
            inner.train(_as_matrix(training, dim))
        _set_nprobe(inner, spec.nprobe)
        return cls(faiss.IndexIDMap2(inner), spec, dim)

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, spec: IndexSpec, seed: int = 0,
              target_recall: float | None = TARGET_RECALL) -> "VectorStore":
        """A store holding `vectors` under `ids`. Approximate types train on a seeded sample,
        then (with `target_recall`) get the fewest probes that reach that recall@10 against
        exact search, measured on a held-out sample (see `tune_nprobe`)."""
        dim = vectors.shape[1]
        training = None
        rng = np.random.default_rng(seed)
        trained_on = np.zeros(len(vectors), dtype=bool)
        if spec.needs_training:
            size = min(len(vectors), TRAINING_POINTS_PER_LIST * _nlist(spec))
            trained_on[rng.choice(len(vectors), size=size, replace=False)] = True
            training = vectors[trained_on]
        store = cls.create(dim, spec, training)
        store.add(ids, vectors)
        if spec.needs_training and target_recall is not None and len(vectors) > 10:
            # Queries the k-means never saw (when there are any): the centroids fit their own
            # training points better, which overstated recall by about 0.01 at 1M vectors.
            held_out = np.flatnonzero(~trained_on)
            pool = held_out if len(held_out) >= 64 else np.arange(len(vectors))
            sample = vectors[rng.choice(pool, size=min(256, len(pool)), replace=False)]
            tuned = tune_nprobe(store._index, vectors, sample, target_recall)
            store.set_nprobe(tuned.nprobe)
            store.tuned = tuned
            log.info("tuned %s: nprobe %d reaches recall@10 %.3f (target %.2f)",
                     spec.factory, tuned.nprobe, tuned.recall, target_recall)
        return store

    @classmethod
    def load(cls, path: Path, mapped: bool = False) -> "VectorStore":
        """Read an index file; `mapped` maps it instead (FAISS `IO_FLAG_MMAP_IFC`): the vectors
        stay in the file and the page cache, so an index larger than RAM can be searched and
        processes searching the same file share one copy. A mapped index is copied into memory
        by its first write (FAISS aborts the process on writes to mapped arrays)."""
        import faiss

        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mapped else 0)
        spec = IndexSpec(_factory_of(index), nprobe=_get_nprobe(index))
        store = cls(index, spec, index.d)
        store.mapped = mapped
        return store

    # -- reads --------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        import faiss

        with self._lock:
            if hasattr(self._index, "id_map"):
                return faiss.vector_to_array(self._index.id_map).astype(np.int64)
            return _ivf_ids(faiss.extract_index_ivf(self._index))

    def search(self, queries: np.ndarray, k: int, selection: "IdSelection | None" = None) -> list[list[Hit]]:
        """The `k` best hits for each query row, best first; with `selection`, among its ids
        only (`search_selected`)."""
        if selection is not None:
            return search_selected(self, queries, k, selection)
        queries = _as_matrix(queries, self.dim)
        with self._lock:
            k = min(k, len(self))
            if k <= 0:
                return [[] for _ in range(len(queries))]
            scores, ids = self._searcher().search(queries, k)
        return [
            [Hit(int(i), float(s)) for s, i in zip(row_s, row_i) if i >= 0]
            for row_s, row_i in zip(scores, ids)
        ]

    def neighbours(self, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best (scores, ids) of each query row as arrays (id -1: none), for bulk passes
        over the whole index; `nprobe` overrides an inverted file's probes on the CPU index."""
        import faiss

        queries = _as_matrix(queries, self.dim)
        with self._lock:
            k = min(k, len(self))
            if k <= 0:
                return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
            if nprobe is not None and not self.use_gpu and faiss.try_extract_index_ivf(self._index) is not None:
                return self._index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=int(nprobe)))
            return self._searcher().search(queries, k)

    def _searcher(self):
        if not self.use_gpu:
            return self._index
        if self._gpu_index is None:
            import faiss

            try:
                self._gpu_index = faiss.index_cpu_to_all_gpus(self._index)
            except Exception as err:  # e.g. a type without a GPU implementation
                log.warning("FAISS GPU unavailable for %s (%s); searching on the CPU", self.spec.factory, err)
                self.use_gpu = False
                return self._index
        return self._gpu_index

    @property
    def device(self) -> str:
        return "gpu" if self.use_gpu else "cpu"

    def set_nprobe(self, nprobe: int) -> None:
        from dataclasses import replace

        with self._lock:
            _set_nprobe(self._index, nprobe)
            self.spec = replace(self.spec, nprobe=nprobe)
            self._gpu_index = None

    def reconstruct(self, id_: int) -> np.ndarray:
        with self._lock:
            return self._index.reconstruct(int(id_))

    # -- writes -------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        matrix = _as_matrix(vectors, self.dim)
        if len(matrix) != len(ids):
            raise ValueError(f"{len(ids)} ids for {len(matrix)} vectors")
        with self._lock:
            self._own_memory()
            self._index.add_with_ids(matrix, ids)
            self._gpu_index = None
            self.changes += 1

    def remove(self, ids) -> int:
        import faiss

        ids = np.ascontiguousarray(list(ids), dtype=np.int64)
        if len(ids) == 0:
            return 0
        with self._lock:
            self._own_memory()
            self._gpu_index = None
            self.changes += 1
            gone = _internal_labels(self._index, ids)
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
            if gone is not None and len(gone):
                _relabel_inverted_lists(self._index, gone)
            return removed

    def _own_memory(self) -> None:
        """Before a write: refuse it on a read-only store; copy a mapped index into memory
        (from the mapping itself, so a file replaced since it was mapped cannot slip in)."""
        if self.read_only:
            raise ValueError(self.read_only)
        if not self.mapped:
            return
        import faiss

        self._index = faiss.deserialize_index(faiss.serialize_index(self._index))
        self.mapped = False
        log.info("copied a memory-mapped %s index into memory to write to it", self.spec.factory)

    def save(self, path: Path) -> None:
        """Write atomically: a temporary file in the same folder, fsync, rename, fsync folder."""
        import faiss

        with atomic_path(path) as tmp, self._lock:
            faiss.write_index(self._index, str(tmp))
            self.changes = 0

    def describe(self) -> dict:
        return {
            "type": self.spec.factory,
            "nprobe": self.spec.nprobe,
            "vectors": len(self),
            "dim": self.dim,
            "device": self.device,
            "mapped": self.mapped,
        }


@dataclass(frozen=True)
class Tuning:
    nprobe: int
    recall: float  # recall@10 against exact search on the held-out sample
    target: float


def tune_nprobe(index, vectors: np.ndarray, queries: np.ndarray, target: float = TARGET_RECALL,
                k: int = 10) -> Tuning:
    """The fewest probes (powers of two) with which `index` finds `target` of the exact top-`k`
    neighbours of `queries` among `vectors`. Each query's own copy in the index is left out of
    both lists, so a sample of the indexed vectors serves as held-out queries."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    exact_scores, exact_rows = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32),
                                         np.ascontiguousarray(vectors, dtype=np.float32), k + 1,
                                         metric=faiss.METRIC_INNER_PRODUCT)
    id_map = faiss.vector_to_array(index.id_map) if hasattr(index, "id_map") else np.arange(index.ntotal)
    exact_ids = id_map[exact_rows]
    truth = [set(row[1:].tolist()) for row in exact_ids]  # the nearest is the query itself
    recall, nprobe = 0.0, 1
    while True:
        ivf.nprobe = nprobe
        _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + 1)
        recall = float(np.mean([
            len(t & set(row.tolist()) - {int(own[0])}) / k for t, row, own in zip(truth, found, exact_ids)
        ]))
        if recall >= target or nprobe >= ivf.nlist:
            return Tuning(nprobe, recall, target)
        nprobe = min(nprobe * 2, ivf.nlist)


def faiss_build() -> dict:
    """The FAISS build this process loaded: its version, whether it was built with GPU support
    (faiss-gpu, not faiss-cpu), and how many GPUs it sees."""
    import faiss

    return {"version": faiss.__version__, "gpu_build": hasattr(faiss, "StandardGpuResources"), "gpus": gpu_count()}


def gpu_count() -> int:
    """GPUs FAISS can use (0 with the faiss-cpu build)."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {matrix.shape}")
    return matrix


def _nlist(spec: IndexSpec) -> int:
    for part in spec.factory.split(","):
        if part.startswith("IVF"):
            return int(part[3:])
    return 1


def _set_nprobe(index, nprobe: int) -> None:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe


def _get_nprobe(index) -> int:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    return int(ivf.nprobe) if ivf is not None else 1


def _ivf_ids(ivf) -> np.ndarray:
    """Every id held in an IVF index's inverted lists (for indexes without an id map)."""
    import faiss

    lists = ivf.invlists
    found = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(ivf.nlist) if lists.list_size(i)]
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)


def _factory_of(index) -> str:
    """The factory string of a loaded index (usually wrapped in an IDMap2)."""
    import faiss

    wrapped = isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2))
    inner = faiss.downcast_index(index.index) if wrapped else index
    if isinstance(inner, faiss.IndexFlat):
        return "Flat"
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)
        if isinstance(ivf, faiss.IndexIVFPQ):
            m = ivf.pq.M
            prefix = f"OPQ{m}_{ivf.d}," if isinstance(inner, faiss.IndexPreTransform) else ""
            return f"{prefix}IVF{ivf.nlist},PQ{m}"
        codec = "SQ8" if isinstance(ivf, faiss.IndexIVFScalarQuantizer) else "Flat"
        return f"IVF{ivf.nlist},{codec}"
    return type(inner).__name__


# -- filtered search -----------------------------------------------------------------------------
# A selection of at most this many vectors is scored exactly against each query: its vectors are
# read out of the index once (kept with the selection) and one matrix product ranks them, which
# costs less than any scan of an IVF index's lists (at 1M vectors, scanning every list with a
# selector took 70-100 ms, bench/filtered_search.py). At 512 dimensions that is 32 MB at most.
EXACT_SELECTION = 16_384


@dataclass(frozen=True, eq=False)
class IdSelection:
    """A set of ids a search is restricted to (ascending, unique), with the bitmap FAISS
    tests membership in (bit `id` set; kept alive with the selection) and, once a small
    selection has been searched, its vectors (`cache`)."""

    ids: np.ndarray
    bitmap: np.ndarray
    cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, ids) -> "IdSelection":
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):  # already ascending and unique: kept
            ids = np.unique(ids)
        bits = np.zeros(int(ids[-1]) + 1 if len(ids) else 1, dtype=bool)
        bits[ids] = True
        return cls(ids, np.packbits(bits, bitorder="little"))

    def __len__(self) -> int:
        return len(self.ids)

    def selector(self):
        import faiss

        return faiss.IDSelectorBitmap(len(self.bitmap), faiss.swig_ptr(self.bitmap))


def filtered_nprobe(nprobe: int, nlist: int, fraction: float) -> int:
    """The probes an IVF search restricted to `fraction` of the vectors needs (a pure function):
    the unfiltered probes times fraction^-0.75, since the nearest selected vectors lie further
    out (the 10 nearest of a 10 % selection are about the 100 nearest overall). At 100k vectors,
    1/√fraction probes kept recall@10 at 0.98 for 10 % but fell to 0.88 at 1 %
    (bench/filtered_search.py with the exact scoring of small selections turned off)."""
    return min(nlist, math.ceil(nprobe * max(fraction, 1e-9) ** -0.75))


def search_selected(store: VectorStore, queries: np.ndarray, k: int, selection: IdSelection) -> list[list[Hit]]:
    """`store`'s `k` best hits for each query among the ids of `selection`, best first.

    Nothing is oversampled and dropped. A `Flat` index is searched exactly with a selector
    (`SearchParameters(sel=...)`: FAISS skips unselected vectors before computing a distance).
    An IVF index scores a selection of at most EXACT_SELECTION vectors exactly (their vectors
    read out of the index once); a larger one is searched with a selector and `filtered_nprobe`
    probes, and a query that finds fewer than `k` while the selection holds more is searched
    again over every list. Runs on the CPU index (FAISS's GPU indexes take no selector)."""
    import faiss

    queries = _as_matrix(queries, store.dim)
    with store._lock:
        k = min(k, len(selection), len(store))
        if k <= 0:
            return [[] for _ in range(len(queries))]
        index = store._index
        ivf = faiss.try_extract_index_ivf(index)
        selector = selection.selector()
        if ivf is None:
            scores, ids = index.search(queries, k, params=faiss.SearchParameters(sel=selector))
        else:
            held = _selected_vectors(store, selection) if len(selection) <= EXACT_SELECTION else None
            if held is not None:
                scores, ids = _exact_top(queries, k, held)
            else:
                nprobe = filtered_nprobe(store.spec.nprobe, ivf.nlist, len(selection) / max(len(store), 1))
                scores, ids = index.search(queries, k, params=faiss.SearchParametersIVF(sel=selector, nprobe=nprobe))
                short = np.flatnonzero((ids < 0).any(axis=1))
                if len(short) and nprobe < ivf.nlist:
                    params = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nlist)
                    scores[short], ids[short] = index.search(queries[short], k, params=params)
    return [[Hit(int(i), float(s)) for s, i in zip(row_s, row_i) if i >= 0] for row_s, row_i in zip(scores, ids)]


def _selected_vectors(store: VectorStore, selection: IdSelection) -> tuple | None:
    """(ids, vectors) of the selection as an IVF,Flat index holds them, read once per index state
    and kept with the selection; None for other IVF types (scanned instead)."""
    import faiss

    ivf = faiss.downcast_index(_inner(store._index))  # not behind a transform (OPQ)
    if not isinstance(ivf, faiss.IndexIVFFlat):
        return None
    key = (id(store._index), store.changes)
    held = selection.cache.get("vectors")
    if held is not None and held[0] == key:
        return held[1]
    external, list_of, offset_of = _list_positions(store, ivf, key)
    spot = np.minimum(np.searchsorted(external, selection.ids), max(len(external) - 1, 0))
    present = (external[spot] == selection.ids) if len(external) else np.zeros(len(selection.ids), dtype=bool)
    ids, lists, offsets = selection.ids[present], list_of[spot[present]], offset_of[spot[present]]
    vectors = np.empty((len(ids), store.dim), dtype=np.float32)
    order = np.argsort(lists, kind="stable")
    starts = np.flatnonzero(np.r_[True, lists[order][1:] != lists[order][:-1]]) if len(order) else np.zeros(0, int)
    for first, last in zip(starts, np.r_[starts[1:], len(order)]):
        rows = order[first:last]
        number = int(lists[rows[0]])
        size = ivf.invlists.list_size(number)
        codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(number), size * ivf.code_size)
        vectors[rows] = codes.view(np.float32).reshape(size, store.dim)[offsets[rows]]
    selection.cache["vectors"] = (key, (ids, vectors))
    return ids, vectors


def _inner(index):
    return index.index if hasattr(index, "id_map") else index


def _list_positions(store: VectorStore, ivf, key) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each vector of an IVF index lies: (its id, ascending; its list; its place in the
    list), read from the lists once per index state."""
    import faiss

    held = store.__dict__.get("_positions")
    if held is not None and held[0] == key:
        return held[1]
    stored, lists, offsets = [], [], []
    for number in range(ivf.nlist):
        size = ivf.invlists.list_size(number)
        if size:
            stored.append(faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size).copy())
            lists.append(np.full(size, number, dtype=np.int32))
            offsets.append(np.arange(size, dtype=np.int64))
    if not stored:
        empty = np.zeros(0, np.int64)
        found = (empty, empty.astype(np.int32), empty)
    else:
        stored_ids = np.concatenate(stored)
        external = faiss.vector_to_array(store._index.id_map)[stored_ids] if hasattr(store._index, "id_map") \
            else stored_ids
        order = np.argsort(external, kind="stable")
        found = (external[order].astype(np.int64), np.concatenate(lists)[order], np.concatenate(offsets)[order])
    store.__dict__["_positions"] = (key, found)
    return found


def _exact_top(queries: np.ndarray, k: int, held: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best of the held (ids, vectors) by inner product for each query (-1 ids pad);
    FAISS's own kernel (`faiss.knn`), which for a few queries runs on its SIMD code rather than a
    multi-threaded BLAS (whose threads, on a loaded 2-core machine, made one product take 36 ms)."""
    import faiss

    ids, vectors = held
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    found = np.full((len(queries), k), -1, dtype=np.int64)
    take = min(k, len(ids))
    if take:
        best, rows = faiss.knn(queries, vectors, take, metric=faiss.METRIC_INNER_PRODUCT)
        scores[:, :take] = best
        found[:, :take] = np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
    return scores, found


# -- removals from an id-mapped IVF index ------------------------------------------------------------
# `IndexIDMap2.remove_ids` compacts its id map (label i → external id) as if the wrapped index
# renumbered its vectors 0..n-1 the way a flat index does. An IVF index does not: its inverted
# lists keep each vector's old label, so after a removal every label above a removed one would
# name the wrong external id (and the last ones none). The lists are relabelled to match.
def _internal_labels(index, ids: np.ndarray) -> np.ndarray | None:
    """The sorted internal labels of `ids` in an IDMap2 over an IVF index (None for other types)."""
    import faiss

    if not isinstance(index, faiss.IndexIDMap2) or faiss.try_extract_index_ivf(index.index) is None:
        return None
    id_map = faiss.vector_to_array(index.id_map)
    return np.flatnonzero(np.isin(id_map, ids)).astype(np.int64)


def _relabel_inverted_lists(index, gone: np.ndarray) -> None:
    """After `gone` labels left an IDMap2-wrapped IVF index, give every remaining vector the label
    its external id now has in the compacted id map: its old label less the removed ones below it."""
    import faiss

    ivf = faiss.extract_index_ivf(index.index)
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(invlists, faiss.ArrayInvertedLists):
        raise ValueError(f"cannot remove from an IVF index whose lists are {type(invlists).__name__}; rebuild it")
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size:
            labels = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)  # a view: written in place
            labels -= np.searchsorted(gone, labels)
