"""Pixel-space diffusion purification of a noisy query (the idea of DiffPure, Nie et al. 2022).

A picture x = x₀ + n with Gaussian noise of σ grey levels is, once scaled by √ᾱₜ, a sample of
the diffusion's forward process at the timestep t* where √(1 − ᾱₜ)/√ᾱₜ = σ/127.5 (the model
works in [-1, 1]). Starting the reverse process there removes noise of that level and keeps
what is below it: one network call predicts x₀ directly (`steps=1`), or a few deterministic
DDIM steps walk t* down to 0.

Backends: Loupe's own fully convolutional denoiser (`loupe train-restorer`, a folder with
`model.json`), or any diffusers `UNet2DModel` with its noise schedule, by local path or hub id
(`LOUPE_RESTORE_MODEL`; read from the local cache first, so it works offline once fetched).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from indexer.errors import LoupeError

OWN_FOLDER = "restorers/pixel"  # under LOUPE_HOME


class StageUnavailable(LoupeError):
    """A restoration stage was asked for but its model is missing or cannot be loaded."""

    code = "restore_unavailable"


def timestep_for(alphas_cumprod, sigma: float) -> int:
    """The timestep whose noise, relative to the scaled signal, is σ grey levels (0: none)."""
    if sigma <= 0:
        return 0
    alphas = np.asarray(alphas_cumprod, dtype=np.float64)
    ratio = np.sqrt((1.0 - alphas) / alphas)  # increasing in t
    return int(min(np.searchsorted(ratio, sigma / 127.5), len(ratio) - 1))


class PixelRestorer:
    """A noise-predicting `UNet2DModel` and the ᾱ schedule it was trained with."""

    def __init__(self, unet, alphas_cumprod, source: str):
        self.unet = unet
        self.alphas = np.asarray(alphas_cumprod, dtype=np.float64)
        self.source = source
        levels = len(unet.config.block_out_channels)
        self.multiple = 2 ** (levels - 1)

    def timestep_for(self, sigma: float) -> int:
        return timestep_for(self.alphas, sigma)

    def purify(self, pixels: np.ndarray, sigma: float, steps: int = 1) -> np.ndarray:
        """`pixels` ((H, W, 3) uint8) with noise of about `sigma` grey levels removed, by one
        x₀ prediction (`steps` 1) or `steps` DDIM steps from t* to 0."""
        import torch

        start = self.timestep_for(sigma)
        if start == 0:
            return pixels
        h, w = pixels.shape[:2]
        device, dtype = self.unet.device, self.unet.dtype
        x = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
        pad_h, pad_w = (-h) % self.multiple, (-w) % self.multiple
        if pad_h or pad_w:
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        x = x.to(device=device, dtype=dtype)
        ladder = np.unique(np.linspace(start, 0, max(1, steps) + 1).round().astype(int))[::-1]
        a = self.alphas[start]
        x = x * math.sqrt(a)  # the noisy query as a forward-process sample at t*
        with torch.inference_mode():
            for t, t_next in zip(ladder[:-1], ladder[1:]):
                a, a_next = self.alphas[t], (self.alphas[t_next] if t_next > 0 else 1.0)
                eps = self.unet(x, torch.tensor([int(t)], device=device)).sample
                x0 = (x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
                x = x0.clamp(-1, 1) if t_next == 0 else math.sqrt(a_next) * x0 + math.sqrt(1.0 - a_next) * eps
        out = x[0, :, :h, :w].float().clamp(-1, 1).add(1).mul(127.5).round().byte()
        return out.permute(1, 2, 0).cpu().numpy()


def load_pixel_restorer(model: str | None, home: Path, device: str) -> PixelRestorer:
    """The restorer LOUPE_RESTORE_MODEL names, or Loupe's own trained one under LOUPE_HOME."""
    folder = Path(model).expanduser() if model else home / OWN_FOLDER
    if (folder / "model.json").is_file():
        return load_own_pixel_restorer(folder, device)
    if not model:
        raise StageUnavailable(
            "no pixel restorer is trained: run `loupe train-restorer`, or set LOUPE_RESTORE_MODEL to a diffusers "
            "UNet2DModel (a folder or hub id)")
    return load_diffusers_pixel_restorer(model, device)


def load_own_pixel_restorer(folder: Path, device: str, dtype=None) -> PixelRestorer:
    """Loupe's own denoiser trained in `folder`, on `device` at `dtype` (None: half precision on CUDA)."""
    from searchapp.diffusion.unet import UNetConfig, load_unet

    info = json.loads((folder / "model.json").read_text())
    config = UNetConfig.from_dict(info["config"])
    scheduler = config.create_scheduler("ddpm")
    return PixelRestorer(load_unet(folder, device, dtype), scheduler.alphas_cumprod.numpy(), str(folder))


def load_diffusers_pixel_restorer(model: str, device: str, dtype=None) -> PixelRestorer:
    """A diffusers UNet2DModel and its DDPM schedule: from a model folder, a pipeline folder
    (`unet/`, `scheduler/`) or a hub id of either, the local cache tried first; on `device` at
    `dtype` (None: half precision on CUDA)."""
    from diffusers import DDPMScheduler, UNet2DModel

    from searchapp.diffusion.precision import default_dtype

    unet = from_pretrained_offline_first(UNet2DModel, model, ("", "unet"), torch_dtype=dtype or default_dtype(device))
    if unet is None:
        raise StageUnavailable(f"cannot load a diffusers UNet2DModel from {model!r} (LOUPE_RESTORE_MODEL): "
                               "download it once with network access, or give a local folder")
    scheduler = from_pretrained_offline_first(DDPMScheduler, model, ("", "scheduler")) or DDPMScheduler()
    return PixelRestorer(unet.to(device).eval(), scheduler.alphas_cumprod.numpy(), model)


def from_pretrained_offline_first(cls, model: str, subfolders: tuple[str, ...], **kwargs):
    """`cls.from_pretrained` from the first subfolder that works: local files first, then
    (for a hub id, not a local path) the network."""
    path = Path(model).expanduser()
    source = str(path) if path.exists() else model
    for local_only in ([True] if path.exists() else [True, False]):
        for subfolder in subfolders:
            try:
                return cls.from_pretrained(source, subfolder=subfolder or None, local_files_only=local_only, **kwargs)
            except Exception:  # missing files or a config of another class: try the next place
                continue
    return None
