#!/usr/bin/env python
"""Filtered search at scale: recall and latency of a search restricted by the library's filters.

    python bench/filtered_search.py                    # 100k and 1M synthetic vectors, 512-d
    python bench/filtered_search.py --sizes 100000     # one size
    python bench/filtered_search.py --quick            # 60k 256-d vectors, 100 queries (seconds)

For each size it builds the index Loupe would build (`choose_index_spec`, then
`VectorStore.build`: k-means on a sample, nprobe tuned to recall@10 0.95), and a metadata table
(`indexer.metatable.MetadataTable`) of synthetic metadata drawn independently of the vectors:
format (half JPEG), one of ten top folders, a date taken uniform over 1,000 days, one of 1,000
cameras. Four filters select about 50 % (format=jpeg), 10 % (one folder), 1 % (ten days) and
0.1 % (one camera) of the pictures. For each, on `--queries` queries not in the index:

- recall@10 against exact filtered search (`faiss.knn` over the selected vectors only);
- p50/p99 milliseconds of one query's FAISS search restricted to the filter's selection
  (`vectorstore.search_selected`), and the milliseconds of making that selection (the filter
  over the table, `MetadataTable.select`, and `IdSelection.of`), which `Library.selection` pays
  once per filter and index generation (it keeps the last few);
- the probes used (`filtered_nprobe`) against the index's own.

The vectors are synthetic (bench/search_scale.py's CLIP-like vectors: 300 topics of Zipf sizes,
so not one cluster per IVF list). Metadata independent of content is the usual benchmark setting;
a filter that follows content (a folder of one trip) keeps its vectors in fewer lists, which
exhaustive scanning of a small selection does not mind. No figure fails the run.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone

import numpy as np

from provenance import print_header, print_result
from search_scale import clip_like_vectors, describe_synthetic

K = 10
QUICK_SIZE, QUICK_DIM, QUICK_QUERIES = 60_000, 256, 100
T0 = datetime(2020, 1, 1, tzinfo=timezone.utc)
FILTERS = {  # name → (approximate selectivity, the filter's parameters)
    "50%": {"format": ["jpeg"]},
    "10%": {"folder": ["/photos/f3"]},
    "1%": {"taken_after": ["2020-03-01"], "taken_before": ["2020-03-10"]},
    "0.1%": {"camera": ["cam-0042"]},
}


def synthetic_table(n: int, seed: int):
    """A metadata table for ids 1..n, drawn independently of the vectors (see the docstring)."""
    from indexer.metatable import MetadataTable, micros

    rng = np.random.default_rng(seed)
    folders = tuple(f"/photos/f{i}" for i in range(10))
    formats = ("JPEG", "PNG", "HEIF")
    cameras = tuple(f"maker cam-{i:04d}" for i in range(1000))
    day = 86_400_000_000
    return MetadataTable(
        ids=np.arange(1, n + 1, dtype=np.int64),
        folder=rng.integers(0, len(folders), n).astype(np.int32), folders=folders,
        taken=micros(T0) + rng.integers(0, 1000 * day, n, dtype=np.int64),
        width=rng.choice([640, 1920, 4032], n).astype(np.int32), height=rng.choice([480, 1080, 3024], n).astype(np.int32),
        size_bytes=rng.integers(50_000, 8_000_000, n, dtype=np.int64),
        format=np.where(rng.random(n) < 0.5, 0, rng.integers(1, 3, n)).astype(np.int16), formats=formats,
        camera=rng.integers(0, len(cameras), n).astype(np.int32), cameras=cameras,
    )


def run_size(n: int, dim: int, queries_n: int, seed: int) -> list[dict]:
    import faiss

    from indexer.filters import parse_filter
    from indexer.vectorstore import (IdSelection, VectorStore, choose_index_spec, filtered_nprobe,
                                     physical_memory, search_selected)

    t0 = time.perf_counter()
    data = clip_like_vectors(n + queries_n, dim, seed)
    vectors, queries = data[:n], data[n:]
    ids = np.arange(1, n + 1, dtype=np.int64)
    spec = choose_index_spec(n, dim, memory_bytes=physical_memory())
    store = VectorStore.build(ids, vectors, spec)
    build_s = time.perf_counter() - t0
    table = synthetic_table(n, seed + 1)
    print(f"\n{n:,} vectors × {dim}: {store.spec.factory}, nprobe {store.spec.nprobe} "
          f"(built with the vectors in {build_s:.0f} s)")
    print(f"{'filter':>6} {'selected':>9} {'probes':>7} {'recall@10':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'select ms':>9}")
    rows = []
    ivf = faiss.try_extract_index_ivf(store._index)
    for name, values in FILTERS.items():
        wanted = parse_filter(values)
        mask = table.mask(wanted)
        chosen = np.flatnonzero(mask)
        truth = ids[chosen][faiss.knn(queries, vectors[chosen], K, metric=faiss.METRIC_INNER_PRODUCT)[1]]
        selecting = []
        for _ in range(5):  # the filter over the table and the selection: once per filter and index generation
            start = time.perf_counter()
            selection = IdSelection.of(table.select(wanted))
            selecting.append((time.perf_counter() - start) * 1000)
        for q in queries[: min(10, len(queries))]:  # warm-up
            search_selected(store, q, K, selection)
        search_only, found = [], []
        for q in queries:
            start = time.perf_counter()
            found.append(search_selected(store, q, K, selection)[0])
            search_only.append((time.perf_counter() - start) * 1000)
        recall = float(np.mean([len({h.id for h in row} & set(t.tolist())) / K for row, t in zip(found, truth)]))
        from indexer import vectorstore

        exact = ivf is not None and len(chosen) <= vectorstore.EXACT_SELECTION and "vectors" in selection.cache
        nprobe = "exact" if exact or ivf is None else filtered_nprobe(store.spec.nprobe, ivf.nlist, len(chosen) / n)
        row = {"size": n, "filter": name, "selected": int(len(chosen)), "nprobe": nprobe, "recall@10": recall,
               "p50_ms": float(np.percentile(search_only, 50)), "p99_ms": float(np.percentile(search_only, 99)),
               "select_ms": float(np.median(selecting)), "index": store.spec.factory}
        rows.append(row)
        print(f"{name:>6} {len(chosen):>9,} {str(nprobe):>7} {recall:>9.3f} {row['p50_ms']:>7.2f} "
              f"{row['p99_ms']:>7.2f} {row['select_ms']:>9.2f}")
    del store, vectors, data
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="vector counts, comma-separated")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="FAISS OpenMP threads (default 1: one query per request thread; on a loaded 2-core "
                             "machine, 2 threads made single queries wait tens of ms for the other thread)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SIZE:,} {QUICK_DIM}-d vectors, {QUICK_QUERIES} queries: seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.dim, args.queries = str(QUICK_SIZE), QUICK_DIM, QUICK_QUERIES
    return args


def main(argv=None) -> int:
    import faiss

    args = parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    print_header("filtered_search", args)
    print(f"# data: {describe_synthetic()}; metadata independent of the vectors")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows += run_size(size, args.dim, args.queries, args.seed)
    print_result("filtered_search", {"runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
