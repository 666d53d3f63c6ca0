"""The embedding restorer's network, f(xₜ, t, c) → x₀: a residual MLP over the noisy embedding,
the condition and sinusoidal timestep features. Imported only where torch runs (training,
loading); `embedding.EmbeddingConfig.create_network` builds it."""

from __future__ import annotations

import math

import torch

TIMESTEP_FEATURES = 64


def timestep_features(t: torch.Tensor, width: int = TIMESTEP_FEATURES) -> torch.Tensor:
    """Sinusoidal features of the timesteps `t` ((N,) tensor)."""
    half = width // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResidualBlock(torch.nn.Module):
    """h + MLP(LayerNorm(h))."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.mlp(self.norm(h))


class EmbeddingDenoiser(torch.nn.Module):
    """Predicts the clean embedding x₀ from the noisy one `x` at timesteps `t`, given the damaged
    query's embedding `c` (all (N, dim) but `t`, (N,))."""

    def __init__(self, dim: int, hidden: int, blocks: int):
        super().__init__()
        self.dim = dim
        self.inp = torch.nn.Linear(2 * dim + TIMESTEP_FEATURES, hidden)
        self.blocks = torch.nn.ModuleList(ResidualBlock(hidden) for _ in range(blocks))
        self.out = torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.inp(torch.cat([x, c, timestep_features(t)], dim=1))
        for block in self.blocks:
            h = block(h)
        return self.out(h)
