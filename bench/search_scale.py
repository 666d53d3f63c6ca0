#!/usr/bin/env python
"""Search at scale: the index Loupe builds for 100k and 1M vectors, and how fast and how
exact it is.

    python bench/search_scale.py                        # 100k and 1M CLIP-like synthetic vectors
    python bench/search_scale.py --quick                # 60k (CI)
    python bench/search_scale.py --vectors EMB.npy      # real embeddings (N x D float32), sizes cut from it

For each size it builds the index `indexer.vectorstore.choose_index_spec` picks, the way a
library does (`VectorStore.build`: k-means on a sample, nprobe tuned to reach recall@10 0.95
on a held-out sample), then measures on 1,000 queries that are not in the index: p50/p99
latency of single queries, throughput of one batch of all of them, recall@10 against exact
search (`faiss.knn`), memory per vector (the serialised index) and build time. An exact
`Flat` index is measured beside it as the baseline. The chosen index is then saved and opened
by fresh processes, one reading it into memory and one memory-mapping it (`LOUPE_INDEX_MMAP`);
and the same index type is built a third way, by `--shards` worker processes whose shards are
merged into one list file on disk (`indexer.ondisk`). Each reports its anonymous memory
(RssAnon: what the index costs beyond the page cache, which the kernel can evict and processes
share), single-query p50 with the file in the page cache, and recall@10.

Without `--vectors` the vectors are synthetic and say so: unit vectors in a narrow cone around a
shared direction (as CLIP image embeddings are), grouped into topics of Zipf-distributed
sizes with sub-topics and per-picture noise, so that neighbours are clustered unevenly as in
a photo collection. The script prints the mean cosine of random pairs and of each query's
nearest neighbour so the structure can be compared with real embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QUERIES = 1_000
K = 10


def clip_like_vectors(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """`n` synthetic unit vectors with CLIP-like neighbour structure (see the module docstring)."""
    rng = np.random.default_rng(seed)
    topics = max(16, n // 2_000)
    subtopics = 8
    shared = _unit(rng.standard_normal(dim))
    topic_dirs = _unit(rng.standard_normal((topics, dim)))
    sub_dirs = _unit(topic_dirs[:, None, :] + 0.9 * _unit(rng.standard_normal((topics, subtopics, dim))))
    weights = 1.0 / np.arange(1, topics + 1) ** 0.8  # Zipf-like topic sizes
    weights /= weights.sum()
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        t = rng.choice(topics, size=m, p=weights)
        s = rng.integers(0, subtopics, size=m)
        noise = _unit(rng.standard_normal((m, dim)))
        x = 0.75 * shared + 0.5 * sub_dirs[t, s] + 0.45 * noise
        out[start : start + m] = _unit(x)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def recall_at_k(found: list, truth: np.ndarray) -> float:
    return float(np.mean([len({h.id for h in row} & set(t.tolist())) / truth.shape[1] for row, t in zip(found, truth)]))


def measure(store, queries: np.ndarray, truth: np.ndarray) -> dict:
    for q in queries[:20]:  # warm-up
        store.search(q, K)
    single = []
    results = []
    for q in queries:
        t0 = time.perf_counter()
        results.append(store.search(q, K)[0])
        single.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    store.search(queries, K)
    batch_s = time.perf_counter() - t0
    return {
        "p50_ms": float(np.percentile(single, 50)),
        "p99_ms": float(np.percentile(single, 99)),
        "batch_qps": len(queries) / batch_s,
        "recall": recall_at_k(results, truth),
    }


def serialised_bytes(store) -> int:
    import faiss

    return int(faiss.serialize_index(store._index).size)


# Runs in a fresh process: open an index file (read or mapped), report memory and latency.
OPEN_AND_SEARCH = """
import json, sys, time
import numpy as np
from indexer.ondisk import open_merged
from indexer.vectorstore import VectorStore

def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}

path, queries, mapped = sys.argv[1], np.load(sys.argv[2]), sys.argv[3] == "mapped"
before = rss()
t0 = time.perf_counter()
store = open_merged(path) if sys.argv[3] == "merged" else VectorStore.load(path, mapped=mapped)
open_s = time.perf_counter() - t0
times, found = [], []
for q in queries:
    t0 = time.perf_counter()
    found.append([h.id for h in store.search(q, 10)[0]])
    times.append((time.perf_counter() - t0) * 1000)
