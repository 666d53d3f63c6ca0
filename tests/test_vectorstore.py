"""Tests for indexer/vectorstore.py: index-type choice and the FAISS-backed VectorStore."""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.vectorstore import (
    COMPRESS_LIMIT,
    EXACT_LIMIT,
    Hit,
    IndexSpec,
    VectorStore,
    choose_index_spec,
    gpu_count,
    should_map,
)

DIM = 32


# -- helpers --------------------------------------------------------------------------------


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_unit_vectors(n: int, dim: int, clusters: int, noise: float, seed: int) -> np.ndarray:
    """Gaussian blobs around random centres, L2-normalised (CLIP-like: clumpy, on the sphere)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def hit_ids(rows: list[list[Hit]]) -> list[list[int]]:
    return [[h.id for h in row] for row in rows]


def recall_at_k(got: list[list[Hit]], truth_ids: np.ndarray) -> float:
    k = truth_ids.shape[1]
    return float(np.mean([len({h.id for h in row} & set(t.tolist())) / k for row, t in zip(got, truth_ids)]))


@pytest.fixture
def store_with_ids():
    """A flat store of 200 unit vectors under ids 1000..1199 (not 0..n-1)."""
    vectors = unit_vectors(200)
    ids = np.arange(200, dtype=np.int64) + 1000
    store = VectorStore.create(DIM)
    store.add(ids, vectors)
    return store, ids, vectors


# -- choose_index_spec ---------------------------------------------------------------------------


def test_size_limits_are_the_ones_the_table_assumes():
    assert (EXACT_LIMIT, COMPRESS_LIMIT) == (50_000, 2_000_000)


@pytest.mark.parametrize(
    "count,dim,exact_limit,factory,nprobe",
    [
        (0, 512, None, "Flat", 1),  # empty library
        (1, 512, None, "Flat", 1),
        (1_000, 512, None, "Flat", 1),  # small
        (49_999, 512, None, "Flat", 1),  # just below EXACT_LIMIT
        (50_000, 512, None, "IVF1024,Flat", 64),  # at EXACT_LIMIT: 4·√n ≈ 894 -> 1024 lists
        (50_001, 512, None, "IVF1024,Flat", 64),  # just above
        (1_000_000, 512, None, "IVF4096,Flat", 256),  # 4·√n = 4000 -> 4096
        (1_999_999, 768, None, "IVF4096,Flat", 256),  # just below COMPRESS_LIMIT: still raw vectors
        (2_000_000, 768, None, "IVF4096,SQ8", 256),  # at COMPRESS_LIMIT: scalar quantised
        (10_000_000, 768, None, "IVF16384,SQ8", 1024),  # 4·√n ≈ 12649 -> 16384
        (20_000, 64, 1_000, "IVF512,Flat", 32),  # a lowered exact_limit switches to IVF early
        (1_000, 64, 100, "IVF25,Flat", 8),  # lists capped at count // 39 (39 training points each)
        (999, 64, 1_000, "Flat", 1),
        (50_000_000, 512, None, "OPQ64_512,IVF32768,PQ64", 2048),  # at PQ_LIMIT: 64 bytes a vector
        (60_000_000, 768, None, "OPQ96_768,IVF32768,PQ96", 2048),
        ((1_000_000, 10**9), 512, None, "IVF4096,SQ8", 256),  # raw vectors (2 GB) over a 1 GB budget
        ((1_000_000, 4 * 10**8), 512, None, "OPQ64_512,IVF4096,PQ64", 256),  # even 8-bit codes are over
        ((1_000_000, 10**10), 512, None, "IVF4096,Flat", 256),  # fits: raw vectors
    ],
)
def test_choose_index_spec_table(count, dim, exact_limit, factory, nprobe):
    kwargs = {} if exact_limit is None else {"exact_limit": exact_limit}
    if isinstance(count, tuple):
        count, kwargs["memory_bytes"] = count
    spec = choose_index_spec(count, dim, **kwargs)
    assert spec == IndexSpec(factory, nprobe=nprobe)
    assert spec.exact == (factory == "Flat")
    assert spec.needs_training == (factory != "Flat")


@pytest.mark.parametrize("count,dim", [(-1, 512), (10, 0), (10, -3), (-5, -5)])
def test_choose_index_spec_rejects_bad_sizes(count, dim):
    with pytest.raises(ValueError, match="bad index size"):
        choose_index_spec(count, dim)


@pytest.mark.parametrize("count", [50_000, 80_000, 131_072, 300_000, 3_000_000, 50_000_000])
def test_ivf_lists_are_powers_of_two_with_enough_training_points(count):
    spec = choose_index_spec(count, 512)
    nlist = int(next(part for part in spec.factory.split(",") if part.startswith("IVF"))[3:])
    assert nlist & (nlist - 1) == 0
    assert 39 * nlist <= count
    assert 8 <= spec.nprobe <= nlist


# -- VectorStore basics -----------------------------------------------------------------------------


def test_add_and_search_with_non_contiguous_ids(store_with_ids):
    store, ids, vectors = store_with_ids
    assert len(store) == 200
    assert sorted(store.ids().tolist()) == ids.tolist()
    assert store.ids().dtype == np.int64

    results = store.search(vectors[[0, 57, 199]], k=5)
    assert [row[0].id for row in results] == [1000, 1057, 1199]  # each stored vector finds itself first
    for row in results:
        assert len(row) == 5
        assert all(isinstance(h, Hit) and isinstance(h.id, int) and isinstance(h.score, float) for h in row)
        assert row[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)


def test_scores_are_inner_products_and_flat_search_is_exact(store_with_ids):
    store, ids, vectors = store_with_ids
    queries = unit_vectors(4, seed=99)
    results = store.search(queries, k=10)
    by_id = dict(zip(ids.tolist(), vectors))
    for q, row in zip(queries, results):
        for hit in row:
            assert hit.score == pytest.approx(float(q @ by_id[hit.id]), abs=1e-5)
        expected = ids[np.argsort(-(vectors @ q))[:10]].tolist()
        assert [h.id for h in row] == expected


def test_search_accepts_a_single_vector_and_clips_k(store_with_ids):
    store, _, vectors = store_with_ids
    (row,) = store.search(vectors[3], k=1000)  # 1-D query, k larger than the store
    assert len(row) == 200
    assert row[0].id == 1003
    assert len({h.id for h in row}) == 200
    assert store.search(vectors[:2], k=0) == [[], []]


def test_ids_can_be_large_int64_values():
    big = np.array([2**40, 2**40 + 7, 123_456_789_012], dtype=np.int64)
    vectors = unit_vectors(3)
    store = VectorStore.create(DIM)
    store.add(big, vectors)
    assert [row[0].id for row in store.search(vectors, k=1)] == big.tolist()


def test_remove_returns_count_and_ids_disappear(store_with_ids):
    store, ids, vectors = store_with_ids
    gone = [1003, 1100, 1150]
    assert store.remove(gone + [99_999]) == 3  # an unknown id is not counted
    assert len(store) == 197
    assert not set(gone) & set(store.ids().tolist())
    for row in store.search(vectors[[3, 100, 150]], k=197):
        assert not set(gone) & {h.id for h in row}
    assert store.search(vectors[4], k=1)[0][0].id == 1004  # the others are still found
    assert store.remove([]) == 0
    assert store.remove(iter({1004, 1005})) == 2  # any iterable of ids
    assert store.remove(gone) == 0  # removing again removes nothing


def test_search_on_an_empty_store_returns_empty_lists():
    store = VectorStore.create(DIM)
    assert len(store) == 0
    assert store.search(unit_vectors(3), k=10) == [[], [], []]
    assert store.ids().tolist() == []


def test_adding_nothing_is_a_no_op():
    store = VectorStore.create(DIM)
    store.add(np.array([], dtype=np.int64), np.zeros((0, DIM), dtype=np.float32))
    assert len(store) == 0


def test_dimension_mismatch_raises_value_error(store_with_ids):
    store, _, _ = store_with_ids
    with pytest.raises(ValueError, match="dimension"):
        store.add(np.array([5], dtype=np.int64), unit_vectors(1, dim=DIM + 1))
    with pytest.raises(ValueError, match="dimension"):
        store.search(unit_vectors(2, dim=DIM - 1), k=3)
    with pytest.raises(ValueError, match="dimension"):
        store.search(np.zeros((2, 2, DIM), dtype=np.float32), k=3)
    assert len(store) == 200  # nothing was added


def test_approximate_index_needs_training_vectors():
    with pytest.raises(ValueError, match="needs training"):
        VectorStore.create(DIM, IndexSpec("IVF16,Flat", nprobe=4))
    with pytest.raises(ValueError, match="needs training"):
        VectorStore.create(DIM, IndexSpec("IVF16,Flat", nprobe=4), training=np.zeros((0, DIM), np.float32))


def test_describe_reports_type_probes_count_dim_and_device(store_with_ids):
    store, _, _ = store_with_ids
    assert store.describe() == {
        "type": "Flat",
        "nprobe": 1,
        "vectors": 200,
        "dim": DIM,
        "device": "gpu" if gpu_count() > 0 else "cpu",
        "mapped": False,
    }
    assert store.describe()["device"] == store.device


# -- save / load -------------------------------------------------------------------------------------


def test_save_load_round_trip_keeps_ids_spec_and_results(tmp_path, store_with_ids):
    store, ids, vectors = store_with_ids
    store.remove([1010])
    path = tmp_path / "nested" / "folder" / "index.faiss"  # parents are created
    store.save(path)
    loaded = VectorStore.load(path)
    assert loaded.spec == store.spec == IndexSpec("Flat")
    assert loaded.dim == DIM
    assert sorted(loaded.ids().tolist()) == sorted(store.ids().tolist())
    assert 1010 not in loaded.ids().tolist()
    queries = unit_vectors(5, seed=7)
    assert hit_ids(loaded.search(queries, 10)) == hit_ids(store.search(queries, 10))
    assert loaded.describe() == store.describe()
    assert os.listdir(path.parent) == ["index.faiss"]  # no temporary file left behind


def test_save_replaces_an_existing_file(tmp_path, store_with_ids):
    store, _, _ = store_with_ids
    path = tmp_path / "index.faiss"
    VectorStore.create(DIM).save(path)
    assert len(VectorStore.load(path)) == 0
    store.save(path)
    assert len(VectorStore.load(path)) == 200


def test_failed_save_leaves_previous_file_untouched_and_no_temp_file(tmp_path, store_with_ids, monkeypatch):
    store, _, _ = store_with_ids
    path = tmp_path / "index.faiss"
    store.save(path)
    before = path.read_bytes()

    written = []

    def write_garbage_then_fail(index, filename):
        Path(filename).write_bytes(b"half a file")
        written.append(filename)
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", write_garbage_then_fail)
    store.remove([1000, 1001])
    with pytest.raises(RuntimeError, match="disk full"):
        store.save(path)

    assert written and Path(written[0]) != path  # the write went to a temporary file...
    assert Path(written[0]).parent == path.parent  # ...in the same folder (so the rename is atomic)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["index.faiss"]
    monkeypatch.undo()
    assert len(VectorStore.load(path)) == 200  # the old index still loads


# -- approximate (IVF) indexes ------------------------------------------------------------------------

N, D, CLUSTERS = 20_000, 64, 200


@pytest.fixture(scope="module")
def clustered():
    """20k clustered unit vectors (ids 1000+i), 200 held-out queries and exact top-10 ids."""
    data = clustered_unit_vectors(N + 200, D, CLUSTERS, noise=1.0, seed=1234)
    vectors, queries = data[:N], data[N:]
    ids = np.arange(N, dtype=np.int64) + 1000
    reference = faiss.IndexFlatIP(D)
    reference.add(vectors)
    _, truth = reference.search(queries, 10)
    return ids, vectors, queries, ids[truth]


@pytest.fixture(scope="module")
def ivf_store(clustered):
    ids, vectors, _, _ = clustered
    spec = choose_index_spec(N, D, exact_limit=1_000)
    assert spec.factory.startswith("IVF") and spec.factory.endswith(",Flat")
    return VectorStore.build(ids, vectors, spec)


def test_ivf_recall_at_10_against_exact_search(clustered, ivf_store):
    _, _, queries, truth = clustered
    assert len(ivf_store) == N
    assert ivf_store.describe()["type"] == ivf_store.spec.factory
    assert ivf_store.describe()["nprobe"] == ivf_store.spec.nprobe > 1
    assert recall_at_k(ivf_store.search(queries, 10), truth) >= 0.9


def test_ivf_nprobe_is_applied(clustered, ivf_store):
    """Searching one list only is measurably worse than the spec's nprobe: the setting is live."""
    ids, vectors, queries, truth = clustered
    one_probe = VectorStore.build(ids, vectors, IndexSpec(ivf_store.spec.factory, nprobe=1), target_recall=None)
    assert recall_at_k(one_probe.search(queries, 10), truth) < recall_at_k(ivf_store.search(queries, 10), truth)


