"""The embed stage of indexing: prepared pixels ▸ vectors (the whole picture and its regions)
and the picture's noise level, in model batches. The local job and the Ray model actors share it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .noise import noise_levels
from .reader import ReadItem


@dataclass(frozen=True)
class Embedded:
    """One picture's vectors: the whole image and its regions (in `ReadItem.regions` order)."""

    whole: np.ndarray
    regions: np.ndarray
    noise: float = float("nan")  # σ̂ of the model input (indexer.noise), in grey levels


def embed_pictures(embedder, wholes: Sequence, regions: Sequence[Sequence], batch_size: int) -> list[Embedded]:
    """Embed each picture's model input and its regions' inputs together, in model batches of
    `batch_size`."""
    inputs = list(wholes)
    for crops in regions:
        inputs.extend(crops)
    if not inputs:
        return []
    matrix = np.concatenate([embedder.encode_batch(inputs[i : i + batch_size])
                             for i in range(0, len(inputs), batch_size)])
    noise = noise_levels(wholes)
    found, at = [], len(wholes)
    for i, crops in enumerate(regions):
        found.append(Embedded(matrix[i], matrix[at : at + len(crops)], float(noise[i])))
        at += len(crops)
    return found


def embed_items(embedder, items: Sequence[ReadItem], batch_size: int) -> dict[str, Embedded]:
    """Whole and region vectors of read `items`, by content hash."""
    if not items:
        return {}
    embedded = embed_pictures(embedder, [item.pixels for item in items],
                              [item.region_pixels if item.regions else () for item in items], batch_size)
    return {item.sha256: vectors for item, vectors in zip(items, embedded)}