after = rss()
np.save(sys.argv[4], np.array(found, dtype=np.int64))
print(json.dumps({"open_s": open_s, "anon": after["RssAnon"] - before["RssAnon"],
                  "file": after["RssFile"] - before["RssFile"], "first_ms": times[0],
                  "p50_ms": float(np.percentile(times[1:], 50))}))
"""


def open_in_fresh_process(path: str, queries_path: str, mode: str, truth: np.ndarray) -> dict:
    found_path = queries_path.replace("queries", "found")
    run = subprocess.run([sys.executable, "-c", OPEN_AND_SEARCH, path, queries_path, mode, found_path],
                         capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"opening the {mode} index failed:\n{run.stderr}")
    out = run.stdout
    measured = json.loads(out.strip().splitlines()[-1])
    found = np.load(found_path)
    measured["recall"] = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found.tolist(), truth.tolist())]))
    return measured


def build_from_shards(store, vectors: np.ndarray, ids: np.ndarray, folder: Path, workers: int) -> tuple[Path, str]:
    """The same index type and nprobe, trained on a sample, filled by `workers` processes
    (one shard each) and merged on disk (`indexer.ondisk`); (index path, timing line)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from indexer.ondisk import build_shard, merge_shards, write_trained
    from indexer.vectorstore import TRAINING_POINTS_PER_LIST, _nlist

    t0 = time.perf_counter()
    sample = np.random.default_rng(0).choice(len(vectors), min(len(vectors), TRAINING_POINTS_PER_LIST
                                                               * _nlist(store.spec)), replace=False)
    trained = write_trained(store.spec, vectors[np.sort(sample)], folder / "trained.faiss")
    t1 = time.perf_counter()
    parts = np.array_split(np.arange(len(vectors)), workers)
    shards = [folder / f"shard-{i}.faiss" for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(build_shard, [trained] * workers, [ids[p] for p in parts], [vectors[p] for p in parts], shards))
    t2 = time.perf_counter()
    merged = merge_shards(trained, shards, folder / "merged.faiss")
    t3 = time.perf_counter()
    for shard in shards:
        shard.unlink()
    return merged.index_path, (f"train {t1 - t0:.1f} s, {workers} shards in parallel {t2 - t1:.1f} s, "
                               f"merge {t3 - t2:.1f} s, list file {merged.data_path.stat().st_size / 2**20:.0f} MiB")


def compare_mapped(store, n: int, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                   shards: int) -> None:
    """Save `store`, then open it read and mapped in fresh processes; with `shards`, also
    build it from shards merged on disk and open that. Prints each."""
    with tempfile.TemporaryDirectory(prefix="loupe-scale-") as folder:
        path, queries_path = os.path.join(folder, "index.faiss"), os.path.join(folder, "queries.npy")
        store.save(Path(path))
        np.save(queries_path, queries)
        size = os.path.getsize(path)
        modes = [("read", path), ("mapped", path)]
        if shards and not store.spec.exact:
            merged, timing = build_from_shards(store, vectors, ids, Path(folder), shards)
            print(f"{'':>9} {'  merged shards':<16}{timing}", flush=True)
            modes.append(("merged", str(merged)))
            size_of = {"merged": os.path.getsize(merged) + os.path.getsize(merged.with_suffix(".ivfdata"))}
        else:
            size_of = {}
        for mode, file in modes:
            size = size_of.get(mode, os.path.getsize(path))
            m = open_in_fresh_process(file, queries_path, mode, truth)
            print(f"{'':>9} {'  file, ' + mode:<16}open {m['open_s']:.2f} s; anonymous memory "
                  f"{m['anon'] / n:.0f} B/vector ({m['anon'] / 2**20:.0f} MiB), file-backed pages "
                  f"{m['file'] / 2**20:.0f} MiB (index file {size / 2**20:.0f} MiB, plus libraries); "
                  f"first query {m['first_ms']:.2f} ms, p50 {m['p50_ms']:.2f} ms, recall@10 {m['recall']:.3f}",
                  flush=True)
            print(f"bench=search_scale_open vectors={n} type={store.spec.factory} mode={mode} "
                  f"open_s={m['open_s']:.3f} anon_bytes={m['anon']} file_bytes={m['file']} index_file_bytes={size} "
                  f"first_ms={m['first_ms']:.3f} p50_ms={m['p50_ms']:.3f} recall_at_10={m['recall']:.4f}", flush=True)


