"""Latency of the query-restoration stages' model work, on one device.

Times, on a ViT-B-32-sized model input (224 × 224) and a 512-d embedding, with seeded
untrained networks of the shipped sizes (the compute is the real one; the weights do not
change it): the noise estimate, the pixel denoiser one-shot and with DDIM steps (Loupe's own
UNet, fp16 on CUDA), the embedding diffusion model, and αQE. Prints the p50 and p90 of
`--repeats` runs after a warm-up.

    python bench/restore_speed.py                    # this machine's CPU
    python bench/restore_speed.py --device cuda      # a GPU (see bench/gpu_check.py)
    python bench/restore_speed.py --quick            # CI: 2 repeats
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from common import pixel_restorer_config
from provenance import print_header, print_result


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=224, help="model input side (ViT-B-32: 224)")
    parser.add_argument("--steps", type=int, default=4, help="DDIM steps of pixel-ddim")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="2 repeats (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 2
    config = pixel_restorer_config()
    header = print_header("restore_speed", args, model=f"seeded untrained restorers of the shipped sizes: pixel UNet "
                          f"widths {tuple(config.block_out_channels)} on {config.sample_size}-px patches, embedding "
                          "denoiser for 512-d vectors")

    import torch

    from indexer.noise import noise_levels
    from searchapp.restoration.embedding import EmbeddingConfig, EmbeddingRestorer
    from searchapp.restoration.expansion import alpha_query_expansion
    from searchapp.restoration.pixel import PixelRestorer

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    unet = config.create_unet().to(args.device, torch.float16 if cuda else torch.float32).eval()
    pixel = PixelRestorer(unet, config.create_scheduler().alphas_cumprod.numpy(), "untrained")
    embedding_config = EmbeddingConfig(dim=512)
    embedding = EmbeddingRestorer(embedding_config.create_network(), embedding_config.create_scheduler("ddim"),
                                  embedding_config.sample_steps)
    vector = rng.normal(size=512).astype(np.float32)
    vector /= np.linalg.norm(vector)
    neighbours = rng.normal(size=(5, 512)).astype(np.float32)

    print(f"device {args.device} ({torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'}), "
          f"input {args.size}x{args.size}, pixel UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M "
          f"parameters, {args.repeats} repeats after a warm-up")
    rows = [
        ("noise estimate", "noise", lambda: noise_levels([pixels])),
        ("pixel (one-shot)", "pixel", lambda: pixel.purify(pixels, 30.0, 1)),
        (f"pixel-ddim ({args.steps} steps)", "pixel_ddim", lambda: pixel.purify(pixels, 30.0, args.steps)),
        ("embedding (10 DDIM steps, CPU)", "embedding", lambda: embedding.restore(vector)),
        ("qe (5 neighbours)", "qe", lambda: alpha_query_expansion(vector, neighbours, neighbours @ vector)),
    ]
    print(f"{'stage':<32}{'p50 ms':>10}{'p90 ms':>10}")
    figures = {}
    for name, key, fn in rows:
        p50, p90 = timed(fn, args.repeats, sync)
        print(f"{name:<32}{p50:>10.1f}{p90:>10.1f}", flush=True)
        figures[key] = {"p50_ms": p50, "p90_ms": p90}
    print_result("restore_speed", {"device": args.device, "size": args.size, "ddim_steps": args.steps,
                                   "repeats": args.repeats, "stages": figures}, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
