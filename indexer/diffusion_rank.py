"""Diffusion re-ranking over the collection's kNN graph (`rerank=diffusion`).

The query's direct top results seed a diffusion on the graph truncated to its `truncation`
best direct candidates (Iscen et al., CVPR 2017: solve (I - alpha S) f = y by conjugate
gradient, S the symmetrically normalised affinity of the subgraph, y the seeds' similarities
raised to `seed_power`). The diffusion score and the direct score are fused (`fusion`: the
diffusion's weight, both scaled to [0, 1] over the candidates); results that reach the copy
cut-off keep their places at the top, and so does the direct best result (`keep_first`: a copy
too damaged to reach the cut-off is still most often the best); the rest are ordered by the
fused score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import KnnGraph, affinity_submatrix

RERANK_MODES = ("off", "diffusion")


@dataclass(frozen=True)
class DiffusionParams:
    """The diffusion's knobs. The defaults are those bench/graph_diffusion.py tuned on real
    photographs embedded with untrained weights (docs/graph.md); re-tune with trained weights."""

    alpha: float = 0.5  # how far the diffusion spreads (0: not at all)
    neighbours: int = 5  # each picture's graph neighbours used (at most the graph's k)
    power: float = 5.0  # affinity = similarity ** power
    mutual: bool = False  # keep an edge only when both pictures hold it (else either)
    truncation: int = 200  # direct candidates the diffusion runs on
    seeds: int = 1  # top direct results that seed it
    seed_power: float = 3.0
    fusion: float = 0.9  # weight of the diffusion score against the direct one
    keep_first: bool = True  # the direct best result stays first (a copy below the cut-off, too)
    iterations: int = 30  # conjugate-gradient steps at most
    tolerance: float = 1e-6


DEFAULT_DIFFUSION = DiffusionParams()


def conjugate_gradient(matrix: np.ndarray, b: np.ndarray, iterations: int, tolerance: float) -> np.ndarray:
    """x with matrix @ x = b, for a symmetric positive definite `matrix`."""
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = float(r @ r)
    stop = tolerance * tolerance * max(float(b @ b), 1e-30)
    for _ in range(iterations):
        if rr <= stop:
            break
        ap = matrix @ p
        step = rr / float(p @ ap)
        x += step * p
        r -= step * ap
        new_rr = float(r @ r)
        p = r + (new_rr / rr) * p
        rr = new_rr
    return x


def diffusion_scores(graph: KnnGraph, ids: np.ndarray, direct: np.ndarray,
                     params: DiffusionParams = DEFAULT_DIFFUSION) -> np.ndarray:
    """The diffusion score of each of `ids` (ordered best direct first, `direct` their scores)."""
    w = affinity_submatrix(graph, ids, params.power, params.mutual, params.neighbours).astype(np.float64)
    degree = w.sum(axis=1)
    scale = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-30)), 0.0)
    s = w * scale[:, None] * scale[None, :]
    system = np.eye(len(ids)) - params.alpha * s
    y = np.zeros(len(ids))
    top = min(params.seeds, len(ids))
    y[:top] = np.maximum(direct[:top], 0.0) ** params.seed_power
    return conjugate_gradient(system, y, params.iterations, params.tolerance)


def _unit(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def diffusion_order(graph: KnnGraph, ids: np.ndarray, direct: np.ndarray, pin_score: float | None = None,
                    params: DiffusionParams = DEFAULT_DIFFUSION) -> np.ndarray:
    """The re-ranked order (indices into `ids`, given best direct first) of the candidates:
    those scoring at least `pin_score` (copies) first in their order, the rest by fused score."""
    ids = np.asarray(ids, np.int64)
    direct = np.asarray(direct, np.float64)
    n = len(ids)
    if n < 2:
        return np.arange(n)
    pinned = int(np.sum(direct >= pin_score)) if pin_score is not None else 0
    pinned = min(max(pinned, int(params.keep_first)), n)  # direct is best first: the pinned are a prefix
    if pinned == n:
        return np.arange(n)
    f = diffusion_scores(graph, ids, direct, params)
    fused = (1.0 - params.fusion) * _unit(direct) + params.fusion * _unit(f)
    rest = np.arange(pinned, n)
    rest = rest[np.lexsort((rest, -fused[rest]))]
    return np.concatenate([np.arange(pinned), rest])