def test_ivf_sq8_build_works_with_good_recall(clustered):
    ids, vectors, queries, truth = clustered
    spec = IndexSpec("IVF512,SQ8", nprobe=32)
    store = VectorStore.build(ids, vectors, spec)
    assert len(store) == N
    assert store.spec.factory == spec.factory and store.spec.nprobe == store.tuned.nprobe
    assert recall_at_k(store.search(queries, 10), truth) >= 0.9
    assert store.search(vectors[42], k=1)[0][0].id == 1042


def test_ivf_remove_and_save_load_round_trip(tmp_path, clustered, ivf_store):
    ids, vectors, queries, _ = clustered
    path = tmp_path / "ivf.faiss"
    ivf_store.save(path)
    loaded = VectorStore.load(path)
    assert loaded.spec == ivf_store.spec  # factory and nprobe survive the file
    assert len(loaded) == N
    assert hit_ids(loaded.search(queries, 10)) == hit_ids(ivf_store.search(queries, 10))

    assert loaded.remove([1000, 1001, 1002]) == 3  # removing from the loaded copy only
    assert len(loaded) == N - 3 and len(ivf_store) == N
    assert loaded.search(vectors[0], k=1)[0][0].id != 1000


def test_build_tunes_nprobe_to_the_fewest_probes_reaching_the_target(clustered):
    from indexer.vectorstore import tune_nprobe

    ids, vectors, queries, truth = clustered
    spec = IndexSpec("IVF256,Flat", nprobe=1)
    store = VectorStore.build(ids, vectors, spec, target_recall=0.95)
    tuned = store.tuned
    assert tuned.recall >= 0.95 and store.spec.nprobe == tuned.nprobe > 1
    assert recall_at_k(store.search(queries, 10), truth) >= 0.9  # held-out queries agree
    sample = vectors[:256]
    fewer = tune_nprobe(store._index, vectors, sample, target=1.1)  # unreachable: walks every step
    assert fewer.nprobe == 256
    store.set_nprobe(tuned.nprobe // 2)
    assert tune_nprobe(store._index, vectors, sample, target=0.0).nprobe == 1


def test_opq_pq_index_builds_saves_and_loads(tmp_path, clustered):
    data = clustered_unit_vectors(6_200, 16, 50, noise=0.5, seed=7)
    vectors, queries = data[:6_000], data[6_000:]
    ids = np.arange(6_000, dtype=np.int64) + 1000
    truth = ids[faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]]
    spec = IndexSpec("OPQ8_16,IVF32,PQ8", nprobe=4)
    store = VectorStore.build(ids, vectors, spec, target_recall=0.5)
    assert store.tuned.recall >= 0.5
    assert recall_at_k(store.search(queries, 10), truth) >= 0.4  # 8 bytes a vector: coarse, but found
    store.save(tmp_path / "pq.faiss")
    loaded = VectorStore.load(tmp_path / "pq.faiss")
    assert loaded.spec == store.spec and loaded.describe()["type"] == "OPQ8_16,IVF32,PQ8"
    assert hit_ids(loaded.search(queries[:5], 10)) == hit_ids(store.search(queries[:5], 10))
    assert loaded.remove([1000]) == 1


