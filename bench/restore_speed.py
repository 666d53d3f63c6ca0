"""Latency of the query-restoration stages' model work, on one device.

Times, on a ViT-B-32-sized model input (224 × 224) and a 512-d embedding, with seeded
untrained networks of the shipped sizes (the compute is the real one; the weights do not
change it): the noise estimate, the pixel denoiser one-shot and with DDIM steps (Loupe's own
UNet, fp16 on CUDA), the embedding diffusion model, and αQE. Prints the p50 and p90 of
`--repeats` runs after a warm-up.

    python bench/restore_speed.py                    # this machine's CPU
    python bench/restore_speed.py --device cuda      # a GPU (see bench/gpu_check.py)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def timed(fn, repeats: int, sync) -> tuple[float, float]:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def main() -> int:
    import torch

    from indexer.noise import noise_levels
    from searchapp.diffusion.unet import UNetConfig
    from searchapp.restoration.embedding import EmbeddingConfig, EmbeddingRestorer
    from searchapp.restoration.expansion import alpha_query_expansion
    from searchapp.restoration.pixel import PixelRestorer
    from searchapp.restoration.training import PATCH_SIZE, PIXEL_WIDTHS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=224, help="model input side (ViT-B-32: 224)")
    parser.add_argument("--steps", type=int, default=4, help="DDIM steps of pixel-ddim")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="few repeats (CI)")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    config = UNetConfig(sample_size=PATCH_SIZE, block_out_channels=PIXEL_WIDTHS)
    unet = config.create_unet().to(args.device, torch.float16 if cuda else torch.float32).eval()
    pixel = PixelRestorer(unet, config.create_scheduler().alphas_cumprod.numpy(), "untrained")
    embedding = EmbeddingRestorer(EmbeddingConfig(dim=512).create_network(), EmbeddingConfig(dim=512))
    vector = rng.normal(size=512).astype(np.float32)
    vector /= np.linalg.norm(vector)
    neighbours = rng.normal(size=(5, 512)).astype(np.float32)

    print(f"device {args.device} ({torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'}), "
          f"input {args.size}x{args.size}, pixel UNet widths {PIXEL_WIDTHS} "
          f"({sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M parameters), {repeats} repeats")
    rows = [
        ("noise estimate", lambda: noise_levels([pixels])),
        ("pixel (one-shot)", lambda: pixel.purify(pixels, 30.0, 1)),
        (f"pixel-ddim ({args.steps} steps)", lambda: pixel.purify(pixels, 30.0, args.steps)),
        ("embedding (10 DDIM steps, CPU)", lambda: embedding.restore(vector)),
        ("qe (5 neighbours)", lambda: alpha_query_expansion(vector, neighbours, neighbours @ vector)),
    ]
    print(f"{'stage':<32}{'p50 ms':>10}{'p90 ms':>10}")
    for name, fn in rows:
        p50, p90 = timed(fn, repeats, sync)
        print(f"{name:<32}{p50:>10.1f}{p90:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
