"""What geometric verification costs: at index time (local features per picture: keypoints,
bytes, milliseconds, and the whole job with and without them) and at query time (verifying the
top N candidates of a lookup).

    python bench/verify_cost.py --quick                               # scikit-image's photographs
    python bench/verify_cost.py --corpus /tmp/loupe-photos/corpus --candidates 30

The job is timed twice on the same files in fresh homes (regions on, Loupe's defaults): once as
Loupe runs it, once with the local features left out, so the difference is what they add. Query
time is the `verify` stage of `indexer.lookup.reverse_lookup` (query features, the candidates'
stored features from the catalog, matching and RANSAC), over damaged copies of corpus pictures
(crop 40 %, noise σ 15, text) and held-out pictures (which verify nothing: the mirrored pass runs,
and the mirrored embedding is searched).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image

from common import DEFAULT_HOME, bench_workspace, percentile
from damage import KINDS, damage
from provenance import print_header, print_result
from robustness import photos_in, query_bytes, sample_folders


def index(work: Path, name: str, env: dict, corpus: Path, features: bool):
    from indexer.factory import load_embedder, open_library
    from indexer.jobs import IndexJob, IndexOptions
    from indexer.settings import Settings

    home = work / name
    home.mkdir()
    (home / "models").symlink_to((Path(env["LOUPE_HOME"]) / "models").resolve(), target_is_directory=True)
    settings = Settings.from_env({**env, "LOUPE_HOME": str(home)})
    embedder = load_embedder(settings)
    library = open_library(settings)
    t0 = time.perf_counter()
    if features:
        IndexJob(library, embedder, IndexOptions(progress=False, calibrate=False)).run([corpus])
    else:  # the job as it was before local features: none found, none backfilled
        with mock.patch("indexer.reader.picture_features", lambda decoded: None), \
                mock.patch("indexer.jobs.IndexJob._backfill_features", lambda self, roots: None):
            IndexJob(library, embedder, IndexOptions(progress=False, calibrate=False)).run([corpus])
    seconds = time.perf_counter() - t0
    if features:
        library.calibrate()
    return library, embedder, seconds


def feature_facts(paths: list[Path]) -> dict:
    """Keypoints, blob bytes and milliseconds per picture, found as the index job finds them."""
    from indexer import features
    from indexer.images import decode_image

    counts, sizes, times = [], [], []
    for path in paths:
        decoded = decode_image(path.read_bytes(), draft_size=features.decode_side(336))
        t0 = time.perf_counter()
        blob = features.encode(features.extract(decoded.image, decoded.width, decoded.height))
        times.append((time.perf_counter() - t0) * 1000)
        counts.append(len(features.decode(blob)))
        sizes.append(len(blob))
    return {"pictures": len(paths), "keypoints_mean": float(np.mean(counts)), "bytes_mean": float(np.mean(sizes)),
            "bytes_max": int(max(sizes)), "ms_p50": statistics.median(times), "ms_mean": float(np.mean(times))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--heldout", type=Path)
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--queries", type=int, default=24, help="damaged member queries (and up to as many held-out)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--home", default=DEFAULT_HOME)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    header = print_header("verify_cost", args, model=f"{args.model} ({args.pretrained})")
    work, env = bench_workspace("loupe-verify-cost-", args.home, args.model, args.pretrained)
    if args.corpus is None:
        corpus, heldout = sample_folders(work)
    else:
        corpus, heldout = args.corpus, args.heldout
    paths = photos_in(corpus)
    facts = feature_facts(paths)
    print(f"local features: {facts['pictures']} pictures, {facts['keypoints_mean']:.0f} keypoints and "
          f"{facts['bytes_mean']:.0f} bytes (max {facts['bytes_max']}) a picture, {facts['ms_p50']:.1f} ms p50 "
          f"({facts['ms_mean']:.1f} mean) to find and encode them; {facts['bytes_mean'] * 1e6 / 2**30:.1f} GiB at 1M pictures")

    _, _, without = index(work, "without", env, corpus, features=False)
    library, embedder, with_features = index(work, "with", env, corpus, features=True)
    added = (with_features - without) / without
    print(f"index job (regions on, {len(paths)} pictures): {without:.1f} s without local features, "
          f"{with_features:.1f} s with them: +{added:.1%} ({(with_features - without) * 1000 / len(paths):.0f} ms a picture)")

    from indexer.lookup import reverse_lookup
    from indexer.query import SearchQuery
    from indexer.verify import VerifyOptions

    query = SearchQuery(k=10, regions=True, verify=VerifyOptions(candidates=args.candidates))
    stage: dict[str, list[float]] = {"member": [], "held-out": []}
    kinds = ("crop40", "noise15", "text")
    for i, path in enumerate(paths[: args.queries]):
        kind = kinds[i % len(kinds)]
        image = damage(Image.open(path).convert("RGB"), kind, np.random.default_rng([i, 0, KINDS.index(kind)]))
        timings: dict[str, float] = {}
        reverse_lookup(library, embedder, query_bytes(image), query, timings=timings)
        stage["member"].append(timings["verify"])
    for path in photos_in(heldout)[: args.queries] if heldout else []:
        timings = {}
        reverse_lookup(library, embedder, query_bytes(Image.open(path).convert("RGB")), query, timings=timings)
        stage["held-out"].append(timings["verify"])
    for name, values in stage.items():
        if values:
            print(f"verify stage at {args.candidates} candidates, {name} queries ({len(values)}): "
                  f"p50 {percentile(values, 50):.1f} ms, p90 {percentile(values, 90):.1f} ms")
    print("(figures from a shared, loaded machine: other benchmarks ran beside this one)")
    print_result("verify_cost", {
        **{f"features.{k}": v for k, v in facts.items()},
        "index_seconds_without": round(without, 2), "index_seconds_with": round(with_features, 2),
        "index_added": round(added, 4),
        "verify_ms_p50_member": percentile(stage["member"], 50), "verify_ms_p50_heldout": percentile(stage["held-out"], 50),
    }, header)
    library.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
