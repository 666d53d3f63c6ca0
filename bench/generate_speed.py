#!/usr/bin/env python
"""Seconds per generated picture for both "generate similar" backends on a device, with
random weights of the real sizes (no weights can be downloaded here; the compute is the same):

  loupe-ddpm         Loupe's own UNet (the 64-px configuration used on CUDA, 32-px on the
                     CPU), SDEdit with DDIM, as `OwnGenerator` runs it;
  diffusers-img2img  a Stable Diffusion 1.5-sized img2img pipeline (UNet 860M, VAE, CLIP
                     ViT-L/14 text encoder) at 512 px, as `DiffusersImg2Img` runs it
                     (half precision on CUDA).

    python bench/generate_speed.py --device cuda          # on a GPU (bench/gpu_check.py runs it)
    python bench/generate_speed.py --quick                # CPU smoke run: few steps, 128 px
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from common import untrained_unet_folder
from provenance import print_header, print_result
from random_models import PipelineShape, save_random_pipeline

SD_UNET_WIDTHS, SD_VAE_WIDTHS = (320, 640, 1280, 1280), (128, 256, 512, 512)


def own_model(folder: Path, size: int) -> Path:
    """Loupe's own generator at `size` px (the 64-px configuration is the CUDA one), untrained."""
    from searchapp.diffusion.unet import UNetConfig

    config = UNetConfig(sample_size=size, block_out_channels=(32, 64, 128, 128)[: 4 if size >= 64 else 3])
    return untrained_unet_folder(folder, config)


def timed(generator, source, n: int, steps: int, strength: float, repeat: int) -> float:
    from searchapp.generation.backends import Variations

    request = Variations(n=n, strength=strength, seed=0, steps=steps)
    generator.generate(source, request, lambda d, t: None, lambda: False)  # warm-up (kernels, allocations)
    best = float("inf")
    for _ in range(repeat):
        _sync(generator)
        t0 = time.perf_counter()
        generator.generate(source, request, lambda d, t: None, lambda: False)
        _sync(generator)
        best = min(best, time.perf_counter() - t0)
    return best / n


def _sync(generator) -> None:
    import torch

    if getattr(generator, "device", "cpu").startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--strength", type=float, default=0.6)
    p.add_argument("--resolution", type=int, default=512, help="Stable Diffusion picture size")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke run: 4 steps, 128 px, one repeat, a Stable Diffusion 4x narrower")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.resolution, args.repeat, args.n = 4, 128, 1, 2
    size = 64 if args.device.startswith("cuda") else 32
    narrow = 4 if args.quick else 1
    sd_label = "SD-1.5-sized" if narrow == 1 else f"SD-1.5 {narrow}x narrower"
    header = print_header("generate_speed", args, model=f"random weights: loupe-ddpm {size} px; diffusers img2img "
                          f"{sd_label} at {args.resolution} px")
    from searchapp.generation.backends import load_diffusers_img2img, load_own_generator

    source = Image.new("RGB", (640, 480), (120, 140, 90))
    with tempfile.TemporaryDirectory(prefix="loupe-genspeed-") as folder:
        own = load_own_generator(own_model(Path(folder) / "own", size), args.device)
        own_s = timed(own, source, args.n, args.steps, args.strength, args.repeat)
        print(f"loupe-ddpm        {size}x{size}, {args.steps} DDIM steps at strength {args.strength}: "
              f"{own_s:.3f} s/image (batch of {args.n}) on {args.device}", flush=True)
        t0 = time.perf_counter()
        shape = PipelineShape(resolution=args.resolution, unet_widths=tuple(c // narrow for c in SD_UNET_WIDTHS),
                              vae_widths=tuple(c // narrow for c in SD_VAE_WIDTHS), norm_groups=32 // narrow)
        sd = load_diffusers_img2img(str(save_random_pipeline(Path(folder) / "sd", shape)), args.device)
        built = time.perf_counter() - t0
        sd_s = timed(sd, source, args.n, args.steps, args.strength, args.repeat)
        print(f"diffusers-img2img {sd_label}, {args.resolution}x{args.resolution}, {args.steps} steps at strength "
              f"{args.strength}: {sd_s:.3f} s/image (batch of {args.n}) on {args.device} (built in {built:.0f} s)")
    print("(best of --repeat runs after a warm-up)")
    print_result("generate_speed", {
        "device": args.device, "steps": args.steps, "strength": args.strength, "n": args.n,
        "loupe_ddpm": {"size": size, "seconds_per_image": own_s},
        "diffusers_img2img": {"size": args.resolution, "narrower": narrow, "seconds_per_image": sd_s},
    }, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
