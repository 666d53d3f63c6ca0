"""Load on the real server: concurrent clients send mixed text and image searches for a fixed
time; prints errors, p50/p99 latency, throughput and the server's memory over the run.

Loopback only; bounded by a deadline (and each request by a timeout).

    python bench/load.py                # 16 clients for 60 s, ViT-B-32 (untrained weights)
    python bench/load.py --quick        # 16 clients for 10 s, for CI
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

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


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--image-share", type=float, default=0.5, help="fraction of image searches")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--corpus", type=int, default=200)
    parser.add_argument("--home", default=DEFAULT_HOME)
    parser.add_argument("--quick", action="store_true", help="10 s on a small corpus")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.corpus = 10.0, 24

    work, env = bench_workspace("loupe-load-", args.home, args.model, args.pretrained)
    photos = make_corpus(work / "photos", args.corpus)
    subprocess.run([sys.executable, "-m", "searchapp.cli", "index", str(work / "photos"), "--no-progress"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    uploads = [p.read_bytes() for p in photos[:32]]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "searchapp.cli", "serve", "--port", str(port),
                               "--threads", str(args.clients)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    latencies: dict[str, list[float]] = {"text": [], "image": []}
    errors: list[str] = []
    memory: list[float] = []
    lock = threading.Lock()
    try:
        wait_healthy(base, time.monotonic() + 120)
        timed_request(urllib.request.Request(f"{base}/api/search?q=warm+up"))  # loads the model
        memory.append(rss_mb(server.pid))
        stop_at = time.monotonic() + args.seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop_at:
                if rng.random() < args.image_share:
                    kind = "image"
                    body, ctype = multipart("image", "q.jpg", rng.choice(uploads))
                    request = urllib.request.Request(f"{base}/api/search/image?k=20", data=body, method="POST",
                                                     headers={"Content-Type": ctype})
                else:
                    kind = "text"
                    q = urllib.parse.quote(rng.choice(TEXT_QUERIES))
                    request = urllib.request.Request(f"{base}/api/search?q={q}&k=20")
                try:
                    ms = timed_request(request)
                except (urllib.error.URLError, OSError, ValueError) as err:
                    with lock:
                        errors.append(f"{kind}: {err}")
                    continue
                with lock:
                    latencies[kind].append(ms)

        def sample_memory() -> None:
            while time.monotonic() < stop_at:
                time.sleep(1.0)
                memory.append(rss_mb(server.pid))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        threads.append(threading.Thread(target=sample_memory))
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)

    every = latencies["text"] + latencies["image"]
    print(f"{args.clients} clients for {wall:.1f} s, {args.image_share:.0%} image searches, "
          f"model {args.model}/{args.pretrained}, corpus {args.corpus}, loopback")
    print(f"{'kind':<8}{'requests':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for kind, values in (("text", latencies["text"]), ("image", latencies["image"]), ("all", every)):
        print(f"{kind:<8}{len(values):>10}{percentile(values, 50):>10.0f}{percentile(values, 99):>10.0f}")
    first, last = memory[0], memory[-1]
    half = memory[len(memory) // 2]
    print(f"errors {len(errors)}; throughput {len(every) / wall:.1f} req/s; server RSS {first:.0f} MB at start, "
          f"{half:.0f} MB halfway, {last:.0f} MB at the end, max {max(memory):.0f} MB")
    for line in errors[:5]:
        print("  error:", line)
    print(
        "RESULT "
        f"clients={args.clients} seconds={wall:.1f} requests={len(every)} errors={len(errors)} "
        f"rps={len(every) / wall:.2f} p50_ms={statistics.median(every) if every else float('nan'):.1f} "
        f"p99_ms={percentile(every, 99):.1f} rss_start_mb={first:.0f} rss_end_mb={last:.0f} rss_max_mb={max(memory):.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
