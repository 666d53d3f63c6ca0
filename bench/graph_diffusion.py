"""Diffusion re-ranking over the collection's kNN graph: does it find more of a picture's group,
and what does the graph cost?

Retrieval: an instance-retrieval set built from real photographs (bench/gather_photos.py's
wallpapers, or scikit-image's photographs with --quick). Each group is one photograph, the
photographs that look alike it (a natural series: light and dark variants, one scene at two
times of day; bench.gather_photos.lookalike_groups) and transformed versions of each
(bench.damage: crops, recompression, blur, rotation, mirror, caption, frame, noise). Every
picture is a query against all the others (more-like-this: itself left out); its relevant
results are the other members of its group. mAP@100, recall@10 and recall@1 with rerank off
and with diffusion, 95% bootstrap intervals over groups (queries grouped by picture). The
diffusion's parameters are tuned (coordinate ascent on mAP@100) on the queries of one half of
the groups and reported on the other half. The copy cut-off that keeps copies first is
calibrated as `Library.calibrate` does (leave-one-out top scores, `calibrate_cutoff`).

Cost: graph build time and memory, and the query time diffusion adds, on synthetic clustered
vectors (512-d) at --scale pictures (100k) and --big (1M; its kNN search timed on a sample of
rows and extrapolated, which the output says).

    python bench/graph_diffusion.py --photos /tmp/loupe-photos            # full run
    python bench/graph_diffusion.py --quick                               # CI smoke, a minute
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_HOME, bench_workspace, clip_model_label, percentile  # noqa: E402
from bench.provenance import print_header, print_result  # noqa: E402
from indexer.diffusion_rank import DiffusionParams, diffusion_order  # noqa: E402
from indexer.graph import (KnnGraph, build_graph, flat_searcher, ivf_searcher, neighbour_rows,  # noqa: E402
                           update_graph)

TRANSFORMS = ("crop70", "crop40", "jpeg10", "blur3", "rotate10", "mirror", "text", "framed", "noise35")
QUICK_TRANSFORMS = ("crop70", "jpeg10", "mirror", "text")
GRID = {  # the values coordinate ascent tries for each parameter
    "neighbours": (5, 10, 20, 30),  # at most the graph's k (indexer.graph.GRAPH_K)
    "power": (1.0, 3.0, 5.0),
    "mutual": (True, False),
    "alpha": (0.3, 0.5, 0.7, 0.8, 0.9, 0.99),
    "truncation": (50, 100, 200, 400),
    "seeds": (1, 3, 5, 10, 20),
    "fusion": (0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
}
TOP = 100  # mAP@100


# -- the retrieval set ------------------------------------------------------------------------
def photo_files(photos: Path | None, quick: bool, limit: int) -> list[Path]:
    if photos is None:
        import skimage.data

        folder = Path(skimage.data.__file__).parent
        names = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "moon.png", "coins.png",
                 "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg", "immunohistochemistry.png",
                 "page.png", "horse.png", "logo.png", "retina.jpg", "text.png", "brick.png", "grass.png",
                 "gravel.png", "cell.png", "color.png", "microaneurysms.png", "lily.tif")
        files = [folder / n for n in names if (folder / n).exists()]
    else:
        files = sorted(p for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return files[:limit] if limit else files


def natural_series(files: list[Path]) -> list[list[Path]]:
    """The photographs grouped with their look-alikes (bench.gather_photos.lookalike_groups)."""
    from bench.gather_photos import lookalike_groups

    return lookalike_groups(files)


def build_set(files: list[Path], transforms: tuple[str, ...], seed: int):
    """(pictures as RGB images, each picture's group, each picture's source photograph index,
    whether it is an original) for `files`' groups and their transformed versions."""
    from bench.damage import damage

    series = natural_series(files)
    images, groups, sources, kinds = [], [], [], []
    rng = np.random.default_rng(seed)
    source = 0
    for g, members in enumerate(series):
        for path in members:
            with Image.open(path) as img:
                img = img.convert("RGB")
                img.thumbnail((640, 640))
            for kind in ("clean", *transforms):
                images.append(damage(img, kind, rng).convert("RGB"))
                groups.append(g)
                sources.append(source)
                kinds.append(kind)
            source += 1
    return images, np.array(groups), np.array(sources), kinds


