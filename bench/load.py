"""Load on the real server: concurrent clients send mixed text and image searches for a fixed
time; prints errors, p50/p99 latency, throughput and the server's memory over the run.

Loopback only; bounded by a deadline (and each request by a timeout).

    python bench/load.py                # 16 clients for 60 s, ViT-B-32 (untrained weights)
    python bench/load.py --quick        # 16 clients for 10 s, for CI
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import threading
import time
import urllib.error

from common import (
    DEFAULT_HOME,
    TEXT_QUERIES,
    bench_workspace,
    clip_model_label,
    image_search_request,
    index_folder,
    make_corpus,
    percentile,
    serving,
    text_search_request,
    timed_request,
)
from provenance import print_header, print_result


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--image-share", type=float, default=0.5, help="fraction of image searches")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--corpus", type=int, default=200)
    parser.add_argument("--home", default=DEFAULT_HOME)
    parser.add_argument("--quick", action="store_true", help="10 s on a small corpus")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.corpus = 10.0, 12
    return args


def run_load(base: str, pid: int, uploads: list[bytes], args) -> tuple[dict, list[str], list[float], float]:
    """`args.clients` clients of mixed searches for `args.seconds`, and the server's RSS each
    second: (latencies ms by kind, errors, RSS samples MB, wall seconds)."""
    latencies: dict[str, list[float]] = {"text": [], "image": []}
    errors: list[str] = []
    memory = [rss_mb(pid)]
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            if rng.random() < args.image_share:
                kind, request = "image", image_search_request(base, rng.choice(uploads))
            else:
                kind, request = "text", text_search_request(base, rng.choice(TEXT_QUERIES))
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
            memory.append(rss_mb(pid))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    threads.append(threading.Thread(target=sample_memory))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, memory, time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    header = print_header("load", args, model=clip_model_label(args.model, args.pretrained))
    work, env = bench_workspace("loupe-load-", args.home, args.model, args.pretrained)
    try:
        photos = make_corpus(work / "photos", args.corpus)
        index_folder(work / "photos", env)
        uploads = [p.read_bytes() for p in photos[:32]]
        with serving(env, work / "server.log", threads=args.clients) as (base, pid):
            latencies, errors, memory, wall = run_load(base, pid, uploads, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    every = latencies["text"] + latencies["image"]
    print(f"{args.clients} clients for {wall:.1f} s, {args.image_share:.0%} image searches (indexed files), "
          f"corpus {args.corpus}, loopback")
    print(f"{'kind':<8}{'requests':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for kind, values in (("text", latencies["text"]), ("image", latencies["image"]), ("all", every)):
        print(f"{kind:<8}{len(values):>10}{percentile(values, 50):>10.0f}{percentile(values, 99):>10.0f}")
    first, last = memory[0], memory[-1]
    half = memory[len(memory) // 2]
    print(f"errors {len(errors)}; throughput {len(every) / wall:.1f} req/s; server RSS {first:.0f} MB at start, "
          f"{half:.0f} MB halfway, {last:.0f} MB at the end, max {max(memory):.0f} MB")
    for line in errors[:5]:
        print("  error:", line)
    print_result("load", {
        "clients": args.clients, "seconds": wall, "requests": len(every), "errors": len(errors),
        "rps": len(every) / wall, "p50_ms": statistics.median(every) if every else float("nan"),
        "p99_ms": percentile(every, 99), "rss_start_mb": first, "rss_end_mb": last, "rss_max_mb": max(memory),
    }, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
