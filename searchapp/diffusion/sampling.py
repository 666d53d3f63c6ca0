"""SDEdit-style sampling: noise a picture to a strength, then denoise it with DDIM.

Strength s in (0, 1] starts the reverse process at the timestep s·T: small s keeps the
picture's layout and colours, s = 1 starts from pure noise. Each output i draws its noise from
its own generator seeded with `seed + i`, so the same seed and inputs give the same pictures
(on the same device), whatever `n` is.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image


class Cancelled(Exception):
    """Raised between steps when the caller asked to stop."""


def to_tensor(image: Image.Image, size: int):
    """A (1, 3, size, size) tensor in [-1, 1]: the picture squash-resized to the network's size."""
    import torch

    pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).div_(127.5).sub_(1.0)


def to_images(batch) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] → RGB PIL images."""
    pixels = batch.float().clamp(-1, 1).add(1).mul(127.5).round().to("cpu").numpy().astype(np.uint8)
    return [Image.fromarray(p.transpose(1, 2, 0)) for p in pixels]


def sdedit(unet, scheduler, source, n: int, strength: float, steps: int, seed: int,
           on_step: Callable[[int, int], None] | None = None,
           cancelled: Callable[[], bool] | None = None):
    """`n` variations of `source` ((1, 3, H, W) in [-1, 1]) by a DDIM `scheduler` over `steps`
    steps, started at `strength`. `on_step(done, total)` reports progress; `cancelled()` is
    checked between steps (raising Cancelled)."""
    import torch

    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], not {strength}")
    device, dtype = unet.device, unet.dtype
    scheduler.set_timesteps(steps)
    start = max(1, min(steps, int(round(steps * strength))))
    timesteps = scheduler.timesteps[steps - start :]
    source = source.to(device=device, dtype=dtype)
    noise = torch.cat([
        torch.randn(source.shape[1:], generator=torch.Generator("cpu").manual_seed(seed + i)).unsqueeze(0)
        for i in range(n)
    ]).to(device=device, dtype=dtype)
    x = scheduler.add_noise(source.expand(n, -1, -1, -1), noise, timesteps[:1].repeat(n))
    with torch.inference_mode():
        for done, t in enumerate(timesteps, start=1):
            if cancelled is not None and cancelled():
                raise Cancelled()
            eps = unet(x, t).sample
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
            if on_step is not None:
                on_step(done, len(timesteps))
    return x