def embed(images: list[Image.Image], model: str, pretrained: str, home: str, batch: int = 32) -> np.ndarray:
    from indexer.factory import load_embedder
    from indexer.settings import Settings

    _, env = bench_workspace("loupe-graph-", home, model, pretrained)
    embedder = load_embedder(Settings.from_env(env))
    out = []
    for start in range(0, len(images), batch):
        out.append(embedder.encode_batch([embedder.prepare(img) for img in images[start : start + batch]]))
    return np.concatenate(out).astype(np.float32)


# -- retrieval metrics ------------------------------------------------------------------------
def query_metrics(ranked: np.ndarray, relevant: np.ndarray) -> tuple[float, float, float]:
    """(AP@100, recall@10, recall@1) of one ranked list of ids against a boolean `relevant` lookup."""
    hits = relevant[ranked[:TOP]]
    total = int(relevant.sum())
    if total == 0:
        return float("nan"), float("nan"), float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    ap = float((precision * hits).sum() / min(total, TOP))
    return ap, float(hits[:10].sum() / min(total, 10)), float(hits[:1].sum())


class Retrieval:
    """Every picture's direct ranking (itself left out), computed once, and the graph at k=50."""

    def __init__(self, vectors: np.ndarray, groups: np.ndarray, depth: int = 400):
        self.vectors, self.groups = vectors, groups
        self.ids = np.arange(len(vectors), dtype=np.int64)
        searcher = flat_searcher(vectors, self.ids)
        self.direct_ids, self.direct = neighbour_rows(searcher, self.ids, vectors, depth)
        self.graph = build_graph(self.ids, vectors, k=max(GRID["neighbours"]))  # params.neighbours of it are used

    def ranking(self, q: int, params: DiffusionParams | None, pin: float) -> np.ndarray:
        if params is None:
            return self.direct_ids[q]
        t = params.truncation
        ids, direct = self.direct_ids[q, :t], self.direct[q, :t].astype(np.float64)
        order = diffusion_order(self.graph, ids, direct, pin_score=pin, params=params)
        return np.concatenate([ids[order], self.direct_ids[q, t:]])

    def metrics(self, queries: np.ndarray, params: DiffusionParams | None, pin: float) -> np.ndarray:
        rows = []
        for q in queries:
            relevant = self.groups == self.groups[q]
            relevant[q] = False
            rows.append(query_metrics(self.ranking(q, params, pin), relevant))
        return np.array(rows)


def calibrated_pin(vectors: np.ndarray, direct: np.ndarray, sample: int = 1000, seed: int = 0) -> float:
    """The near-duplicate cut-off as `Library.calibrate` chooses it: leave-one-out top scores."""
    from indexer.matching import calibrate_cutoff

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)
    return calibrate_cutoff(direct[rows, 0], np.zeros(0)).whole


