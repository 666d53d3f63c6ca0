"""The collection's k-nearest-neighbour graph over whole-picture vectors.

Each picture keeps its `k` nearest other pictures and their cosine similarities (FAISS: exact
below `EXACT_GRAPH_LIMIT` pictures, an IVF index above). The graph is a cache, like the FAISS
files: it lives in `graph.npz` beside the images index, is reconciled with the index's ids by
`GraphMirror.update` after every job that adds or removes pictures (removals refill the rows
that lost a neighbour exactly; additions search the new pictures and offer each of them to its
neighbours' rows, see `update_graph`), and is rebuilt when more than `REBUILD_SHARE` of it
changed. Affinities (`affinity_rows`) are the similarities raised to a power, kept mutual or
symmetrised; `indexer.diffusion_rank` diffuses over them.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .atomic import atomic_write

log = logging.getLogger(__name__)

GRAPH_K = 30  # neighbours kept per picture
EXACT_GRAPH_LIMIT = 50_000  # up to this many pictures the kNN is exact (IndexFlatIP)
IVF_NPROBE = 24  # lists visited per query above it (recall measured in bench/graph_diffusion.py)
ADD_FANOUT = 3  # an added picture is offered to the rows of its ADD_FANOUT * k nearest pictures
REBUILD_SHARE = 0.2  # more than this share added or removed at once: rebuild instead
GRAPH_VERSION = 1
_BATCH = 4096  # query rows per FAISS call

Searcher = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (queries, k) -> (sims, ids)


@dataclass(frozen=True)
class KnnGraph:
    """`ids` (sorted) and, per picture, its neighbours' ids (-1: none) and similarities, best first."""

    ids: np.ndarray  # (n,) int64, ascending
    neighbours: np.ndarray  # (n, k) int64
    sims: np.ndarray  # (n, k) float32
    k: int

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, k: int = GRAPH_K) -> "KnnGraph":
        return cls(np.zeros(0, np.int64), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32), k)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Each id's row (-1: not in the graph)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.ids):
            return np.full(len(ids), -1, np.int64)
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, len(self.ids) - 1)
        return np.where(self.ids[pos] == ids, pos, -1)

    def edges(self) -> int:
        return int((self.neighbours >= 0).sum())

    def save(self, path: Path) -> None:
        def write(fh) -> None:
            buffer = io.BytesIO()  # np.savez seeks; the atomic file is written in one go
            np.savez(buffer, version=np.array(GRAPH_VERSION), k=np.array(self.k), ids=self.ids,
                     neighbours=self.neighbours, sims=self.sims)
            fh.write(buffer.getvalue())

        atomic_write(path, write)

    @classmethod
    def load(cls, path: Path) -> "KnnGraph | None":
        """The graph saved at `path`, or None (absent, unreadable or of another version)."""
        try:
            with np.load(path) as data:
                if int(data["version"]) != GRAPH_VERSION:
                    return None
                return cls(data["ids"].astype(np.int64), data["neighbours"].astype(np.int64),
                           data["sims"].astype(np.float32), int(data["k"]))
        except (OSError, KeyError, ValueError):
            return None


# -- kNN with FAISS ------------------------------------------------------------------------------
def flat_searcher(vectors: np.ndarray, ids: np.ndarray) -> Searcher:
    """Exact inner-product search over `vectors` (rows normalised), answering ids."""
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))
    return lambda queries, k: index.search(np.ascontiguousarray(queries, np.float32), k)


def ivf_searcher(vectors: np.ndarray, ids: np.ndarray, nprobe: int = IVF_NPROBE, seed: int = 0) -> Searcher:
    """Approximate inner-product search (IVF-Flat, about 4·sqrt(n) lists) over `vectors`."""
    import faiss

    n, dim = vectors.shape
    nlist = max(1, int(4 * np.sqrt(n)))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
    index.train(np.ascontiguousarray(sample, np.float32))
    index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))
    index.nprobe = nprobe
    return lambda queries, k: index.search(np.ascontiguousarray(queries, np.float32), k)


def searcher_for(vectors: np.ndarray, ids: np.ndarray, exact_limit: int = EXACT_GRAPH_LIMIT) -> Searcher:
    return flat_searcher(vectors, ids) if len(ids) <= exact_limit else ivf_searcher(vectors, ids)


