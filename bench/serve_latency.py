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
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

TEXT_QUERIES = ["a cat", "an astronaut in a suit", "a cup of coffee", "a rocket on the launch pad",
                "coins on a table", "the surface of the moon", "a red motorcycle", "a man with a camera"]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def make_corpus(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` distinct ~1024-px JPEGs cut from the photographs scikit-image ships."""
    from indexer.demo import SAMPLE_PHOTOS, sample_photos_dir

    source = sample_photos_dir()
    photos = [Image.open(source / name).convert("RGB") for name in SAMPLE_PHOTOS if (source / name).is_file()]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        img = photos[i % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch))
        scale = 1024 / max(crop.size)
        crop = crop.resize((max(1, int(crop.width * scale)), max(1, int(crop.height * scale))), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / f"photo{i:04d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(base: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/api/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("the server did not become healthy in time")


def timed_request(request: urllib.request.Request) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        json.loads(response.read())
    return (time.perf_counter() - t0) * 1000


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
    parser.add_argument("--home", default=os.path.join(tempfile.gettempdir(), "loupe-bench-home"),
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

    work = Path(tempfile.mkdtemp(prefix="loupe-serve-bench-"))
    models = Path(args.home) / "models"
    models.mkdir(parents=True, exist_ok=True)
    (work / "home").mkdir()
    (work / "home" / "models").symlink_to(models, target_is_directory=True)
    env = {**os.environ, "LOUPE_HOME": str(work / "home"), "LOUPE_MODEL": args.model,
           "LOUPE_PRETRAINED": args.pretrained, "LOUPE_DEVICE": "cpu"}
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
    for i in range(rounds):
        t0 = time.perf_counter()
        decoded = decode_image(queries[i % len(queries)], draft_size=embedder.image_size)
        library.search(embedder.encode_images([decoded.image]), k=20)
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