def bootstrap(per_query: np.ndarray, query_groups: np.ndarray, resamples: int = 2000, seed: int = 0) -> list[float]:
    """A 95% interval of the mean of `per_query`, resampling whole groups."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(query_groups)
    sums = np.array([per_query[query_groups == g].sum() for g in uniq])
    counts = np.array([(query_groups == g).sum() for g in uniq])
    draws = rng.integers(0, len(uniq), size=(resamples, len(uniq)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def tune(retrieval: Retrieval, queries: np.ndarray, pin: float, passes: int = 2) -> tuple[DiffusionParams, float]:
    """Coordinate ascent on mean AP@100 over `queries`, from the defaults; returns (params, its mAP)."""
    state = {name: getattr(DiffusionParams(), name) for name in GRID}

    def score(values: dict) -> float:
        return float(np.nanmean(retrieval.metrics(queries, DiffusionParams(**values), pin)[:, 0]))

    best = score(state)
    for _ in range(passes):
        improved = False
        for name, values in GRID.items():
            for value in values:
                if value == state[name]:
                    continue
                trial = {**state, name: value}
                got = score(trial)
                if got > best + 1e-6:
                    best, state, improved = got, trial, True
        if not improved:
            break
    return DiffusionParams(**state), best


def retrieval_figures(args) -> dict:
    transforms = QUICK_TRANSFORMS if args.quick else tuple(args.transforms.split(","))
    files = photo_files(args.photos, args.quick, args.limit)
    if args.cache and args.cache.exists():  # the same set embedded before (same arguments)
        with np.load(args.cache) as saved:
            vectors, groups, sources = saved["vectors"], saved["groups"], saved["sources"]
            kinds = [str(k) for k in saved["kinds"]]
        images = [None] * len(vectors)
        print(f"set: {len(vectors)} pictures embedded earlier, from {args.cache}", flush=True)
    else:
        t0 = time.perf_counter()
        images, groups, sources, kinds = build_set(files, transforms, args.seed)
        print(f"set: {len(files)} photographs in {len(np.unique(groups))} groups, {len(images)} pictures "
              f"({len(transforms)} transformed versions each) in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        vectors = embed(images, args.model, args.pretrained, args.home)
        print(f"embedded in {time.perf_counter() - t0:.0f} s", flush=True)
        if args.cache:
            np.savez(args.cache, vectors=vectors, groups=groups, sources=sources, kinds=np.array(kinds))
    retrieval = Retrieval(vectors, groups)
    pin = calibrated_pin(vectors, retrieval.direct)
    rng = np.random.default_rng(args.seed)
    uniq = np.unique(groups)
    tune_groups = set(rng.permutation(uniq)[: len(uniq) // 2].tolist())
    is_tune = np.array([g in tune_groups for g in groups])
    tune_q, report_q = np.flatnonzero(is_tune), np.flatnonzero(~is_tune)
    if args.tune_queries and len(tune_q) > args.tune_queries:
        tune_q = np.sort(rng.choice(tune_q, size=args.tune_queries, replace=False))
    t0 = time.perf_counter()
    params, tuned_map = tune(retrieval, tune_q, pin, passes=1 if args.quick else 2)
    print(f"tuned on {len(tune_q)} queries of {len(tune_groups)} groups in {time.perf_counter() - t0:.0f} s: "
          f"{asdict(params)} (mAP@100 {tuned_map:.4f} on the tuning half)", flush=True)
    off = retrieval.metrics(report_q, None, pin)
    on = retrieval.metrics(report_q, params, pin)
    default_on = retrieval.metrics(report_q, DiffusionParams(), pin)
    qg = groups[report_q]
    figures = {"pictures": len(images), "groups": int(len(uniq)), "photographs": len(files),
               "report_queries": int(len(report_q)), "copy_cutoff": round(float(pin), 4),
               "tuned": asdict(params),
               "defaults_mAP@100": round(float(np.nanmean(default_on[:, 0])), 4)}
    for i, name in enumerate(("mAP@100", "recall@10", "recall@1")):
        figures[name] = {"off": round(float(np.nanmean(off[:, i])), 4), "diffusion": round(float(np.nanmean(on[:, i])), 4),
                         "difference": round(float(np.nanmean(on[:, i] - off[:, i])), 4),
                         "difference_95": bootstrap(on[:, i] - off[:, i], qg),
                         "off_95": bootstrap(off[:, i], qg), "diffusion_95": bootstrap(on[:, i], qg)}
        print(f"{name:10s} off {figures[name]['off']:.4f}  diffusion {figures[name]['diffusion']:.4f}  "
              f"difference {figures[name]['difference']:+.4f} {figures[name]['difference_95']}", flush=True)
    # Copy queries: a transformed version whose own original is in the collection; its top-1 must stay a copy.
    copy_rows = np.array([kinds[q] != "clean" for q in report_q])
    top_off = np.array([sources[retrieval.ranking(q, None, pin)[0]] == sources[q] for q in report_q[copy_rows]])
    top_on = np.array([sources[retrieval.ranking(q, params, pin)[0]] == sources[q] for q in report_q[copy_rows]])
    figures["copy_recall@1"] = {"queries": int(copy_rows.sum()), "off": round(float(top_off.mean()), 4),
                                "diffusion": round(float(top_on.mean()), 4),
                                "lost": int((top_off & ~top_on).sum()), "gained": int((~top_off & top_on).sum())}
    print(f"copy recall@1 ({copy_rows.sum()} transformed queries, top result from the same photograph): "
          f"off {top_off.mean():.4f} diffusion {top_on.mean():.4f} (lost {figures['copy_recall@1']['lost']}, "
          f"gained {figures['copy_recall@1']['gained']})", flush=True)
    figures["incremental"] = incremental_agreement(vectors, rng)
    return figures


def incremental_agreement(vectors: np.ndarray, rng: np.random.Generator, share: float = 0.1) -> dict:
    """The graph after adding the last `share` of the pictures (and removing as many) incrementally,
    against the graph rebuilt from scratch: the share of edges they agree on."""
    n = len(vectors)
    ids = np.arange(1, n + 1, dtype=np.int64)
    order = rng.permutation(n)
    cut = int(n * (1 - share))
    first, later = np.sort(ids[order[:cut]]), np.sort(ids[order[cut:]])
    removed = np.sort(rng.choice(first, size=len(later) // 2, replace=False))
    final = np.sort(np.concatenate([np.setdiff1d(first, removed), later]))
    lookup = lambda wanted: vectors[np.asarray(wanted) - 1]  # noqa: E731
    k = 30
    graph = build_graph(first, lookup(first), k=k)
    t0 = time.perf_counter()
    updated = update_graph(graph, flat_searcher(lookup(final), final), lookup, later, lookup(later), removed)
    inc_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rebuilt = build_graph(final, lookup(final), k=k)
    full_s = time.perf_counter() - t0
    agree = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(updated.neighbours, rebuilt.neighbours)]))
    out = {"pictures": len(final), "added": len(later), "removed": len(removed), "edge_agreement": round(agree, 5),
           "incremental_s": round(inc_s, 3), "rebuild_s": round(full_s, 3)}
    print(f"incremental update (+{len(later)} -{len(removed)} of {len(final)}): {agree:.2%} of the rebuilt graph's "
          f"edges, {inc_s:.2f} s against {full_s:.2f} s to rebuild", flush=True)
    return out


# -- cost on synthetic vectors --------------------------------------------------------------------
def synthetic(n: int, dim: int = 512, centres: int = 2000, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors: `centres` random directions, each picture one of them plus noise."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        x = c[rng.integers(0, centres, stop - start)] + 0.8 * rng.standard_normal((stop - start, dim)).astype(np.float32)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cost_at(n: int, sample_rows: int | None, queries: int, params: DiffusionParams, k: int, seed: int = 0,
            with_map: bool = False) -> dict:
    """Graph build time and memory at `n` synthetic pictures, and the query time diffusion adds."""
    from indexer.vectorstore import VectorStore, choose_index_spec, physical_memory

    vectors = synthetic(n, seed=seed)
    ids = np.arange(1, n + 1, dtype=np.int64)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    searcher = ivf_searcher(vectors, ids) if n > 50_000 else flat_searcher(vectors, ids)
    index_s = time.perf_counter() - t0
    rows = np.arange(n) if not sample_rows or sample_rows >= n else \
        np.sort(np.random.default_rng(seed).choice(n, size=sample_rows, replace=False))
    t0 = time.perf_counter()
    nb, sims = neighbour_rows(searcher, ids[rows], vectors[rows], k)
    search_s = time.perf_counter() - t0
    knn_s = search_s * n / len(rows)
    graph_mb = (nb.nbytes + sims.nbytes) * n / len(rows) / 2**20
    # The IVF graph's recall against the exact kNN on 200 rows.
    check = rows[:200]
    recall = []
    for row, found in zip(check, nb[:200]):
        s = vectors @ vectors[row]
        s[row] = -np.inf
        recall.append(len(set((np.argpartition(-s, k)[:k] + 1).tolist()) & set(found.tolist())) / k)
    recall = float(np.mean(recall))
    out = {"pictures": n, "k": k, "index_s": round(index_s, 1), "knn_rows_timed": int(len(rows)),
           "knn_s": round(knn_s, 1), "build_s": round(index_s + knn_s, 1),
           "extrapolated": bool(len(rows) < n), "graph_mb": round(graph_mb, 1),
           "peak_rss_mb": round(rss_mb(), 0), "rss_before_mb": round(rss0, 0), "neighbour_recall": round(recall, 4)}
    graph = KnnGraph(ids[rows], nb, sims, k) if len(rows) == n else None
    if graph is not None and with_map:
        from indexer.collection_map import compute_map

        t0 = time.perf_counter()
        found = compute_map(graph, lambda wanted: vectors[np.asarray(wanted) - 1])
        out["map_s"] = round(time.perf_counter() - t0, 1)
        out["map_clusters"] = len(found.clusters)
        print(f"map of {n} pictures: {out['map_s']} s, {len(found.clusters)} clusters", flush=True)
    if queries:
        del searcher
        spec = choose_index_spec(n, vectors.shape[1], memory_bytes=physical_memory())
        store = VectorStore.build(ids, vectors, spec)
        rng = np.random.default_rng(seed + 1)
        plain, deep, diffuse = [], [], []
        for q in rng.choice(n, size=queries, replace=False):
            t = time.perf_counter()
            store.search(vectors[q], 20)
            plain.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            hits = store.search(vectors[q], params.truncation)[0]
            deep.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            if graph is not None:
                diffusion_order(graph, np.array([h.id for h in hits]), np.array([h.score for h in hits]), 0.99, params)
            diffuse.append((time.perf_counter() - t) * 1000)
        added = [d - p + f for p, d, f in zip(plain, deep, diffuse)]
        out["query"] = {"index": spec.factory, "knn20_p50_ms": round(percentile(plain, 50), 2),
                        "knn_truncation_p50_ms": round(percentile(deep, 50), 2),
                        "diffusion_p50_ms": round(percentile(diffuse, 50), 2),
                        "added_p50_ms": round(percentile(added, 50), 2), "added_p95_ms": round(percentile(added, 95), 2)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=None, help="a folder of photographs (bench/gather_photos.py)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many photographs (0: all)")
    parser.add_argument("--transforms", default=",".join(TRANSFORMS), help="bench.damage kinds made of each photograph")
    parser.add_argument("--model", default=os.environ.get("LOUPE_MODEL", "ViT-B-32"))
    parser.add_argument("--pretrained", default=os.environ.get("LOUPE_PRETRAINED", "none"))
    parser.add_argument("--home", default=DEFAULT_HOME)
    parser.add_argument("--tune-queries", type=int, default=800, help="tuning queries at most (sampled)")
    parser.add_argument("--scale", type=int, default=100_000, help="synthetic pictures for the query cost (0: skip)")
    parser.add_argument("--big", type=int, default=1_000_000, help="synthetic pictures for the build cost (0: skip)")
    parser.add_argument("--big-rows", type=int, default=50_000, help="rows whose kNN is timed at --big")
    parser.add_argument("--cache", type=Path, default=None, help="keep the set's vectors here and reuse them")
    parser.add_argument("--cost-only", action="store_true", help="only the cost part (the default parameters)")
    parser.add_argument("--quick", action="store_true", help="CI smoke: scikit-image photos, small sizes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.scale, args.big, args.tune_queries = min(args.scale, 20_000), 0, 200
    header = print_header("graph_diffusion", args, model=clip_model_label(args.model, args.pretrained))
    figures = {}
    params = DiffusionParams()
    if not args.cost_only:
        figures["retrieval"] = retrieval_figures(args)
        params = DiffusionParams(**figures["retrieval"]["tuned"])
    k = 30  # the graph's (indexer.graph.GRAPH_K); the diffusion uses params.neighbours of each row
    if args.scale:
        figures["scale"] = cost_at(args.scale, None, 200, params, k, with_map=True)
        print(f"at {args.scale} synthetic pictures: {figures['scale']}", flush=True)
    if args.big:
        figures["big"] = cost_at(args.big, args.big_rows, 0, params, k)
        print(f"at {args.big} synthetic pictures: {figures['big']}", flush=True)
    print_result("graph_diffusion", figures, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