def run_size(n: int, data: np.ndarray, queries: np.ndarray, flat_baseline: bool, shards: int = 4) -> list[str]:
    import faiss

    from indexer.vectorstore import IndexSpec, VectorStore, choose_index_spec

    vectors = data[:n]
    ids = np.arange(1, n + 1, dtype=np.int64)
    t0 = time.perf_counter()
    _, rows = faiss.knn(queries, vectors, K, metric=faiss.METRIC_INNER_PRODUCT)
    truth = ids[rows]
    truth_s = time.perf_counter() - t0
    lines = []
    specs = [choose_index_spec(n, vectors.shape[1])]
    if flat_baseline and specs[0].factory != "Flat":
        specs.append(IndexSpec("Flat"))
    for spec in specs:
        t0 = time.perf_counter()
        store = VectorStore.build(ids, vectors, spec)
        build_s = time.perf_counter() - t0
        m = measure(store, queries, truth)
        size = serialised_bytes(store)
        tuned = f"nprobe {store.spec.nprobe} (tuned: recall {store.tuned.recall:.3f})" if store.tuned else "exact"
        lines.append(
            f"{n:>9,} {store.spec.factory:<16}{tuned:<32}{build_s:>8.1f}{size / n:>9.0f}"
            f"{m['p50_ms']:>8.2f}{m['p99_ms']:>8.2f}{m['batch_qps']:>11.0f}{m['recall']:>8.3f}"
        )
        print(lines[-1], flush=True)
        print(f"bench=search_scale vectors={n} type={store.spec.factory} nprobe={store.spec.nprobe} "
              f"build_s={build_s:.1f} bytes_per_vector={size / n:.0f} p50_ms={m['p50_ms']:.3f} "
              f"p99_ms={m['p99_ms']:.3f} batch_qps={m['batch_qps']:.0f} recall_at_10={m['recall']:.4f} "
              f"exact_truth_s={truth_s:.1f}", flush=True)
        if spec is specs[0]:
            compare_mapped(store, n, vectors, ids, queries, truth, shards)
        del store
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated vector counts")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--vectors", help="a .npy file of real embeddings (rows beyond the largest size are queries)")
    parser.add_argument("--no-flat", action="store_true", help="skip the exact Flat baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="60k vectors (CI)")
    parser.add_argument("--shards", type=int, default=4,
                        help="also build the index from this many shards merged on disk (0: skip)")
    args = parser.parse_args()
    sizes = [60_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    largest = max(sizes)
    t0 = time.perf_counter()
    if args.vectors:
        data = np.load(args.vectors, mmap_mode="r")
        if len(data) < largest + QUERIES:
            parser.error(f"{args.vectors} has {len(data)} rows; need {largest + QUERIES}")
        data = _unit(np.asarray(data[: largest + QUERIES], dtype=np.float32))
        origin = f"real embeddings from {args.vectors}"
    else:
        data = clip_like_vectors(largest + QUERIES, args.dim, args.seed)
        origin = "synthetic CLIP-like vectors (see --help)"
    queries, data = data[-QUERIES:], data[:-QUERIES]
    sample = data[np.random.default_rng(1).choice(len(data), size=min(2_000, len(data)), replace=False)]
    pairs = sample @ sample.T
    np.fill_diagonal(pairs, -1.0)
    nearest = np.max(queries[:200] @ data[: min(len(data), 200_000)].T, axis=1)
    print(f"{origin}: {largest:,} x {data.shape[1]} in {time.perf_counter() - t0:.1f} s; mean cosine of random "
          f"pairs {pairs[pairs > -1].mean():.3f}, of a query's nearest neighbour {nearest.mean():.3f}; "
          f"{os.cpu_count()} cpus, {QUERIES} held-out queries, k={K}")
    print(f"{'vectors':>9} {'index':<16}{'probes':<32}{'build s':>8}{'B/vec':>9}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'batch q/s':>11}{'R@10':>8}")
    for n in sizes:
        run_size(n, data, queries, flat_baseline=not args.no_flat, shards=args.shards)
    return 0


if __name__ == "__main__":
    sys.exit(main())
