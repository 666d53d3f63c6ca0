"""A map of the collection: clusters and a 2-D layout drawn from the kNN graph.

`compute_map`: the graph's spectral embedding (the leading eigenvectors of its normalised
affinity, scipy's `eigsh`), clusters by k-means on that embedding (spectral clustering), the
clusters placed by a small force layout of the cluster graph (how strongly each pair is linked)
and each cluster's pictures laid out around its centre by the first two principal axes of their
spectral coordinates. Each cluster has representatives (the pictures nearest its mean vector)
and a label: with trained weights the best prompts of a small built-in vocabulary against its
centre, with untrained weights a number. Saved as `map.npz` beside the graph (atomically);
`follow_index` keeps the graph and the map up with the index after every job.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .graph import GraphUpdate, KnnGraph, sparse_affinity
from .library import Library
from .map_file import CollectionMap, MapCluster, map_file

log = logging.getLogger(__name__)

SPECTRAL_DIM = 16  # spectral coordinates kept per picture
MAX_CLUSTERS = 64
REPRESENTATIVES = 4
RECOMPUTE_SHARE = 0.02  # above SMALL_MAP pictures, the map is recomputed once this share changed
SMALL_MAP = 20_000  # up to this many pictures, the map follows every change
VOCABULARY = (
    "people", "a portrait", "a crowd", "children", "a dog", "a cat", "birds", "horses", "wild animals", "insects",
    "flowers", "trees", "a forest", "mountains", "a beach", "the sea", "a lake", "a river", "a waterfall", "snow",
    "a desert", "the sky", "clouds", "a sunset", "the night sky", "stars", "the moon", "a city", "buildings",
    "a street", "a house", "an interior", "a kitchen", "food", "drinks", "a car", "a bicycle", "a motorcycle",
    "a train", "an aircraft", "a boat", "a rocket", "space", "machines", "tools", "electronics", "a computer screen",
    "text", "a document", "a diagram", "a drawing", "a painting", "abstract shapes", "patterns", "textures",
    "coins", "a microscope image", "a medical image", "sports", "a concert", "a wedding", "toys", "clothes", "art",
)


# -- computing it --------------------------------------------------------------------------------
def spectral_coordinates(graph: KnnGraph, dim: int = SPECTRAL_DIM, seed: int = 0) -> np.ndarray:
    """Each picture's coordinates along the leading non-trivial eigenvectors of the graph's
    normalised affinity (rows scaled to unit length)."""
    from scipy.sparse import diags
    from scipy.sparse.linalg import eigsh

    n = len(graph)
    w = sparse_affinity(graph, power=1.0, mutual=False)
    degree = np.asarray(w.sum(axis=1)).ravel()
    scale = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    s = diags(scale) @ w @ diags(scale)
    want = min(dim + 1, n - 1)
    if want < 2:
        return np.zeros((n, 2), np.float32)
    if n <= 2000:
        values, vectors = np.linalg.eigh(s.toarray())
        vectors = vectors[:, np.argsort(-values)[:want]]
    else:
        v0 = np.random.default_rng(seed).standard_normal(n)
        values, vectors = eigsh(s, k=want, which="LA", v0=v0, tol=1e-4, maxiter=5000)
        vectors = vectors[:, np.argsort(-values)]
    coords = vectors[:, 1:] * scale[:, None]
    norms = np.linalg.norm(coords, axis=1, keepdims=True)
    return (coords / np.maximum(norms, 1e-12)).astype(np.float32)


def cluster_count(n: int) -> int:
    return int(min(MAX_CLUSTERS, max(1, round(np.sqrt(n / 4)))))


def spectral_clusters(coords: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """k-means (FAISS) on the spectral coordinates: each picture's cluster, biggest cluster 0."""
    import faiss

    n = len(coords)
    if count <= 1 or n <= count:
        return np.zeros(n, np.int32) if count <= 1 else np.arange(n, dtype=np.int32)
    kmeans = faiss.Kmeans(coords.shape[1], count, niter=25, seed=seed, verbose=False,
                          max_points_per_centroid=max(256, n // count + 1))
    kmeans.train(np.ascontiguousarray(coords, np.float32))
    labels = kmeans.index.search(np.ascontiguousarray(coords, np.float32), 1)[1].ravel()
    sizes = np.bincount(labels, minlength=count)
    used = [c for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
    remap = np.full(count, -1, np.int32)
    remap[used] = np.arange(len(used), dtype=np.int32)
    return remap[labels]


def force_layout(weights: np.ndarray, sizes: np.ndarray, seed: int = 0, steps: int = 300) -> np.ndarray:
    """2-D places of a few nodes: linked nodes attract (by `weights`), all repel, big nodes more."""
    c = len(sizes)
    rng = np.random.default_rng(seed)
    pos = rng.standard_normal((c, 2))
    if c == 1:
        return np.zeros((1, 2))
    radius = np.sqrt(sizes / sizes.sum())
    w = weights / max(weights.max(), 1e-12)
    for step in range(steps):
        delta = pos[:, None, :] - pos[None, :, :]
        dist = np.linalg.norm(delta, axis=2) + 1e-9
        room = radius[:, None] + radius[None, :] + 0.05
        repel = (room**2 / dist**2)[:, :, None] * delta / dist[:, :, None]
        attract = -(w * dist)[:, :, None] * delta / dist[:, :, None]
        force = (repel + attract).sum(axis=1) - 0.05 * pos
        pos += force * (0.1 * (1 - step / steps) + 0.005)
    return pos


def lay_out(graph: KnnGraph, coords: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each picture's place in [0, 1]²: its cluster's place plus its own within the cluster."""
    count = int(labels.max()) + 1 if len(labels) else 0
    sizes = np.bincount(labels, minlength=count).astype(np.float64)
    w = sparse_affinity(graph, power=1.0, mutual=False).tocoo()
    between = np.zeros((count, count))
    np.add.at(between, (labels[w.row], labels[w.col]), w.data)
    np.fill_diagonal(between, 0.0)
    centres = force_layout(between, sizes, seed)
    xy = np.zeros((len(labels), 2))
    total = sizes.sum()
    for c in range(count):
        rows = np.flatnonzero(labels == c)
        local = coords[rows] - coords[rows].mean(axis=0)
        if len(rows) > 2:
            _, _, axes = np.linalg.svd(local, full_matrices=False)
            local = local @ axes[:2].T
        else:
            local = np.zeros((len(rows), 2))
        spread = np.abs(local).max() if len(rows) > 1 else 1.0
        local = local / max(spread, 1e-9) * np.sqrt(sizes[c] / total) * 0.9
        xy[rows] = centres[c] + local
    low, high = xy.min(axis=0), xy.max(axis=0)
    return ((xy - low) / np.maximum(high - low, 1e-9)).astype(np.float32)


def cluster_labels(centres: np.ndarray, encode_texts: Callable | None) -> tuple[list[str], bool]:
    """Each cluster's label: its two best prompts (with `encode_texts`), else its number."""
    if encode_texts is None:
        return [f"Cluster {i + 1}" for i in range(len(centres))], False
    prompts = encode_texts([f"a photo of {word}" for word in VOCABULARY])
    prompts = prompts / np.linalg.norm(prompts, axis=1, keepdims=True)
    scores = centres @ prompts.T
    return [", ".join(VOCABULARY[j] for j in np.argsort(-row)[:2]) for row in scores], True


def compute_map(graph: KnnGraph, vectors_of: Callable[[np.ndarray], np.ndarray],
                encode_texts: Callable | None = None, seed: int = 0) -> CollectionMap:
    """The map of the pictures in `graph` (see the module's docstring)."""
    n = len(graph)
    if n == 0:
        return CollectionMap(np.zeros(0, np.int64), np.zeros((0, 2), np.float32), np.zeros(0, np.int32), (), False)
    coords = spectral_coordinates(graph, seed=seed)
    labels = spectral_clusters(coords, cluster_count(n), seed)
    xy = lay_out(graph, coords, labels, seed)
    vectors = vectors_of(graph.ids)
    count = int(labels.max()) + 1
    centres, representatives = [], []
    for c in range(count):
        rows = np.flatnonzero(labels == c)
        centre = vectors[rows].mean(axis=0)
        centre = centre / max(np.linalg.norm(centre), 1e-12)
        centres.append(centre)
        best = rows[np.argsort(-(vectors[rows] @ centre), kind="stable")[:REPRESENTATIVES]]
        representatives.append(tuple(int(i) for i in graph.ids[best]))
    names, semantic = cluster_labels(np.stack(centres), encode_texts)
    clusters = []
    for c in range(count):
        rows = labels == c
        x, y = xy[rows].mean(axis=0)
        clusters.append(MapCluster(c, names[c], int(rows.sum()), representatives[c], float(x), float(y)))
    return CollectionMap(graph.ids.copy(), xy, labels.astype(np.int32), tuple(clusters), semantic)


# -- kept up with the index ------------------------------------------------------------------------
def map_path(library: Library) -> Path:
    return map_file(library.settings.index_path)


def load_map(library: Library) -> CollectionMap | None:
    """The library's saved map (None before one is made), as `Library.collection_map` holds it."""
    return library.collection_map()


def _map_due(old: CollectionMap | None, graph: KnnGraph, can_name: bool) -> bool:
    if old is None:
        return True
    changed = len(np.setxor1d(old.ids, graph.ids))
    if not changed:
        return False
    if not can_name and old.semantic:  # no model to name clusters with (e.g. `loupe remove`): wait
        return changed > RECOMPUTE_SHARE * max(len(graph), 1) and len(graph) > SMALL_MAP
    return len(graph) <= SMALL_MAP or changed > RECOMPUTE_SHARE * len(graph)


def follow_index(library: Library, embedder=None) -> GraphUpdate:
    """Bring the kNN graph to the images index and save it; recompute the map when it is due
    (always up to SMALL_MAP pictures, then once RECOMPUTE_SHARE of them changed). With trained
    weights (`embedder.identity.semantic`), clusters are named by the model."""
    update = library.update_graph()
    graph = library.graph.graph
    semantic = embedder is not None and embedder.identity.semantic is True
    if graph is not None and _map_due(load_map(library), graph, semantic):
        t0 = time.perf_counter()
        found = compute_map(graph, lambda ids: library.stored_vectors_of(np.asarray(ids).tolist()),
                            embedder.encode_texts if semantic else None)
        found.save(map_path(library))
        log.info("map of %d pictures in %d clusters in %.2f s", len(found), len(found.clusters),
                 time.perf_counter() - t0)
    return update


# -- what the API serves ------------------------------------------------------------------------------
DEFAULT_MAP_POINTS = 5000  # points a map response holds unless asked (the UI asks a cluster's on zoom)
MAX_MAP_POINTS = 20_000


def map_body(found: CollectionMap | None, live_ids: np.ndarray, cluster: int | None = None,
             limit: int = DEFAULT_MAP_POINTS) -> dict:
    """The map's JSON: points (of `cluster` when given; at most `limit`, an even sample of them
    with the clusters' representatives first when there are more) and every cluster. Pictures
    no longer in `live_ids` (removed since the map was computed) are left out. KeyError: no
    such cluster."""
    if found is None or not len(found):
        if cluster is not None:
            raise KeyError(cluster)
        return {"points": [], "clusters": [], "total": 0, "truncated": False}
    if cluster is not None and not 0 <= cluster < len(found.clusters):
        raise KeyError(cluster)
    live = np.isin(found.ids, live_ids)
    rows = np.flatnonzero(live & (found.cluster == cluster)) if cluster is not None else np.flatnonzero(live)
    total = len(rows)
    if total > limit:
        wanted = {int(i) for c in found.clusters if cluster is None or c.id == cluster for i in c.representatives}
        first = rows[np.isin(found.ids[rows], list(wanted))][:limit]
        rest = np.setdiff1d(rows, first)
        take = limit - len(first)
        rows = np.sort(np.concatenate([first, rest[np.linspace(0, len(rest) - 1, take).astype(int)] if take else []]))
        rows = rows.astype(np.int64)
    points = [{"id": int(found.ids[r]), "x": round(float(found.xy[r, 0]), 5), "y": round(float(found.xy[r, 1]), 5),
               "cluster": int(found.cluster[r])} for r in rows]
    sizes = np.bincount(found.cluster[live], minlength=len(found.clusters))
    alive = set(found.ids[live].tolist())
    clusters = [{**c.as_dict(), "size": int(sizes[c.id]), "representatives": [i for i in c.representatives if i in alive]}
                for c in found.clusters]
    return {"points": points, "clusters": clusters, "total": total, "truncated": total > len(points),
            "named": found.semantic}
