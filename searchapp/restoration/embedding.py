"""Embedding-space reconstruction: a conditional diffusion model over CLIP embeddings.

x₀ is an indexed picture's embedding (unit length, scaled by √dim so its coordinates have unit
variance) and c the embedding of a damaged copy of that picture. A small residual MLP
f(xₜ, t, c) predicts x₀; it is trained with diffusers' `DDPMScheduler` noise on the index's own
pictures under random damage (`corruptions.random_damage`), and sampled with `DDIMScheduler` from
seeded noise, conditioned on the query's embedding. The result is normalised and searched
like any query vector.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence, TextIO

import numpy as np

from indexer.atomic import atomic_path, atomic_write
from indexer.embedder import ModelIdentity

from .corruptions import random_damage
from .pixel import StageUnavailable

OWN_FOLDER = "restorers/embedding"  # under LOUPE_HOME
WEIGHTS_FILE = "network.pt"
INFO_FILE = "model.json"


@dataclass(frozen=True)
class EmbeddingConfig:
    dim: int
    hidden: int = 1024
    blocks: int = 3
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    sample_steps: int = 10

    def create_network(self, seed: int = 0):
        """The denoiser f(xₜ, t, c) → x₀ (`denoiser.EmbeddingDenoiser`), seeded."""
        import torch

        from .denoiser import EmbeddingDenoiser

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return EmbeddingDenoiser(self.dim, self.hidden, self.blocks)

    def create_scheduler(self, kind: str = "ddpm"):
        from diffusers import DDIMScheduler, DDPMScheduler

        ddpm = DDPMScheduler(num_train_timesteps=self.train_timesteps, beta_schedule=self.beta_schedule,
                             prediction_type="sample", clip_sample=False)
        return ddpm if kind == "ddpm" else DDIMScheduler.from_config(ddpm.config)


class EmbeddingRestorer:
    """A trained denoiser (`denoiser.EmbeddingDenoiser`) and the DDIM scheduler it is sampled
    with over `sample_steps` steps: maps a damaged query's embedding towards its clean picture's.
    Loaded by `load_embedding_restorer`."""

    def __init__(self, network, scheduler, sample_steps: int):
        self.network = network.eval()
        self.scheduler = scheduler
        self.sample_steps = sample_steps

    def restore(self, vector: np.ndarray, seed: int = 0) -> np.ndarray:
        """The reconstructed (unit) embedding for a query embedding `vector` ((D,) or (1, D))."""
        import torch

        scale = math.sqrt(self.network.dim)
        c = torch.from_numpy(np.asarray(vector, np.float32).reshape(1, -1) * scale)
        x = torch.randn(c.shape, generator=torch.Generator("cpu").manual_seed(seed))
        self.scheduler.set_timesteps(self.sample_steps)
        with torch.inference_mode():
            for t in self.scheduler.timesteps:
                predicted = self.network(x, t.reshape(1), c)
                x = self.scheduler.step(predicted, t, x, eta=0.0).prev_sample
        out = x[0].numpy().astype(np.float32)
        return out / max(float(np.linalg.norm(out)), 1e-12)


# -- training ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairOptions:
    copies: int = 16  # damaged copies per picture, each of a random family (some left clean)
    max_pictures: int = 2000
    seed: int = 1_000_003


def training_pairs(paths: Sequence[str], clean: np.ndarray, embed: Callable[[list], np.ndarray],
                   options: PairOptions = PairOptions(), progress: bool = False,
                   stream: TextIO | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(clean, damaged) embedding pairs: for each picture file (with its stored embedding in
    `clean`), `copies` randomly damaged copies, embedded with `embed` (PIL images → (N, D))."""
    from PIL import Image
    from tqdm import tqdm

    from indexer.images import load_image_file

    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(paths))[: options.max_pictures]
    targets, damaged = [], []
    for i in tqdm(order, desc="damaged copies", unit="picture", disable=not progress, file=stream or sys.stderr):
        try:
            picture = load_image_file(Path(paths[i])).image.convert("RGB")
        except Exception:  # a file gone or broken since indexing
            continue
        copies: list[Image.Image] = [random_damage(picture, rng)[0] for _ in range(options.copies)]
        damaged.append(embed(copies))
        targets.append(np.repeat(clean[i][None], len(copies), axis=0))
    if not damaged:
        raise ValueError("no readable pictures to learn from")
    return np.concatenate(targets).astype(np.float32), np.concatenate(damaged).astype(np.float32)


