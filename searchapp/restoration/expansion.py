"""Query expansion: the closed-form embedding-space alternative to a learned reconstruction.

αQE (Radenović, Tolias and Chum, 2018): the query is replaced by the normalised sum of itself
and its top neighbours' vectors, each weighted by its similarity to the query raised to α, so
close neighbours count much more than distant ones.
"""

from __future__ import annotations

import numpy as np


def alpha_query_expansion(query: np.ndarray, neighbours: np.ndarray, scores: np.ndarray,
                          alpha: float = 3.0) -> np.ndarray:
    """The expanded (unit) query from `query` (D,), its neighbours' vectors (n, D) and their
    similarity `scores` (n,) to the query."""
    query = np.asarray(query, np.float32).reshape(-1)
    weights = np.clip(np.asarray(scores, np.float64), 0.0, None) ** alpha
    expanded = query + (weights[:, None] * np.asarray(neighbours, np.float64)).sum(axis=0) if len(weights) else query
    expanded = np.asarray(expanded, np.float32)
    return expanded / max(float(np.linalg.norm(expanded)), 1e-12)