def neighbour_rows(searcher: Searcher, query_ids: np.ndarray, query_vectors: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query picture's `k` nearest other pictures (itself left out): (ids, sims), -1 padded."""
    n = len(query_ids)
    out_ids = np.full((n, k), -1, np.int64)
    out_sims = np.zeros((n, k), np.float32)
    for start in range(0, n, _BATCH):
        stop = min(start + _BATCH, n)
        sims, found = searcher(query_vectors[start:stop], k + 1)
        if found.shape[1] < k + 1:  # a collection smaller than k + 1
            pad = k + 1 - found.shape[1]
            found = np.pad(found, ((0, 0), (0, pad)), constant_values=-1)
            sims = np.pad(sims, ((0, 0), (0, pad)))
        own = found == query_ids[start:stop, None]
        # Drop each row's own id (or, when it was not returned, its last hit): k remain.
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
        keep = np.ones_like(own)
        keep[np.arange(stop - start), drop] = False
        out_ids[start:stop] = found[keep].reshape(stop - start, k)
        out_sims[start:stop] = sims[keep].reshape(stop - start, k)
    out_sims[out_ids < 0] = 0.0
    return out_ids, out_sims


def build_graph(ids: np.ndarray, vectors: np.ndarray, k: int = GRAPH_K,
                searcher: Searcher | None = None, exact_limit: int = EXACT_GRAPH_LIMIT) -> KnnGraph:
    """The kNN graph of `vectors` (normalised rows) under `ids`."""
    ids = np.asarray(ids, np.int64)
    order = np.argsort(ids)
    ids, vectors = ids[order], np.ascontiguousarray(vectors[order], np.float32)
    if not len(ids):
        return KnnGraph.empty(k)
    searcher = searcher or searcher_for(vectors, ids, exact_limit)
    neighbours, sims = neighbour_rows(searcher, ids, vectors, k)
    return KnnGraph(ids, neighbours, sims, k)


# -- incremental updates -----------------------------------------------------------------------
def update_graph(graph: KnnGraph, searcher: Searcher, vectors_of: Callable[[np.ndarray], np.ndarray],
                 add_ids: np.ndarray, add_vectors: np.ndarray, remove_ids: Iterable[int]) -> KnnGraph:
    """`graph` after removing `remove_ids` and adding `add_ids` (their vectors `add_vectors`);
    `searcher` searches the collection as it now is and `vectors_of(ids)` gives stored vectors.

    Removal is exact: every row that lost a neighbour is searched again. Addition searches each
    new picture's own row exactly (as exact as `searcher`) and offers the new picture to the rows
    of its ADD_FANOUT·k nearest pictures, where it replaces the worst neighbour it beats; a row
    whose picture is not among those misses it (the bench and tests measure how rarely)."""
    k = graph.k
    remove = np.unique(np.asarray(list(remove_ids), np.int64))
    add_ids = np.asarray(add_ids, np.int64)
    keep = ~np.isin(graph.ids, remove) & ~np.isin(graph.ids, add_ids)  # a re-added id is replaced
    ids, neighbours, sims = graph.ids[keep], graph.neighbours[keep], graph.sims[keep]
    gone = np.concatenate([remove, add_ids])
    stale = np.isin(neighbours, gone).any(axis=1)
    if stale.any():
        rows = np.flatnonzero(stale)
        neighbours = neighbours.copy()
        sims = sims.copy()
        neighbours[rows], sims[rows] = neighbour_rows(searcher, ids[rows], vectors_of(ids[rows]), k)
    if len(add_ids):
        new_nb, new_sims = neighbour_rows(searcher, add_ids, np.asarray(add_vectors, np.float32), k)
        wide, wide_sims = neighbour_rows(searcher, add_ids, np.asarray(add_vectors, np.float32),
                                         min(ADD_FANOUT * k, max(k, len(ids) + len(add_ids) - 1)))
        all_ids = np.concatenate([ids, add_ids])
        order = np.argsort(all_ids)
        neighbours = np.concatenate([neighbours, new_nb])[order]
        sims = np.concatenate([sims, new_sims])[order]
        ids = all_ids[order]
        merged = KnnGraph(ids, neighbours, sims, k)
        _offer(merged, add_ids, wide, wide_sims)
        return merged
    return KnnGraph(ids, neighbours, sims, k)


def _offer(graph: KnnGraph, add_ids: np.ndarray, wide: np.ndarray, wide_sims: np.ndarray) -> None:
    """Insert each added picture into the rows of the pictures it found, where it beats their
    worst neighbour (in place; rows stay sorted best first)."""
    source = np.repeat(add_ids, wide.shape[1])
    target, sim = wide.ravel(), wide_sims.ravel()
    ok = target >= 0
    source, target, sim = source[ok], target[ok], sim[ok]
    rows = graph.positions(target)
    ok = rows >= 0
    for row, new_id, s in zip(rows[ok], source[ok], sim[ok]):
        nb, ss = graph.neighbours[row], graph.sims[row]
        if new_id in nb:
            continue
        worst = graph.k - 1
        if nb[worst] >= 0 and ss[worst] >= s:
            continue
        at = int(np.searchsorted(-ss[: worst + 1], -s, side="right"))
        nb[at + 1 :] = nb[at:-1].copy()
        ss[at + 1 :] = ss[at:-1].copy()
        nb[at], ss[at] = new_id, s


# -- affinities -------------------------------------------------------------------------------
def affinity_submatrix(graph: KnnGraph, ids: np.ndarray, power: float, mutual: bool,
                       neighbours: int | None = None) -> np.ndarray:
    """The dense affinity matrix among `ids` (all in the graph or not: absent ones have no
    edges): similarity^power on the edges to each row's first `neighbours` (default all k),
    mutual (both rows hold the edge: the smaller weight) or symmetrised (either: the larger)."""
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    dense = np.zeros((n, n), np.float32)
    rows = graph.positions(ids)
    present = np.flatnonzero(rows >= 0)
    if not len(present):
        return dense
    width = graph.k if neighbours is None else max(1, min(neighbours, graph.k))
    nb = graph.neighbours[rows[present], :width]
    ws = np.maximum(graph.sims[rows[present], :width], 0.0) ** power
    order = np.argsort(ids)
    sorted_ids = ids[order]
    at = np.searchsorted(sorted_ids, nb.ravel())
    at = np.minimum(at, n - 1)
    inside = sorted_ids[at] == nb.ravel()
    cols = order[at[inside]]
    src = np.repeat(present, nb.shape[1])[inside]
    dense[src, cols] = ws.ravel()[inside]
    np.fill_diagonal(dense, 0.0)
    return np.minimum(dense, dense.T) if mutual else np.maximum(dense, dense.T)


def sparse_affinity(graph: KnnGraph, power: float, mutual: bool):
    """The whole graph's affinity matrix (scipy CSR, rows in `graph.ids` order)."""
    from scipy import sparse

    n = len(graph)
    rows = np.repeat(np.arange(n), graph.k)
    cols = graph.positions(graph.neighbours.ravel())
    weights = np.maximum(graph.sims.ravel(), 0.0) ** power
    ok = (cols >= 0) & (cols != rows)
    a = sparse.csr_matrix((weights[ok], (rows[ok], cols[ok])), shape=(n, n))
    return a.minimum(a.T) if mutual else a.maximum(a.T)


# -- the file beside the index ----------------------------------------------------------------
@dataclass(frozen=True)
class GraphUpdate:
    """What `GraphMirror.update` did."""

    mode: str  # "unchanged", "incremental" or "rebuilt"
    added: int
    removed: int
    pictures: int
    seconds: float


class GraphMirror:
    """The graph file at `path` mirroring the ids of the images index (loaded on first use)."""

    def __init__(self, path: Path, k: int = GRAPH_K):
        self.path = path
        self.k = k
        self._graph: KnnGraph | None = None
        self._seen: tuple | None = None

    def _stat(self) -> tuple | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    @property
    def graph(self) -> KnnGraph | None:
        """The saved graph (None: never built), reloaded when another process saved a newer one."""
        stat = self._stat()
        if self._graph is None or stat != self._seen:
            self._seen = stat
            self._graph = KnnGraph.load(self.path) if stat is not None else None
        return self._graph

    def update(self, index_ids: np.ndarray, searcher: Callable[[], Searcher],
               vectors_of: Callable[[np.ndarray], np.ndarray]) -> GraphUpdate:
        """Bring the graph to the index's `index_ids` and save it: incrementally when a small
        share changed, else rebuilt from `vectors_of(all ids)`. `searcher()` searches the index."""
        t0 = time.perf_counter()
        index_ids = np.unique(np.asarray(index_ids, np.int64))
        current = self.graph
        if current is not None and current.k != self.k:
            current = None
        old = current.ids if current is not None else np.zeros(0, np.int64)
        added = np.setdiff1d(index_ids, old, assume_unique=True)
        removed = np.setdiff1d(old, index_ids, assume_unique=True)
        if current is not None and not len(added) and not len(removed):
            return GraphUpdate("unchanged", 0, 0, len(current), time.perf_counter() - t0)
        small = current is not None and len(current) > 0 and \
            len(added) + len(removed) <= REBUILD_SHARE * max(len(current), len(index_ids))
        if small:
            graph = update_graph(current, searcher(), vectors_of, added, vectors_of(added), removed)
            mode = "incremental"
        else:
            graph = build_graph(index_ids, vectors_of(index_ids), self.k, searcher() if len(index_ids) else None)
            mode = "rebuilt"
        graph.save(self.path)
        self._graph, self._seen = graph, self._stat()
        took = time.perf_counter() - t0
        log.info("graph %s: +%d -%d, %d pictures in %.2f s", mode, len(added), len(removed), len(graph), took)
        return GraphUpdate(mode, len(added), len(removed), len(graph), took)