@dataclass(frozen=True)
class EmbeddingTrainSummary:
    steps: int
    seconds: float
    pairs: int
    first_loss: float
    last_loss: float

    def line(self) -> str:
        return (f"embedding restorer: {self.steps} steps in {self.seconds:.0f} s on {self.pairs} pairs; "
                f"loss {self.first_loss:.4f} -> {self.last_loss:.4f}")


def train_embedding_restorer(folder: Path, clean: np.ndarray, damaged: np.ndarray, identity: dict,
                             config: EmbeddingConfig, budget_seconds: float = 120.0, max_steps: int = 4000,
                             batch_size: int = 256, learning_rate: float = 1e-3, seed: int = 0,
                             progress: bool = False, stream: TextIO | None = None) -> EmbeddingTrainSummary:
    """Train the denoiser on (clean, damaged) pairs for at most `budget_seconds` or `max_steps`,
    then save it (weights and `model.json`, which records the CLIP model it belongs to)."""
    import torch
    from tqdm import tqdm

    network = config.create_network(seed).train()
    scheduler = config.create_scheduler("ddpm")
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    lr_decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max_steps)
    scale = math.sqrt(config.dim)
    x0_all = torch.from_numpy(clean * scale)
    c_all = torch.from_numpy(damaged * scale)
    generator = torch.Generator("cpu").manual_seed(seed)
    losses: list[float] = []
    started = time.monotonic()
    with tqdm(total=max_steps, desc="embedding restorer", unit="step", disable=not progress,
              file=stream or sys.stderr) as bar:
        for _ in range(max_steps):
            if time.monotonic() - started >= budget_seconds:
                break
            idx = torch.randint(0, len(x0_all), (min(batch_size, len(x0_all)),), generator=generator)
            x0, c = x0_all[idx], c_all[idx]
            noise = torch.randn(x0.shape, generator=generator)
            t = torch.randint(0, config.train_timesteps, (len(idx),), generator=generator)
            loss = torch.nn.functional.mse_loss(network(scheduler.add_noise(x0, noise, t), t, c), x0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_decay.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix_str(f"loss {np.mean(losses[-50:]):.4f}", refresh=False)
    seconds = time.monotonic() - started
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        torch.save(network.state_dict(), tmp)
    info = {"config": asdict(config), "model": identity, "pairs": len(clean), "steps": len(losses),
            "seconds": round(seconds, 1), "loss": float(np.mean(losses[-50:])) if losses else None}
    atomic_write(folder / INFO_FILE, json.dumps(info, indent=2))
    return EmbeddingTrainSummary(len(losses), seconds, len(clean), losses[0] if losses else float("nan"),
                                 float(np.mean(losses[-50:])) if losses else float("nan"))


def trained_for(info: dict, identity: dict) -> bool:
    """Whether a restorer whose `model.json` says `info` was trained for the CLIP model `identity`
    (both as `ModelIdentity.as_dict` writes them), compared as `ModelIdentity.same_weights` does."""
    trained, wanted = ModelIdentity.from_dict(info.get("model")), ModelIdentity.from_dict(identity)
    return trained is not None and wanted is not None and trained.same_weights(wanted)


def load_embedding_restorer(folder: Path, identity: dict) -> EmbeddingRestorer:
    """The restorer trained in `folder` for the CLIP model `identity` (as stored with the index,
    `ModelIdentity.as_dict`), on the CPU."""
    import torch

    try:
        info = json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError):
        raise StageUnavailable("no embedding restorer is trained: run `loupe train-restorer --stage embedding`") from None
    if not trained_for(info, identity):
        raise StageUnavailable("the embedding restorer was trained for another model than the index's: "
                               "run `loupe train-restorer --stage embedding` again")
    config = EmbeddingConfig(**info["config"])
    network = config.create_network()
    network.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return EmbeddingRestorer(network, config.create_scheduler("ddim"), config.sample_steps)