def test_sq8_spec_survives_save_load(tmp_path):
    vectors = unit_vectors(2_000, dim=16, seed=3)
    spec = IndexSpec("IVF16,SQ8", nprobe=8)
    store = VectorStore.build(np.arange(2_000, dtype=np.int64) + 5, vectors, spec, target_recall=None)
    store.save(tmp_path / "sq8.faiss")
    loaded = VectorStore.load(tmp_path / "sq8.faiss")
    assert loaded.spec == spec
    assert loaded.describe()["type"] == "IVF16,SQ8"
    assert loaded.search(vectors[10], k=1)[0][0].id == 15


# -- memory-mapped index files -----------------------------------------------------------------------

GIB = 1 << 30


@pytest.mark.parametrize("policy, file_bytes, memory, mapped", [
    ("on", 10, 16 * GIB, True),
    ("off", 100 * GIB, 16 * GIB, False),
    ("auto", 1 * GIB, 16 * GIB, False),
    ("auto", 4 * GIB, 16 * GIB, False),  # exactly a quarter: still read
    ("auto", 4 * GIB + 1, 16 * GIB, True),
    ("auto", 100 * GIB, 16 * GIB, True),  # larger than RAM: only a mapping can serve it
    ("auto", 100 * GIB, None, False),  # unknown RAM: read, as before
])
def test_should_map(policy, file_bytes, memory, mapped):
    assert should_map(policy, file_bytes, memory) is mapped


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_mapped_index_searches_like_the_loaded_one(tmp_path, kind, store_with_ids, clustered, ivf_store):
    if kind == "flat":
        store, queries = store_with_ids[0], unit_vectors(20, seed=9)
    else:
        store, queries = ivf_store, clustered[2]
    path = tmp_path / "index.faiss"
    store.save(path)
    loaded, mapped = VectorStore.load(path), VectorStore.load(path, mapped=True)
    assert mapped.mapped and not loaded.mapped and mapped.describe()["mapped"] is True
    assert mapped.spec == loaded.spec and len(mapped) == len(loaded)
    assert sorted(mapped.ids().tolist()) == sorted(loaded.ids().tolist())
    assert mapped.search(queries, 10) == loaded.search(queries, 10)


