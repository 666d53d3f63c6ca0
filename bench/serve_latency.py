"""Latency of the real search service against the same queries made in-process.

Starts `loupe serve` (waitress) on loopback over a freshly indexed corpus, sends a bounded
number of text and image searches with 1 and 8 concurrent clients, and prints p50/p95
latency; then times the same work in-process (model encode alone, and the whole query
without HTTP) so the service's overhead shows as a ratio. Loopback only; every loop is
bounded by a request count and a deadline.

    python bench/serve_latency.py                 # ViT-B-32 (untrained weights: same compute)
    python bench/serve_latency.py --quick         # a short smoke run for CI
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from common import (
    DEFAULT_HOME,
    TEXT_QUERIES,
    bench_workspace,
    free_port,
    make_corpus,
    multipart,
    percentile,
    timed_request,
    wait_healthy,
)


def run_clients(make_request, total: int, clients: int, deadline_s: float) -> tuple[list[float], float]:
    """Send `total` requests from `clients` threads; returns (latencies ms, requests/s)."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--corpus", type=int, default=200, help="images to index")
    parser.add_argument("--requests", type=int, default=200, help="requests per kind and concurrency")
    parser.add_argument("--home", default=DEFAULT_HOME,
                        help="folder kept between runs (model weights cache)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    if args.quick:
        args.corpus, args.requests = 24, 16

    import torch

    from indexer.commands import load_embedder, open_library
    from indexer.images import decode_image
    from indexer.jobs import IndexJob, IndexOptions
    from indexer.settings import Settings
    from searchapp.restoration.pipeline import Restorers, restored_lookup

    work, env = bench_workspace("loupe-serve-bench-", args.home, args.model, args.pretrained)
    settings = Settings.from_env(env)
    photos = make_corpus(work / "photos", args.corpus)
    embedder = load_embedder(settings)
    library = open_library(settings)
    IndexJob(library, embedder, IndexOptions(progress=False)).run([work / "photos"])
    queries = [p.read_bytes() for p in photos[: min(32, len(photos))]]

    # -- in-process: the model alone, and the whole query without HTTP ------------------------
    rounds = max(8, args.requests // 4)
    pixels = [embedder.prepare(decode_image(q, draft_size=embedder.image_size).image) for q in queries]
    embedder.encode_batch(pixels[0][None])  # warm-up
    model_image = []
    for i in range(rounds):
        t0 = time.perf_counter()
        embedder.encode_batch(pixels[i % len(pixels)][None])
        model_image.append((time.perf_counter() - t0) * 1000)
    model_text = []
    for i in range(rounds):
        t0 = time.perf_counter()
        embedder.encode_texts([TEXT_QUERIES[i % len(TEXT_QUERIES)]])
        model_text.append((time.perf_counter() - t0) * 1000)
    inproc_image = []
    restorers = Restorers(settings.restore, settings.home, "cpu")
    for i in range(rounds):
        t0 = time.perf_counter()
        restored_lookup(library, embedder, queries[i % len(queries)], k=20, restorers=restorers)  # what the server runs
        inproc_image.append((time.perf_counter() - t0) * 1000)
    inproc_text = []
    for i in range(rounds):
        t0 = time.perf_counter()
        library.search(embedder.encode_texts([TEXT_QUERIES[i % len(TEXT_QUERIES)]]), k=20)
        inproc_text.append((time.perf_counter() - t0) * 1000)
    library.close()
    del embedder

    # -- the real server ----------------------------------------------------------------------------
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "searchapp.cli", "serve", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows = []
    try:
        wait_healthy(base, time.monotonic() + 120)
        timed_request(urllib.request.Request(f"{base}/api/search?q=warm+up"))  # loads the model

        def text_request(i: int):
            q = urllib.parse.quote(TEXT_QUERIES[i % len(TEXT_QUERIES)])
            return urllib.request.Request(f"{base}/api/search?q={q}&k=20")

        def image_request(i: int):
            body, ctype = multipart("image", "query.jpg", queries[i % len(queries)])
            return urllib.request.Request(f"{base}/api/search/image?k=20", data=body,
                                          headers={"Content-Type": ctype}, method="POST")

        for kind, make in (("text", text_request), ("image", image_request)):
            for clients in (1, 8):
                latencies, rate = run_clients(make, args.requests, clients, deadline_s=300)
                rows.append((kind, clients, latencies, rate))
    finally:
        server.terminate()
        server.wait(timeout=30)

    p50 = statistics.median
    print(f"torch threads {torch.get_num_threads()}, model {args.model}/{args.pretrained}, "
          f"corpus {args.corpus} images, {args.requests} requests per row, loopback")
    print(f"{'path':<34}{'clients':>8}{'p50 ms':>10}{'p95 ms':>10}{'req/s':>9}")
    print(f"{'model encode only (image)':<34}{1:>8}{p50(model_image):>10.1f}{percentile(model_image, 95):>10.1f}{'':>9}")
    print(f"{'model encode only (text)':<34}{1:>8}{p50(model_text):>10.1f}{percentile(model_text, 95):>10.1f}{'':>9}")
    print(f"{'in-process query (image)':<34}{1:>8}{p50(inproc_image):>10.1f}{percentile(inproc_image, 95):>10.1f}{'':>9}")
    print(f"{'in-process query (text)':<34}{1:>8}{p50(inproc_text):>10.1f}{percentile(inproc_text, 95):>10.1f}{'':>9}")
    for kind, clients, latencies, rate in rows:
        print(f"{'HTTP ' + kind + ' search':<34}{clients:>8}{p50(latencies):>10.1f}{percentile(latencies, 95):>10.1f}{rate:>9.1f}")
    http = {(kind, clients): p50(lat) for kind, clients, lat, _ in rows}
    image_overhead = http[("image", 1)] / p50(model_image)
    text_overhead = http[("text", 1)] / p50(model_text)
    print(f"HTTP image p50 / model image encode p50 = {image_overhead:.2f} (target <= 1.20)")
    print(f"HTTP text p50 / model text encode p50 = {text_overhead:.2f}")
    print(
        "RESULT "
        f"model_image_p50_ms={p50(model_image):.1f} inproc_image_p50_ms={p50(inproc_image):.1f} "
        f"http_image_p50_ms={http[('image', 1)]:.1f} http_image_8c_p50_ms={http[('image', 8)]:.1f} "
        f"model_text_p50_ms={p50(model_text):.1f} http_text_p50_ms={http[('text', 1)]:.1f} "
        f"image_overhead_ratio={image_overhead:.3f} text_overhead_ratio={text_overhead:.3f}"
    )


if __name__ == "__main__":
    main()
