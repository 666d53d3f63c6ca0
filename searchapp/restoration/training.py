"""Training the restoration models on the indexed pictures (`loupe train-restorer`).

- pixel: Loupe's own denoiser, a fully convolutional `UNet2DModel` trained (searchapp.diffusion.
  training) on random patches of the indexed pictures as the embedder sees them (squash-resized
  to its input size), at the low timesteps whose noise a query can carry (up to MAX_SIGMA grey
  levels). Budgeted, checkpointed and resumable.
- embedding: the conditional diffusion model over CLIP embeddings (`embedding`), trained on the
  index's own pictures under synthetic damage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from indexer.library import Library

from .embedding import EmbeddingConfig, EmbeddingTrainSummary, PairOptions, train_embedding_restorer, training_pairs
from .pixel import timestep_for

MAX_SIGMA = 80.0  # grey levels at the model's input: noisier queries are past restoring
PATCH_SIZE = 64
PIXEL_WIDTHS = (32, 64, 128)


@dataclass(frozen=True)
class PixelTraining:
    budget_seconds: float = 1200.0
    batch_size: int = 16
    max_pictures: int = 20_000
    input_size: int = 224  # the embedder's input side
    patch_size: int = PATCH_SIZE
    max_steps: int | None = None  # stop after this many steps, even within the budget
    progress: bool = True


def train_pixel_restorer(library: Library, folder: Path, options: PixelTraining, device: str):
    """Train (or resume) the pixel denoiser in `folder`; returns a TrainSummary."""
    from indexer.errors import LoupeError
    from searchapp.diffusion.training import TrainOptions, load_pictures, read_info, train
    from searchapp.diffusion.unet import UNetConfig

    paths = library.indexed_paths()
    if not paths:
        raise LoupeError("nothing is indexed yet: the restorer trains on the indexed pictures (loupe index PATH)")
    info = read_info(folder)
    patch = min(options.patch_size, options.input_size // 8 * 8)  # a small model's input may be smaller
    config = UNetConfig.from_dict(info["config"]) if info else UNetConfig(
        sample_size=patch, block_out_channels=PIXEL_WIDTHS)
    top = timestep_for(config.create_scheduler("ddpm").alphas_cumprod.numpy(), MAX_SIGMA) + 1
    pictures = load_pictures(paths, config.sample_size, options.max_pictures, squash=options.input_size)
    train_options = TrainOptions(budget_seconds=options.budget_seconds, batch_size=options.batch_size,
                                 max_timestep=top, max_steps=options.max_steps, progress=options.progress)
    return train(folder, pictures, config, train_options, device=device)


def train_embedding(library: Library, embedder, folder: Path, budget_seconds: float = 120.0,
                    pairs: PairOptions = PairOptions(), max_steps: int | None = None,
                    progress: bool = True) -> EmbeddingTrainSummary:
    """Embed damaged copies of the indexed pictures and train the embedding restorer on them."""
    from indexer.errors import LoupeError

    pictures = library.indexed_pictures()
    if not pictures:
        raise LoupeError("nothing is indexed yet: the restorer trains on the indexed pictures (loupe index PATH)")
    ids = [i for i, _ in pictures]
    clean = library.stored_vectors_of(ids)
    clean_pairs, damaged = training_pairs([p for _, p in pictures], clean, embedder.encode_images, pairs,
                                          progress=progress)
    identity = library.stored_identity().as_dict()
    steps = {} if max_steps is None else {"max_steps": max_steps}
    return train_embedding_restorer(folder, clean_pairs, damaged, identity, EmbeddingConfig(dim=clean.shape[1]),
                                    budget_seconds=budget_seconds, progress=progress, **steps)
