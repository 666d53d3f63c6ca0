#!/usr/bin/env python
"""Search at scale: the index Loupe builds for 100k and 1M vectors, and how fast and how
exact it is.

    python bench/search_scale.py                        # 100k and 1M CLIP-like synthetic vectors
    python bench/search_scale.py --quick                # 60k, 300 queries (CI; fails if recall@10 < 0.9)
    python bench/search_scale.py --vectors EMB.npy      # real embeddings (N x D float32), sizes cut from it

For each size it builds the index `indexer.vectorstore.choose_index_spec` picks, the way a
library does (`VectorStore.build`: k-means on a sample, nprobe tuned to reach recall@10 0.95
on a held-out sample), then measures on `--queries` (1,000) queries that are not in the index: p50/p99
latency of single queries, throughput of one batch of all of them, recall@10 against exact
search (`faiss.knn`), memory per vector (the serialised index) and build time. An exact
`Flat` index is measured beside it as the baseline. The chosen index is then saved and opened
by fresh processes, one reading it into memory and one memory-mapping it (`LOUPE_INDEX_MMAP`);
and the same index type is built a third way, by `--shards` worker processes whose shards are
merged into one list file on disk (`indexer.ondisk`). Each reports its anonymous memory
(RssAnon: what the index costs beyond the page cache, which the kernel can evict and processes
share), single-query p50 with the file in the page cache, and recall@10.

Without `--vectors` the vectors are synthetic and say so: unit vectors in a narrow cone around a
shared direction (as CLIP image embeddings are), grouped into TOPICS topics of Zipf-distributed
sizes (a few hold much of the collection, most hold little), with continuous variation inside
each topic (a random direction of the topic's own SUBSPACE-dimensional subspace) and
per-picture noise, so that neighbours are clustered unevenly as in a photo collection. The
topic count is fixed, whatever the size, and far from the list counts of the IVF indexes built
here (1024 lists up to about 260k vectors, 4096 at 1M): data with about one cluster per list
would let k-means find the clusters and flatter IVF. The script prints the mean cosine of
random pairs and of each query's nearest neighbour so the structure can be compared with real
embeddings.

Speed figures never fail the run. With --quick (what CI runs) the exit status is 1 when the
chosen index's recall@10 against exact search is below QUICK_RECALL_FLOOR (a smoke check of
the nprobe tuning); the figure is printed either way.
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

from provenance import print_header, print_result

QUERIES, QUICK_QUERIES = 1_000, 300
QUICK_SIZE = 60_000
QUICK_RECALL_FLOOR = 0.9
K = 10
TOPICS = 300  # fixed: unrelated to any IVF list count used here (1024, 4096)
TOPIC_EXPONENT = 1.1  # Zipf topic sizes: the largest topic holds about 20%, the smallest 0.04%
SUBSPACE = 8  # dimensions of each topic's own continuous variation


def topic_weights() -> np.ndarray:
    weights = 1.0 / np.arange(1, TOPICS + 1) ** TOPIC_EXPONENT
    return weights / weights.sum()


def describe_synthetic() -> str:
    weights = topic_weights()
    return (f"synthetic CLIP-like vectors: {TOPICS} topics (whatever the size), Zipf sizes (exponent "
            f"{TOPIC_EXPONENT}: largest {weights[0]:.0%}, median {np.median(weights):.2%}, smallest "
            f"{weights[-1]:.2%}), continuous {SUBSPACE}-d variation within a topic, per-picture noise")


def clip_like_vectors(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """`n` synthetic unit vectors with CLIP-like neighbour structure (see the module docstring)."""
    rng = np.random.default_rng(seed)
    shared = _unit(rng.standard_normal(dim))
    topic_dirs = _unit(rng.standard_normal((TOPICS, dim)))
    bases = _unit(rng.standard_normal((TOPICS, SUBSPACE, dim)))
    weights = topic_weights()
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        topic = rng.choice(TOPICS, size=m, p=weights)
        within = _within_topic(topic, rng.standard_normal((m, SUBSPACE)).astype(np.float32), bases)
        noise = _unit(rng.standard_normal((m, dim)))
        out[start : start + m] = _unit(0.75 * shared + 0.5 * topic_dirs[topic] + 0.4 * within + 0.4 * noise)
    return out


def _within_topic(topic: np.ndarray, coefficients: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """Unit directions, each a random combination of its topic's subspace basis."""
    within = np.empty((len(topic), bases.shape[2]), dtype=np.float32)
    order = np.argsort(topic, kind="stable")
    bounds = np.searchsorted(topic[order], np.arange(len(bases) + 1))
    for t in range(len(bases)):
        rows = order[bounds[t] : bounds[t + 1]]
        within[rows] = coefficients[rows] @ bases[t]
    return _unit(within)


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
                   shards: int) -> list[dict]:
    """Save `store`, then open it read and mapped in fresh processes; with `shards`, also
    build it from shards merged on disk and open that. Prints each; returns their figures."""
    opened = []
    with tempfile.TemporaryDirectory(prefix="loupe-scale-") as folder:
        path, queries_path = os.path.join(folder, "index.faiss"), os.path.join(folder, "queries.npy")
        store.save(Path(path))
        np.save(queries_path, queries)
        modes = [("read", path), ("mapped", path)]
        size_of = {}
        if shards and not store.spec.exact:
            merged, timing = build_from_shards(store, vectors, ids, Path(folder), shards)
            print(f"{'':>9} {'  merged shards':<16}{timing}", flush=True)
            modes.append(("merged", str(merged)))
            size_of["merged"] = os.path.getsize(merged) + os.path.getsize(merged.with_suffix(".ivfdata"))
        for mode, file in modes:
            size = size_of.get(mode, os.path.getsize(path))
            m = open_in_fresh_process(file, queries_path, mode, truth)
            print(f"{'':>9} {'  file, ' + mode:<16}open {m['open_s']:.2f} s; anonymous memory "
                  f"{m['anon'] / n:.0f} B/vector ({m['anon'] / 2**20:.0f} MiB), file-backed pages "
                  f"{m['file'] / 2**20:.0f} MiB (index file {size / 2**20:.0f} MiB, plus libraries); "
                  f"first query {m['first_ms']:.2f} ms, p50 {m['p50_ms']:.2f} ms, recall@10 {m['recall']:.3f}",
                  flush=True)
            opened.append({"mode": mode, "open_s": m["open_s"], "anon_bytes": m["anon"], "file_bytes": m["file"],
                           "index_file_bytes": size, "first_ms": m["first_ms"], "p50_ms": m["p50_ms"],
                           "recall_at_10": m["recall"]})
    return opened


