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
by two fresh processes, one reading it into memory and one memory-mapping it
(`LOUPE_INDEX_MMAP`), which report their anonymous memory (RssAnon: what the index costs
beyond the page cache, which the kernel can evict and processes share) and single-query p50
with the file in the page cache.

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
from indexer.vectorstore import VectorStore

def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}

path, queries, mapped = sys.argv[1], np.load(sys.argv[2]), sys.argv[3] == "mapped"
before = rss()
t0 = time.perf_counter()
store = VectorStore.load(path, mapped=mapped)
open_s = time.perf_counter() - t0
after_open = rss()
times = []
for q in queries:
    t0 = time.perf_counter()
    store.search(q, 10)
    times.append((time.perf_counter() - t0) * 1000)
after = rss()
print(json.dumps({"open_s": open_s, "anon": after["RssAnon"] - before["RssAnon"],
                  "file": after["RssFile"] - before["RssFile"], "first_ms": times[0],
                  "p50_ms": float(np.percentile(times[1:], 50)), "mapped": store.mapped}))
"""


def open_in_fresh_process(path: str, queries_path: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", OPEN_AND_SEARCH, path, queries_path, mode],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare_mapped(store, n: int, queries: np.ndarray) -> None:
    """Save `store`, then open it read and mapped in fresh processes and print both."""
    with tempfile.TemporaryDirectory(prefix="loupe-scale-") as folder:
        path, queries_path = os.path.join(folder, "index.faiss"), os.path.join(folder, "queries.npy")
        store.save(__import__("pathlib").Path(path))
        np.save(queries_path, queries)
        size = os.path.getsize(path)
        for mode in ("read", "mapped"):
            m = open_in_fresh_process(path, queries_path, mode)
            print(f"{'':>9} {'  file, ' + mode:<16}open {m['open_s']:.2f} s; anonymous memory "
                  f"{m['anon'] / n:.0f} B/vector ({m['anon'] / 2**20:.0f} MiB), file-backed pages "
                  f"{m['file'] / 2**20:.0f} MiB (index file {size / 2**20:.0f} MiB, plus libraries); "
                  f"first query {m['first_ms']:.2f} ms, p50 {m['p50_ms']:.2f} ms", flush=True)
            print(f"bench=search_scale_open vectors={n} type={store.spec.factory} mode={mode} "
                  f"open_s={m['open_s']:.3f} anon_bytes={m['anon']} file_bytes={m['file']} index_file_bytes={size} "
                  f"first_ms={m['first_ms']:.3f} p50_ms={m['p50_ms']:.3f}", flush=True)


def run_size(n: int, data: np.ndarray, queries: np.ndarray, flat_baseline: bool) -> list[str]:
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
            compare_mapped(store, n, queries)
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
        run_size(n, data, queries, flat_baseline=not args.no_flat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
