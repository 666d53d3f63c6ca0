"""IVF indexes assembled from shards, with their inverted lists in one file on disk.

For collections whose vectors do not fit one machine's memory:

1. `write_trained` trains the index type on a sample and saves it empty;
2. workers (processes, Ray tasks, machines with a shared folder) each run `build_shard` on
   their part of the vectors: a copy of the trained index plus their vectors, saved;
3. `merge_shards` joins the shards' inverted lists into one `.ivfdata` file (FAISS
   `OnDiskInvertedLists`, via `faiss.contrib.ondisk.merge_ondisk`), reading the shards
   memory-mapped, so no step holds more than one shard's vectors in memory;
4. `open_merged` opens the result for searching: the lists stay in the file and the page cache.

Ids live in the inverted lists (no id map in memory). The merged index is read-only: adding
to it would grow the list file in place, which a crash could tear; rebuild it instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_path
from .vectorstore import IndexSpec, VectorStore, _as_matrix, _set_nprobe

DATA_SUFFIX = ".ivfdata"


@dataclass(frozen=True)
class MergedIndex:
    index_path: Path
    data_path: Path
    vectors: int


def write_trained(spec: IndexSpec, training: np.ndarray, path: Path) -> Path:
    """Train `spec` (an IVF type) on `training` vectors and save the empty index."""
    import faiss

    dim = training.shape[1]
    index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if faiss.try_extract_index_ivf(index) is None:
        raise ValueError(f"shards need an IVF index type, not {spec.factory}")
    index.train(_as_matrix(training, dim))
    _set_nprobe(index, spec.nprobe)
    _write(index, path)
    return path


def build_shard(trained_path: Path, ids: np.ndarray, vectors: np.ndarray, shard_path: Path) -> int:
    """A worker's part: the trained index plus `vectors` under `ids`, saved; returns the count.
    A plain function of files and arrays, so any worker (a process, a Ray task) can run it."""
    import faiss

    index = faiss.read_index(str(trained_path))
    index.add_with_ids(_as_matrix(vectors, index.d), np.ascontiguousarray(ids, dtype=np.int64))
    _write(index, shard_path)
    return int(index.ntotal)


def merge_shards(trained_path: Path, shard_paths: Sequence[Path], index_path: Path) -> MergedIndex:
    """Merge the shards' lists into `index_path` + its `.ivfdata` file (replacing both)."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    data_path = index_path.with_suffix(DATA_SUFFIX)
    index = faiss.read_index(str(trained_path))
    if index.ntotal:
        raise ValueError(f"{trained_path} is not an empty trained index")
    # The list file is renamed into place first, then the index that names it: the final name
    # (the same-folder flag on opening resolves it next to the index).
    with atomic_path(data_path) as tmp_data:
        merge_ondisk(index, [str(p) for p in shard_paths], str(tmp_data))
    lists = faiss.extract_index_ivf(index).invlists
    faiss.downcast_InvertedLists(lists).filename = str(data_path)
    _write(index, index_path)
    return MergedIndex(index_path, data_path, int(index.ntotal))


def open_merged(index_path: Path) -> VectorStore:
    """A read-only store searching the merged index, its lists mapped from the `.ivfdata` file."""
    import faiss

    from .vectorstore import _factory_of, _get_nprobe

    index = faiss.read_index(str(index_path), faiss.IO_FLAG_ONDISK_SAME_DIR)  # lists stay in the file
    store = VectorStore(index, IndexSpec(_factory_of(index), nprobe=_get_nprobe(index)), index.d)
    store.read_only = f"{Path(index_path).name} is merged from shards on disk and is read-only; rebuild it to change it"
    return store


def _write(index, path: Path) -> None:
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
