"""Latency of the real search service against the same calls made in-process.

Indexes a corpus with `loupe index` (the CLI's defaults, regions included) and starts `loupe
serve` (waitress) on loopback over it. Then, for each query set, it times the call the endpoint
makes, in this process, on a service built as the server builds its own
(`searchapp.create_app`): an image search is `SearchService.search_upload`, that is
`restored_lookup` (restore=auto, regions on, k=20: decode, embed, kNN, detect, restore when
auto chooses to, label); a text search is `SearchService.search_text` (encode_texts and
`Library.search`). Right after, it sends the same queries over HTTP with 1 and with 8
concurrent clients. Query sets:

  indexed    indexed files sent unchanged (exact copies: labelled by their hash)
  damaged    indexed pictures under bench/damage.py's `combo` (a 50% crop, noise sigma 25, JPEG
             quality 30), seeded (restoration's detection and fusion have work to do)
  unindexed  photographs the index does not hold (crops of scikit-image photographs kept out
             of the corpus)
  text       text queries

Query restoration: by default the bench's LOUPE_HOME gets seeded untrained pixel and embedding
restorers of the shipped sizes (`--restorers untrained`), so `auto` runs the stages its policy
names as it would with trained ones, at their real cost (on a CPU the default policy runs none:
set LOUPE_RESTORE_AUTO=noise:pixel for the CUDA default); `--restorers none` is a fresh install
(auto detects, then has no stage to run); `--restorers HOME` copies the trained restorers of
another LOUPE_HOME.

Per set: in-process p50/p95, HTTP p50/p95 at 1 and 8 clients, and the service's overhead, HTTP
p50 (1 client) minus in-process p50, in ms and as a ratio; how often the in-process call found
a copy and how often it ran a restoration stage, to show which paths ran. The model's encode
time alone (image, text) is printed as context. Loopback only; every loop is bounded by a
count and a deadline.

    python bench/serve_latency.py                 # ViT-B-32 (untrained weights: same compute)
    python bench/serve_latency.py --quick         # a short smoke run for CI
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from common import (
    DEFAULT_HOME,
    HELD_OUT_PHOTOS,
    TEXT_QUERIES,
    bench_workspace,
    clip_model_label,
    cut_photos,
    image_search_request,
    index_folder,
    install_untrained_restorers,
    make_corpus,
    percentile,
    serving,
    text_search_request,
    timed_calls,
    timed_request,
)
from provenance import print_header, print_result

K = 20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--corpus", type=int, default=200, help="images to index")
    parser.add_argument("--queries", type=int, default=16, help="distinct pictures per image query set")
    parser.add_argument("--requests", type=int, default=100, help="requests per query set, path and concurrency")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds each timing loop may run at most")
    parser.add_argument("--seed", type=int, default=0, help="seed of the damage and of the unindexed pictures")
    parser.add_argument("--restorers", default="untrained",
                        help="query-restoration models: untrained (default), none, or a LOUPE_HOME with trained ones")
    parser.add_argument("--home", default=DEFAULT_HOME, help="folder kept between runs (model weights cache)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.corpus, args.queries, args.requests, args.deadline = 12, 4, 8, 60.0
    return args


# -- query sets -------------------------------------------------------------------------------------
def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def damaged_copies(paths: list[Path], seed: int) -> list[bytes]:
    """Each picture under the robustness benchmark's `combo` damage (a 50% crop, noise σ 25,
    JPEG quality 30), as JPEG bytes."""
    from damage import damage

    rng = np.random.default_rng(seed)
    out = []
    for path in paths:
        with Image.open(path) as img:
            out.append(jpeg_bytes(damage(img.convert("RGB"), "combo", rng)))
    return out


def query_sets(work: Path, indexed: list[Path], count: int, seed: int) -> dict[str, list]:
    """The image query sets (bytes) and the text one (strings)."""
    unindexed = cut_photos(work / "unindexed", count, HELD_OUT_PHOTOS, seed + 1)
    return {
        "indexed": [p.read_bytes() for p in indexed[:count]],
        "damaged": damaged_copies(indexed[:count], seed),
        "unindexed": [p.read_bytes() for p in unindexed],
        "text": TEXT_QUERIES,
    }


def provide_restorers(choice: str, home: Path, identity: dict) -> str:
    """Put the `--restorers` choice into LOUPE_HOME `home`; a description of it."""
    if choice == "none":
        return "none (a fresh install: auto detects, then has no stage to run)"
    if choice == "untrained":
        install_untrained_restorers(home, identity)
        return "seeded untrained pixel and embedding restorers of the shipped sizes (real compute)"
    shutil.copytree(Path(choice).expanduser() / "restorers", home / "restorers")
    return f"trained, from {choice}"


# -- timing -------------------------------------------------------------------------------------------
def run_clients(make_request, total: int, clients: int, deadline_s: float) -> tuple[list[float], float]:
    """Send up to `total` requests from `clients` threads, stopping at `deadline_s`;
    returns (latencies ms, requests/s)."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))
    stop_at = time.monotonic() + deadline_s

    def client() -> None:
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            ms = timed_request(make_request(i))
            with lock:
                latencies.append(ms)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return latencies, len(latencies) / (time.perf_counter() - t0)


def in_process_call(service, name: str, queries: list, seen: list) -> Callable[[int], None]:
    """The endpoint's own call for query i of set `name`; appends (copy found, restored) to `seen`."""
    from indexer.query import SearchQuery

    if name == "text":
        return lambda i: service.search_text(queries[i % len(queries)], SearchQuery(k=K))

    image_query = SearchQuery(k=K, regions=True, verify=service.verify_options())

    def call(i: int) -> None:
        page, report = service.search_upload(queries[i % len(queries)], image_query)
        seen.append((page.copy_found, bool(report.applied)))

    return call


