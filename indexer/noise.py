"""Noise level of a picture at the resolution the model sees it (Immerkær's estimator).

Immerkær (1996), "Fast noise variance estimation": the Laplacian-difference kernel

    M = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]

cancels locally planar image structure, so what remains over a picture is mostly noise:
σ ≈ sqrt(π/2) · Σ|I * M| / (6 (W − 2)(H − 2)), here per colour channel. Texture also passes the kernel, so a clean
picture has a floor of its own; Loupe records σ̂ of every indexed picture (on its model input,
the squash-resized pixels the embedder encodes) and compares a query against that
distribution rather than against zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

def noise_levels(pixels: Sequence | np.ndarray) -> np.ndarray:
    """σ̂ in grey levels (0–255) of each picture in `pixels`, the mean of its colour channels'
    (noise is removed channel by channel): a (N, H, W, 3) uint8 array or a list of (H, W, 3)
    uint8 arrays or tensors (on any device; the work stays there)."""
    import torch

    if len(pixels) == 0:
        return np.zeros(0, dtype=np.float32)
    if all(isinstance(p, np.ndarray) for p in pixels):
        batch = torch.from_numpy(np.stack(list(pixels)))
    else:
        batch = torch.stack([torch.as_tensor(p) for p in pixels])
    n, h, w, c = batch.shape
    with torch.inference_mode():
        planes = batch.permute(0, 3, 1, 2).reshape(n * c, 1, h, w).float()
        kernel = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]],
                              device=batch.device).view(1, 1, 3, 3)
        response = torch.nn.functional.conv2d(planes, kernel).abs().sum(dim=(1, 2, 3))
        sigma = response * math.sqrt(math.pi / 2) / (6.0 * (w - 2) * (h - 2))
    return sigma.view(n, c).mean(dim=1).float().cpu().numpy()


# A query counts as noisy only above this level, whatever the collection: below it, noise
# hardly changes an embedding (measured in docs/robustness.md).
MIN_NOISY_LEVEL = 6.0


@dataclass(frozen=True)
class NoiseProfile:
    """What noise levels the indexed pictures have (their median and 99th centile)."""

    median: float
    high: float
    pictures: int

    @classmethod
    def of(cls, levels: Sequence[float]) -> "NoiseProfile":
        values = np.asarray([v for v in levels if v is not None and np.isfinite(v)], dtype=np.float64)
        if len(values) == 0:
            return DEFAULT_PROFILE
        median, high = np.percentile(values, [50, 99])
        return cls(float(median), float(high), len(values))

    def threshold(self) -> float:
        """The level above which a query is noisier than the collection's pictures."""
        return max(self.high, MIN_NOISY_LEVEL)

    def excess(self, level: float) -> float:
        """The noise a query carries beyond a typical indexed picture's (subtracted in
        quadrature, as independent noises add)."""
        return math.sqrt(max(level * level - self.median * self.median, 0.0))

    def as_dict(self) -> dict:
        return {"median": round(self.median, 3), "p99": round(self.high, 3), "pictures": self.pictures}


DEFAULT_PROFILE = NoiseProfile(median=1.0, high=10.0, pictures=0)  # before the first calibration
