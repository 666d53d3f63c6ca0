"""The collection's graph and map kept up with the index after every job that changes it."""

from __future__ import annotations

from .graph import GraphUpdate
from .library import Library


def follow_index(library: Library, embedder=None) -> GraphUpdate:
    """Bring the kNN graph to the images index and save it."""
    return library.update_graph()