def test_first_write_copies_a_mapped_index_and_leaves_its_file_alone(tmp_path, store_with_ids):
    store, ids, vectors = store_with_ids
    path = tmp_path / "index.faiss"
    store.save(path)
    before = path.read_bytes()
    mapped = VectorStore.load(path, mapped=True)
    replacement = VectorStore.create(DIM)
    replacement.add(np.array([1], np.int64), unit_vectors(1, seed=5))
    replacement.save(path)  # the file is replaced after it was mapped, as a save by another process does

    new = unit_vectors(3, seed=6)
    mapped.add(np.array([9001, 9002, 9003], np.int64), new)  # FAISS would abort on the mapping itself
    assert not mapped.mapped
    assert len(mapped) == len(ids) + 3  # the mapped index (not the replacement) plus the adds
    assert mapped.search(new[0], 1)[0][0].id == 9001
    assert mapped.remove([int(ids[0])]) == 1
    assert VectorStore.load(path).ids().tolist() == [1]  # the file on disk is untouched by the writes
    assert before != path.read_bytes()


# -- IVF indexes merged from shards on disk ------------------------------------------------------------


def test_shards_merged_on_disk_search_like_one_index_built_in_memory(tmp_path, clustered):
    """Three workers' shards merged into one on-disk index give the same results as adding
    every vector to the same trained index in memory, and the merged index refuses writes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from indexer.ondisk import build_shard, merge_shards, open_merged, write_trained

    ids, vectors, queries, truth = clustered
    spec = IndexSpec(choose_index_spec(N, D, exact_limit=1_000).factory, nprobe=8)
    trained = write_trained(spec, vectors[::4], tmp_path / "trained.faiss")
    parts = np.array_split(np.arange(N), 3)
    # As distributed workers would, each on its part (spawned: OpenMP does not survive fork).
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as workers:
        counts = list(workers.map(build_shard, [trained] * 3, [ids[p] for p in parts], [vectors[p] for p in parts],
                                  [tmp_path / f"shard-{i}.faiss" for i in range(3)]))
    assert counts == [len(p) for p in parts]
    merged = merge_shards(trained, [tmp_path / f"shard-{i}.faiss" for i in range(3)], tmp_path / "merged.faiss")
    assert merged.vectors == N and merged.data_path.stat().st_size >= N * D * 4

    store = open_merged(merged.index_path)
    reference = VectorStore.load(trained)  # the same trained index, filled in memory
    reference = VectorStore(faiss.clone_index(reference._index.index if hasattr(reference._index, "index")
                                              else reference._index), reference.spec, D)
    reference._index.add_with_ids(vectors, ids)
    assert store.spec == IndexSpec(spec.factory, nprobe=8) and len(store) == N
    assert sorted(store.ids().tolist()) == ids.tolist()
    assert store.search(queries, 10) == reference.search(queries, 10)
    found = store.search(queries, 10)
    recall = np.mean([len({h.id for h in row} & set(t.tolist())) / 10 for row, t in zip(found, truth)])
    assert recall > 0.9
    with pytest.raises(ValueError, match="read-only"):
        store.add(np.array([1], np.int64), vectors[:1])
    with pytest.raises(ValueError, match="IVF"):
        write_trained(IndexSpec("Flat"), vectors[:100], tmp_path / "flat.faiss")


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,SQ8"])
def test_removing_from_an_ivf_index_keeps_every_other_id_right(factory):
    """IndexIDMap2 compacts its id map on removal while IVF lists keep their labels: without
    relabelling, every vector above a removed one came back under another picture's id."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((1200, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1000, 2200)
    store = VectorStore.build(ids, vectors, IndexSpec(factory, nprobe=16), target_recall=None)
    gone = [1000, 1001, 1500, 2199]
    assert store.remove(gone + [99999]) == len(gone)
    store.add(np.array([5000, 5001]), vectors[[2, 3]] * 0.999)
    kept = [i for i in range(len(ids)) if ids[i] not in gone]
    hits = store.search(vectors[kept], 1)
    assert [h[0].id for h in hits] == [int(ids[i]) for i in kept]
    assert sorted(store.ids().tolist()) == sorted(set(ids.tolist()) - set(gone) | {5000, 5001})
    assert {h.id for h in store.search(vectors[[2]], 2)[0]} == {1002, 5000}
