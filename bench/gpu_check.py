#!/usr/bin/env python
"""One prepared run for a lent GPU machine: the GPU tests, then the GPU indexing numbers.

On the development machine, fetch the wheels the GPU machine lacks (it has no network):

    scripts/gpu_wheels                     # writes .whl/ (git-ignored)

then run, on the GPU machine, from the repository root (the device tool carries `.whl`):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && python3 bench/gpu_check.py

Steps (each one's failure is reported and the next still runs; exit status 1 if any failed):

1. the environment: GPU, torch, CUDA, whether torchvision decodes JPEGs on the GPU (nvJPEG),
   whether FAISS sees GPUs;
2. `pytest -m gpu`: the CUDA tests (fp16 embedding, nvJPEG decoding against Pillow);
3. `bench/index_throughput.py` on CUDA with ViT-B-32 (untrained weights: the real compute) on
   --count generated ~1024-px JPEGs (made once, shared by every run): nvJPEG decoding with the
   CLI's default regions and with regions off, then Pillow processes with the default regions:
   decode-only, model-only (fp16) and end-to-end job images/s;
4. `bench/generate_speed.py` on CUDA: seconds per generated picture for Loupe's own 64-px
   generator and a Stable Diffusion 1.5-sized img2img pipeline at 512 px (fp16);
5. `bench/restore_speed.py` on CUDA: latency of the query-restoration stages (fp16 denoiser).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def step(title: str, argv: list[str], timeout: int) -> bool:
    print(f"\n=== {title}: {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=ROOT, timeout=timeout)
        ok = done.returncode == 0
    except subprocess.TimeoutExpired:
        print(f"--- timed out after {timeout} s", flush=True)
        ok = False
    print(f"--- {title}: {'ok' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s", flush=True)
    return ok


ENVIRONMENT = """
import torch, torchvision
print("torch", torch.__version__, "cuda", torch.version.cuda, "torchvision", torchvision.__version__)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
from indexer.reader import device_decode_available
print("nvjpeg decoding", device_decode_available("cuda"))
from indexer.vectorstore import gpu_count
print("faiss gpus", gpu_count(), "(0: faiss-cpu; searches run on the CPU)")
"""


MAKE_PHOTOS = """
import sys; sys.path.insert(0, {root!r})
from pathlib import Path
from index_throughput import make_photos
make_photos(Path({dest!r}), {count}, 0)
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=2048, help="JPEGs for the indexing benchmark")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--skip-tests", action="store_true")
    args = p.parse_args()
    py = sys.executable
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from provenance import print_header

    print_header("gpu_check", args)
    results = {"environment": step("environment", [py, "-c", ENVIRONMENT], 120)}
    if not args.skip_tests:
        results["gpu tests"] = step("gpu tests", [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                                  "tests/test_embedder.py", "tests/test_gpudecode.py"], 300)
    photos = Path("/tmp/loupe-gpu-photos")
    results["photographs"] = step("photographs for the indexing runs", [py, "-c", MAKE_PHOTOS.format(
        root=str(ROOT / "bench"), dest=str(photos), count=args.count)], 300)
    for decode, regions in (("torchvision", "2"), ("torchvision", "off"), ("pillow", "2")):
        results[f"index throughput ({decode}, regions {regions})"] = step(
            f"index throughput, decode {decode}, regions {regions}",
            [py, "bench/index_throughput.py", "--device", "cuda", "--photos", str(photos),
             "--batch-size", str(args.batch_size), "--decode", decode, "--regions", regions, "--repeat", "1",
             "--home", "/tmp/loupe-gpu-bench"],
            300,
        )
    results["generate speed"] = step("generate similar: seconds per picture, both backends",
                                     [py, "bench/generate_speed.py", "--device", "cuda"], 300)
    results["restore speed"] = step("query restoration: stage latency",
                                    [py, "bench/restore_speed.py", "--device", "cuda"], 120)
    print("\n" + "\n".join(f"{name}: {'ok' if ok else 'FAILED'}" for name, ok in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