def run_size(n: int, data: np.ndarray, queries: np.ndarray, flat_baseline: bool, shards: int = 4) -> list[dict]:
    """The chosen index for the first `n` vectors (then opened from disk) and the exact
    baseline: a table row each; their figures."""
    import faiss

    from indexer.vectorstore import IndexSpec, VectorStore, choose_index_spec

    vectors = data[:n]
    ids = np.arange(1, n + 1, dtype=np.int64)
    t0 = time.perf_counter()
    _, rows = faiss.knn(queries, vectors, K, metric=faiss.METRIC_INNER_PRODUCT)
    truth = ids[rows]
    truth_s = time.perf_counter() - t0
    figures = []
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
        print(f"{n:>9,} {store.spec.factory:<16}{tuned:<32}{build_s:>8.1f}{size / n:>9.0f}"
              f"{m['p50_ms']:>8.2f}{m['p99_ms']:>8.2f}{m['batch_qps']:>11.0f}{m['recall']:>8.3f}", flush=True)
        figures.append({"vectors": n, "type": store.spec.factory, "chosen": spec is specs[0],
                        "nprobe": store.spec.nprobe, "build_s": build_s, "bytes_per_vector": size / n,
                        "p50_ms": m["p50_ms"], "p99_ms": m["p99_ms"], "batch_qps": m["batch_qps"],
                        "recall_at_10": m["recall"], "exact_truth_s": truth_s})
        if spec is specs[0]:
            figures[-1]["files"] = compare_mapped(store, n, vectors, ids, queries, truth, shards)
        del store
    return figures


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated vector counts")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--vectors", help="a .npy file of real embeddings (rows beyond the largest size are queries)")
    parser.add_argument("--queries", type=int, default=None, help=f"held-out queries (default {QUERIES:,}; "
                        f"{QUICK_QUERIES} with --quick)")
    parser.add_argument("--no-flat", action="store_true", help="skip the exact Flat baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SIZE:,} vectors (CI); exit 1 if recall@10 < {QUICK_RECALL_FLOOR}")
    parser.add_argument("--shards", type=int, default=4,
                        help="also build the index from this many shards merged on disk (0: skip)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = str(QUICK_SIZE)
    if args.queries is None:
        args.queries = QUICK_QUERIES if args.quick else QUERIES
    return args


def load_data(args) -> tuple[np.ndarray, np.ndarray, str]:
    """(indexed vectors, held-out queries, where they came from)."""
    rows = max(int(s) for s in args.sizes.split(",")) + args.queries
    if args.vectors:
        data = np.load(args.vectors, mmap_mode="r")
        if len(data) < rows:
            raise SystemExit(f"{args.vectors} has {len(data)} rows; need {rows}")
        data, origin = _unit(np.asarray(data[:rows], dtype=np.float32)), f"real embeddings from {args.vectors}"
    else:
        data, origin = clip_like_vectors(rows, args.dim, args.seed), describe_synthetic()
    return data[: -args.queries], data[-args.queries :], origin


def neighbour_structure(data: np.ndarray, queries: np.ndarray) -> dict:
    """Mean cosine of random pairs, and of a query's nearest neighbour (among 200k at most)."""
    sample = data[np.random.default_rng(1).choice(len(data), size=min(2_000, len(data)), replace=False)]
    pairs = sample @ sample.T
    np.fill_diagonal(pairs, -1.0)
    nearest = np.max(queries[:200] @ data[: min(len(data), 200_000)].T, axis=1)
    return {"random_pair_cosine": float(pairs[pairs > -1].mean()), "nearest_cosine": float(nearest.mean())}


def main(argv=None) -> int:
    args = parse_args(argv)
    model = f"none (embeddings from {args.vectors})" if args.vectors else "none (synthetic CLIP-like vectors)"
    header = print_header("search_scale", args, model=model)
    t0 = time.perf_counter()
    data, queries, origin = load_data(args)
    structure = neighbour_structure(data, queries)
    print(f"{origin}")
    print(f"{len(data):,} x {data.shape[1]} in {time.perf_counter() - t0:.1f} s; mean cosine of random pairs "
          f"{structure['random_pair_cosine']:.3f}, of a query's nearest neighbour {structure['nearest_cosine']:.3f}; "
          f"{os.cpu_count()} cpus, {len(queries)} held-out queries, k={K}")
    print(f"{'vectors':>9} {'index':<16}{'probes':<32}{'build s':>8}{'B/vec':>9}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'batch q/s':>11}{'R@10':>8}")
    runs = []
    for n in (int(s) for s in args.sizes.split(",")):
        runs += run_size(n, data, queries, flat_baseline=not args.no_flat, shards=args.shards)
    floor = smoke_floor(args, runs)
    print_result("search_scale", {"data": origin, "topics": None if args.vectors else TOPICS, "queries": len(queries),
                                  **structure, "runs": runs, "recall_floor": floor}, header)
    return 0 if floor is None or floor["passed"] else 1


def smoke_floor(args, runs: list[dict]) -> dict | None:
    """With --quick: whether every chosen index reached QUICK_RECALL_FLOOR (printed either way)."""
    if not args.quick:
        return None
    worst = min(run["recall_at_10"] for run in runs if run["chosen"])
    passed = worst >= QUICK_RECALL_FLOOR
    print(f"smoke floor: the chosen index's recall@10 {worst:.3f} against exact search "
          f"{'>=' if passed else 'is BELOW'} {QUICK_RECALL_FLOOR}{'' if passed else ': FAILED'}")
    return {"floor": QUICK_RECALL_FLOOR, "recall_at_10": worst, "passed": passed}


if __name__ == "__main__":
    sys.exit(main())
