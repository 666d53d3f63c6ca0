"""A small fully convolutional `UNet2DModel` (no attention), saved and loaded with diffusers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

WEIGHTS_FOLDER = "unet"  # under a model folder: diffusers' config.json + weights


@dataclass(frozen=True)
class UNetConfig:
    """The network and its noise schedule. The default fits CPU training: 64 px, about 6M
    parameters, convolutions only (so it also runs on patches of any size)."""

    sample_size: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"

    def create_unet(self, seed: int = 0):
        import torch
        from diffusers import UNet2DModel

        levels = len(self.block_out_channels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return UNet2DModel(
                sample_size=self.sample_size,
                in_channels=3,
                out_channels=3,
                layers_per_block=self.layers_per_block,
                block_out_channels=tuple(self.block_out_channels),
                down_block_types=("DownBlock2D",) * levels,
                up_block_types=("UpBlock2D",) * levels,
                norm_num_groups=self.norm_num_groups,
            )

    def create_scheduler(self, kind: str = "ddpm"):
        """The training schedule (`ddpm`) or the same schedule for few-step sampling (`ddim`)."""
        from diffusers import DDIMScheduler, DDPMScheduler

        ddpm = DDPMScheduler(num_train_timesteps=self.train_timesteps, beta_schedule=self.beta_schedule)
        return ddpm if kind == "ddpm" else DDIMScheduler.from_config(ddpm.config)

    def as_dict(self) -> dict:
        return {**asdict(self), "block_out_channels": list(self.block_out_channels)}

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        return cls(**{**data, "block_out_channels": tuple(data["block_out_channels"])})


def save_unet(unet, folder: Path) -> None:
    """Save with diffusers (`save_pretrained`) into `folder/unet`: written in full beside the
    old folder, then swapped in by two renames (a folder, so `indexer.atomic` does not apply)."""
    import shutil

    target = folder / WEIGHTS_FOLDER
    tmp = folder / f".{WEIGHTS_FOLDER}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(tmp)
    old = folder / f".{WEIGHTS_FOLDER}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def load_unet(folder: Path, device: str = "cpu", dtype=None):
    """The saved network, in eval mode, on `device` at `dtype` (None: `default_dtype(device)`)."""
    from diffusers import UNet2DModel

    from .precision import default_dtype

    dtype = dtype or default_dtype(device)
    unet = UNet2DModel.from_pretrained(folder / WEIGHTS_FOLDER, torch_dtype=dtype, low_cpu_mem_usage=False)
    return unet.to(device).eval()
