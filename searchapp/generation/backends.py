"""The two ways of making variations, chosen by LOUPE_GENERATE_MODEL:

- unset, or a folder trained by `loupe train-generator` (default LOUPE_HOME/generator):
  Loupe's own small pixel-space DDPM, used SDEdit-style (low resolution; offline);
- a diffusers image-to-image pipeline (a folder holding `model_index.json`, or a hub id):
  a Stable Diffusion family model run as img2img at the requested strength (needs the
  `generate` extra: transformers). Hub ids are looked up in the local cache first.

Each backend is given its parts (UNet and scheduler, or a pipeline) already on their device;
`load_own_generator` and `load_diffusers_img2img` load them, `load_generator` picks one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from PIL import Image

from indexer.errors import LoupeError

log = logging.getLogger(__name__)

OWN_MODEL_FOLDER = "generator"  # under LOUPE_HOME


class GeneratorUnavailable(LoupeError):
    """No generator is configured or its weights cannot be loaded."""

    code = "generator_unavailable"


@dataclass(frozen=True)
class Variations:
    """What a request asks for."""

    n: int
    strength: float
    seed: int
    steps: int


class Generator(Protocol):
    def describe(self) -> dict: ...

    def generate(self, source: Image.Image, request: Variations, on_step: Callable[[int, int], None],
                 cancelled: Callable[[], bool]) -> list[Image.Image]: ...


class OwnGenerator:
    """Loupe's DDPM (`searchapp.diffusion`): a `UNet2DModel` and a DDIM scheduler of its noise
    schedule, sampled SDEdit-style from the noised source. Loaded by `load_own_generator`."""

    def __init__(self, unet, scheduler, model: str, device: str, trained_steps: int | None = None):
        self.unet = unet
        self.scheduler = scheduler
        self.model = model
        self.device = device
        self.trained_steps = trained_steps
        self.resolution = int(unet.config.sample_size)

    def describe(self) -> dict:
        size = self.resolution
        return {"backend": "loupe-ddpm", "model": self.model, "resolution": size, "low_resolution": True,
                "note": f"Loupe's own small diffusion model, trained on this collection: {size}x{size} pixels",
                "trained_steps": self.trained_steps, "device": self.device}

    def generate(self, source, request, on_step, cancelled):
        from ..diffusion.sampling import sdedit, to_images, to_tensor

        x = sdedit(self.unet, self.scheduler, to_tensor(source, self.resolution), request.n, request.strength,
                   request.steps, request.seed, on_step=on_step, cancelled=cancelled)
        return to_images(x)


class DiffusersImg2Img:
    """A pretrained diffusers image-to-image pipeline (Stable Diffusion family), already on its
    device. Loaded by `load_diffusers_img2img`."""

    def __init__(self, pipe, model: str, device: str):
        self.pipe = pipe
        self.model = model
        self.device = device
        self.resolution = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)

    def describe(self) -> dict:
        return {"backend": "diffusers-img2img", "model": self.model, "resolution": self.resolution,
                "low_resolution": self.resolution < 256, "pipeline": type(self.pipe).__name__, "device": self.device,
                "note": f"{type(self.pipe).__name__} from {self.model}"}

    def generate(self, source, request, on_step, cancelled):
        import torch

        from ..diffusion.sampling import Cancelled

        image = source.convert("RGB").resize((self.resolution, self.resolution), Image.BICUBIC)
        total = max(1, int(request.steps * request.strength))
        stopped = []

        def step_end(pipe, step, timestep, kwargs):
            on_step(min(step + 1, total), total)
            if cancelled():
                stopped.append(True)
                pipe._interrupt = True
            return kwargs

        generators = [torch.Generator("cpu").manual_seed(request.seed + i) for i in range(request.n)]
        out = self.pipe(prompt=[""] * request.n, image=[image] * request.n, strength=request.strength,
                        num_inference_steps=request.steps, guidance_scale=1.0, generator=generators,
                        callback_on_step_end=step_end, output_type="pil")
        if stopped:
            raise Cancelled()
        return list(out.images)


def load_own_generator(folder: Path, device: str, dtype=None) -> OwnGenerator:
    """The generator `loupe train-generator` left in `folder`, on `device` at `dtype` (None: half
    precision on CUDA)."""
    from ..diffusion.training import read_info
    from ..diffusion.unet import UNetConfig, load_unet

    info = read_info(folder)
    if info is None or not (folder / "unet").is_dir():
        raise GeneratorUnavailable(
            f"no trained generator in {folder}: run `loupe train-generator` (it trains on the indexed "
            "pictures, minutes on a CPU), or set LOUPE_GENERATE_MODEL to a diffusers img2img pipeline"
        )
    scheduler = UNetConfig.from_dict(info["config"]).create_scheduler("ddim")
    return OwnGenerator(load_unet(folder, device, dtype), scheduler, str(folder), device, info.get("steps"))


def load_diffusers_img2img(model: str, device: str, dtype=None) -> DiffusersImg2Img:
    """The img2img pipeline `model` names (a folder, or a hub id looked up in the local cache
    first), on `device` at `dtype` (None: half precision on CUDA)."""
    try:
        from diffusers import AutoPipelineForImage2Image
    except ImportError as err:
        raise GeneratorUnavailable(f"LOUPE_GENERATE_MODEL needs diffusers: {err}") from err
    from ..diffusion.precision import default_dtype

    kwargs = dict(torch_dtype=dtype or default_dtype(device), safety_checker=None, requires_safety_checker=False)
    try:
        pipe = AutoPipelineForImage2Image.from_pretrained(model, local_files_only=True, **kwargs)
    except Exception as local_error:
        if Path(model).exists():
            raise GeneratorUnavailable(f"cannot load the pipeline in {model}: {_short(local_error)}") from local_error
        try:  # a hub id not in the cache yet
            pipe = AutoPipelineForImage2Image.from_pretrained(model, **kwargs)
        except Exception as err:
            raise GeneratorUnavailable(
                f"cannot load {model!r} (LOUPE_GENERATE_MODEL): {_short(err)}. Download it once with network "
                "access, or point LOUPE_GENERATE_MODEL at a local pipeline folder"
            ) from err
    pipe.set_progress_bar_config(disable=True)
    return DiffusersImg2Img(pipe.to(device), model, device)


def load_generator(model: str | None, home: Path, device: str) -> Generator:
    """The backend LOUPE_GENERATE_MODEL names (see the module's docstring)."""
    if not model:
        return load_own_generator(home / OWN_MODEL_FOLDER, device)
    folder = Path(model).expanduser()
    if (folder / "model.json").is_file():
        return load_own_generator(folder, device)
    return load_diffusers_img2img(model, device)


def generator_configured(model: str | None, home: Path) -> bool:
    """A cheap check before queueing work: is there anything to load at all?"""
    if model:
        return True
    return (home / OWN_MODEL_FOLDER / "model.json").is_file()


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]