def http_request(base: str, name: str, queries: list) -> Callable[[int], urllib.request.Request]:
    if name == "text":
        return lambda i: text_search_request(base, queries[i % len(queries)], K)
    return lambda i: image_search_request(base, queries[i % len(queries)], K)


def measure_set(service, base: str, name: str, queries: list, args) -> dict:
    """In-process, then HTTP with 1 and 8 clients, for one query set (each after a warm-up)."""
    seen: list[tuple[bool, bool]] = []
    call, request = in_process_call(service, name, queries, seen), http_request(base, name, queries)
    call(0)
    timed_request(request(0))
    seen.clear()
    inproc = timed_calls(call, args.requests, args.deadline)
    http1, _ = run_clients(request, args.requests, 1, args.deadline)
    http8, rate8 = run_clients(request, args.requests, 8, args.deadline)
    p50 = statistics.median
    row = {
        "queries": len(queries), "requests": len(inproc),
        "inproc_p50_ms": p50(inproc), "inproc_p95_ms": percentile(inproc, 95),
        "http1_p50_ms": p50(http1), "http1_p95_ms": percentile(http1, 95),
        "http8_p50_ms": p50(http8), "http8_p95_ms": percentile(http8, 95), "http8_rps": rate8,
        "overhead_ms": p50(http1) - p50(inproc), "overhead_ratio": p50(http1) / p50(inproc),
    }
    if seen:
        row["copy_found"] = float(np.mean([c for c, _ in seen]))
        row["restored"] = float(np.mean([r for _, r in seen]))
    return row


def model_encode_times(service, image_queries: list[bytes], args) -> dict[str, list[float]]:
    """The model alone: encode_batch of one prepared picture, encode_texts of one text."""
    embedder = service.embedder
    pixels = [embedder.prepare(Image.open(io.BytesIO(q)).convert("RGB")) for q in image_queries]
    embedder.encode_batch([pixels[0]])
    embedder.encode_texts([TEXT_QUERIES[0]])
    return {
        "image": timed_calls(lambda i: embedder.encode_batch([pixels[i % len(pixels)]]), args.requests, args.deadline),
        "text": timed_calls(lambda i: embedder.encode_texts([TEXT_QUERIES[i % len(TEXT_QUERIES)]]),
                            args.requests, args.deadline),
    }


# -- report -------------------------------------------------------------------------------------------
def print_table(rows: dict[str, dict], model: dict[str, list[float]]) -> None:
    print(f"{'query set':<11}{'copy':>6}{'rest.':>6}{'in-process':>18}{'HTTP, 1 client':>18}"
          f"{'HTTP, 8 clients':>24}{'overhead':>18}")
    print(f"{'':<11}{'found':>6}{'ran':>6}" + f"{'p50':>9}{'p95':>9}" * 3 + f"{'req/s':>6}{'ms':>9}{'ratio':>9}")
    for name, r in rows.items():
        found = f"{r['copy_found']:.0%}" if "copy_found" in r else "-"
        restored = f"{r['restored']:.0%}" if "restored" in r else "-"
        print(f"{name:<11}{found:>6}{restored:>6}{r['inproc_p50_ms']:>9.1f}{r['inproc_p95_ms']:>9.1f}"
              f"{r['http1_p50_ms']:>9.1f}{r['http1_p95_ms']:>9.1f}{r['http8_p50_ms']:>9.1f}{r['http8_p95_ms']:>9.1f}"
              f"{r['http8_rps']:>6.1f}{r['overhead_ms']:>+9.1f}{r['overhead_ratio']:>9.2f}")
    for kind, times in model.items():
        print(f"context: model encode alone ({kind}), {len(times)} calls: p50 {statistics.median(times):.1f} ms, "
              f"p95 {percentile(times, 95):.1f} ms")
    print("(ms; overhead = HTTP p50 with 1 client - in-process p50; copy found / rest. ran: share of the "
          "in-process image searches that labelled a copy / ran a restoration stage)")


def main(argv=None) -> int:
    args = parse_args(argv)
    header = print_header("serve_latency", args, model=clip_model_label(args.model, args.pretrained))

    import torch

    from searchapp import create_app
    from searchapp.services import EXTENSION
    from searchapp.settings import ServiceSettings

    work, env = bench_workspace("loupe-serve-bench-", args.home, args.model, args.pretrained)
    try:
        indexed = make_corpus(work / "photos", args.corpus, exclude=HELD_OUT_PHOTOS)
        index_s = index_folder(work / "photos", env)
        sets = query_sets(work, indexed, args.queries, args.seed)
        service = create_app({"LOUPE_SETTINGS": ServiceSettings.from_env(env)}).extensions[EXTENSION]  # as `loupe serve`
        regions = ",".join(map(str, service.settings.regions.scales)) or "off"
        restorers = provide_restorers(args.restorers, service.settings.home,
                                      service.library.stored_identity().as_dict())
        print(f"restorers: {restorers}")
        print(f"indexed {args.corpus} pictures (regions {regions}) in {index_s:.1f} s; torch threads "
              f"{torch.get_num_threads()}; {args.queries} pictures per image query set, up to {args.requests} "
              f"requests per row and {args.deadline:.0f} s per loop; loopback", flush=True)
        with serving(env, work / "server.log") as (base, _):
            model = model_encode_times(service, sets["indexed"], args)
            rows = {name: measure_set(service, base, name, queries, args) for name, queries in sets.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(rows, model)
    print_result("serve_latency", {
        "corpus": args.corpus, "regions": regions, "restorers": args.restorers, "sets": rows,
        "model_image_encode_p50_ms": statistics.median(model["image"]),
        "model_text_encode_p50_ms": statistics.median(model["text"]),
    }, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
