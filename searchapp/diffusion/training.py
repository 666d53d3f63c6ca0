"""Training a `UNetConfig` network on the indexed pictures (DDPM noise prediction), within a
wall-clock budget, with a progress bar, periodic checkpoints, and resumption.

The pictures are the indexed picture files, read once (`load_pictures`: squares a little larger
than the network's input, or squash-resized as the embedder sees them), then cropped at random
(with flips) for each batch. A model folder holds:

    unet/            the EMA weights, diffusers format (what sampling loads)
    training.pt      optimizer, raw weights, step, RNG states (what resuming loads)
    model.json       the UNetConfig and what the model was trained on, for how long
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO

import numpy as np

from indexer.atomic import atomic_path, atomic_write

from .unet import UNetConfig, save_unet

log = logging.getLogger(__name__)

STATE_FILE = "training.pt"
INFO_FILE = "model.json"
MARGIN = 1.25  # pictures are stored this much larger than the network's input, for random crops


@dataclass(frozen=True)
class TrainOptions:
    budget_seconds: float = 1500.0  # wall-clock time for this run (resuming adds to the model's total)
    batch_size: int = 16
    learning_rate: float = 3e-4
    ema_decay: float = 0.995
    checkpoint_seconds: float = 120.0
    max_timestep: int | None = None  # train only t < max_timestep (a denoiser for light noise)
    max_steps: int | None = None  # stop after this many steps in this run, even within the budget
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True)
class TrainSummary:
    steps: int  # in this run
    total_steps: int  # including earlier runs
    seconds: float
    total_seconds: float
    pictures: int
    first_loss: float
    last_loss: float  # mean of the last 50 steps
    resumed: bool

    def line(self) -> str:
        return (f"trained {self.steps} steps in {self.seconds:.0f} s on {self.pictures} pictures "
                f"({self.total_steps} steps, {self.total_seconds / 60:.1f} min in all); "
                f"loss {self.first_loss:.4f} -> {self.last_loss:.4f}")


def load_pictures(paths: Sequence[Path], size: int, limit: int, seed: int = 0, squash: int | None = None) -> np.ndarray:
    """(N, S, S, 3) uint8 squares of side S = size·MARGIN: each picture resized by its short
    side and centre-cropped; with `squash`, each picture squash-resized to S = `squash`, as the
    CLIP embedder sees it (for patches at that scale). Unreadable files are skipped."""
    from PIL import Image

    from indexer.images import load_image_file

    side = squash or int(round(size * MARGIN))
    order = np.random.default_rng(seed).permutation(len(paths))[:limit]
    out = []
    for i in sorted(order):
        try:
            image = load_image_file(Path(paths[i]), draft_size=side).image
        except Exception as err:  # a file that vanished or broke since indexing
            log.info("skipping %s: %s", paths[i], err)
            continue
        if squash:
            out.append(np.asarray(image.convert("RGB").resize((side, side), Image.BICUBIC), dtype=np.uint8))
            continue
        scale = side / min(image.size)
        w, h = max(side, round(image.width * scale)), max(side, round(image.height * scale))
        image = image.resize((w, h), Image.BICUBIC)
        x, y = (w - side) // 2, (h - side) // 2
        out.append(np.asarray(image.crop((x, y, x + side, y + side)).convert("RGB"), dtype=np.uint8))
    if not out:
        raise ValueError("no readable pictures to train on")
    return np.stack(out)


def random_batch(pictures: np.ndarray, size: int, count: int, rng: np.random.Generator):
    """A (count, 3, size, size) float tensor in [-1, 1]: random pictures, crops and flips."""
    import torch

    side = pictures.shape[1]
    idx = rng.integers(0, len(pictures), count)
    xs = rng.integers(0, side - size + 1, count)
    ys = rng.integers(0, side - size + 1, count)
    flips = rng.random(count) < 0.5
    crops = np.stack([
        (p[y : y + size, x : x + size, :][:, ::-1] if f else p[y : y + size, x : x + size, :])
        for p, x, y, f in zip(pictures[idx], xs, ys, flips)
    ])
    tensor = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
    return tensor.div_(127.5).sub_(1.0)


def train(folder: Path, pictures: np.ndarray, config: UNetConfig, options: TrainOptions,
          device: str = "cpu", progress_stream: TextIO | None = None) -> TrainSummary:
    """Train (or resume training) the model in `folder` on `pictures` for `options.budget_seconds`."""
    import torch
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / STATE_FILE
    resumed = state_path.is_file()
    if resumed:
        info = json.loads((folder / INFO_FILE).read_text())
        saved = UNetConfig.from_dict(info["config"])
        if saved != config:
            raise ValueError(f"{folder} holds a model of another configuration ({saved}); "
                             "train into a new folder or start over")
    unet = config.create_unet(options.seed).to(device).train()
    ema = config.create_unet(options.seed).to(device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=options.learning_rate, weight_decay=0.0)
    scheduler = config.create_scheduler("ddpm")
    rng = np.random.default_rng(options.seed)
    noise_source = torch.Generator("cpu").manual_seed(options.seed)  # seeded: a run is repeatable
    total_steps, total_seconds = 0, 0.0
    if resumed:
        state = torch.load(state_path, map_location=device, weights_only=False)
        unet.load_state_dict(state["raw"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        noise_source.set_state(state["torch_rng"])
        total_steps, total_seconds = state["step"], state["seconds"]
    else:
        ema.load_state_dict(unet.state_dict())
    top = options.max_timestep or config.train_timesteps
    losses: list[float] = []
    started = time.monotonic()
    last_checkpoint = started
    bar = tqdm(total=int(options.budget_seconds), unit="s", desc="training", file=progress_stream or sys.stderr,
               disable=not options.progress, dynamic_ncols=True, bar_format="{l_bar}{bar}| {n}/{total} s {postfix}")
    steps = 0
    with bar:
        while time.monotonic() - started < options.budget_seconds and steps < (options.max_steps or float("inf")):
            x0 = random_batch(pictures, config.sample_size, options.batch_size, rng).to(device)
            noise = torch.randn(x0.shape, generator=noise_source).to(device)
            t = torch.from_numpy(rng.integers(0, top, len(x0))).to(device)
            predicted = unet(scheduler.add_noise(x0, noise, t), t).sample
            loss = torch.nn.functional.mse_loss(predicted, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            _update_ema(ema, unet, options.ema_decay if total_steps + steps > 100 else 0.0)
            steps += 1
            losses.append(loss.item())
            elapsed = time.monotonic() - started
            bar.n = min(int(elapsed), bar.total)
            bar.set_postfix_str(f"step {total_steps + steps}, loss {np.mean(losses[-50:]):.4f}", refresh=False)
            bar.refresh()
            if time.monotonic() - last_checkpoint >= options.checkpoint_seconds:
                _checkpoint(folder, config, unet, ema, optimizer, rng, noise_source, total_steps + steps,
                            total_seconds + elapsed, len(pictures), options)
                last_checkpoint = time.monotonic()
    seconds = time.monotonic() - started
    _checkpoint(folder, config, unet, ema, optimizer, rng, noise_source, total_steps + steps, total_seconds + seconds,
                len(pictures), options)
    return TrainSummary(
        steps=steps, total_steps=total_steps + steps, seconds=seconds, total_seconds=total_seconds + seconds,
        pictures=len(pictures), first_loss=losses[0] if losses else float("nan"),
        last_loss=float(np.mean(losses[-50:])) if losses else float("nan"), resumed=resumed,
    )


def _update_ema(ema, model, decay: float) -> None:
    import torch

    with torch.no_grad():
        for target, source in zip(ema.parameters(), model.parameters()):
            target.mul_(decay).add_(source.detach(), alpha=1.0 - decay)
        for target, source in zip(ema.buffers(), model.buffers()):
            target.copy_(source)


def _checkpoint(folder: Path, config: UNetConfig, unet, ema, optimizer, rng, noise_source, step: int, seconds: float,
                pictures: int, options: TrainOptions) -> None:
    """Save the EMA weights (for sampling) and the training state (for resuming), each atomically."""
    import torch

    save_unet(ema, folder)
    with atomic_path(folder / STATE_FILE) as tmp:
        torch.save({"raw": unet.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                    "numpy_rng": rng.bit_generator.state, "torch_rng": noise_source.get_state(),
                    "step": step, "seconds": seconds}, tmp)
    info = {"config": config.as_dict(), "steps": step, "seconds": round(seconds, 1), "pictures": pictures,
            "max_timestep": options.max_timestep, "batch_size": options.batch_size}
    atomic_write(folder / INFO_FILE, json.dumps(info, indent=2))


def read_info(folder: Path) -> dict | None:
    """What `model.json` says about a trained model, or None when there is none."""
    try:
        return json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
