"""The collection map's file (`map.npz` beside the index): each picture's place and cluster, and
the clusters. `indexer.collection_map` computes it; the library reads it for a cluster filter."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write

MAP_VERSION = 1


def map_file(index_path: Path) -> Path:
    """Where the map of the library whose index is `index_path` is saved."""
    return index_path.with_name("map.npz")


@dataclass(frozen=True)
class MapCluster:
    id: int
    label: str
    size: int
    representatives: tuple[int, ...]
    x: float
    y: float

    def as_dict(self) -> dict:
        return {"id": self.id, "label": self.label, "size": self.size,
                "representatives": list(self.representatives), "x": round(self.x, 5), "y": round(self.y, 5)}


@dataclass(frozen=True)
class CollectionMap:
    """Each picture's place (`xy` in [0, 1]) and cluster, and the clusters."""

    ids: np.ndarray  # (n,) int64, ascending
    xy: np.ndarray  # (n, 2) float32
    cluster: np.ndarray  # (n,) int32: index into `clusters`
    clusters: tuple[MapCluster, ...]
    semantic: bool  # labels named by the model (else numbered)

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, path: Path) -> None:
        meta = json.dumps({"clusters": [c.as_dict() for c in self.clusters], "semantic": self.semantic})

        def write(fh) -> None:
            buffer = io.BytesIO()
            np.savez(buffer, version=np.array(MAP_VERSION), ids=self.ids, xy=self.xy, cluster=self.cluster,
                     meta=np.frombuffer(meta.encode(), np.uint8))
            fh.write(buffer.getvalue())

        atomic_write(path, write)

    @classmethod
    def load(cls, path: Path) -> "CollectionMap | None":
        try:
            with np.load(path) as data:
                if int(data["version"]) != MAP_VERSION:
                    return None
                meta = json.loads(data["meta"].tobytes().decode())
                clusters = tuple(MapCluster(c["id"], c["label"], c["size"], tuple(c["representatives"]), c["x"], c["y"])
                                 for c in meta["clusters"])
                return cls(data["ids"].astype(np.int64), data["xy"].astype(np.float32),
                           data["cluster"].astype(np.int32), clusters, bool(meta["semantic"]))
        except (OSError, KeyError, ValueError):
            return None

    def members(self, cluster_id: int) -> np.ndarray:
        return self.ids[self.cluster == cluster_id]
