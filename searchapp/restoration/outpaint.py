"""Crop reconstruction: outpainting a cropped query back to a full frame.

The crop is scaled into the middle of a square canvas (its long side `share` of the canvas's,
about what a crop of half the picture's area spans) and a diffusers inpainting pipeline
(`LOUPE_OUTPAINT_MODEL`, e.g. a Stable Diffusion inpainting checkpoint; `transformers` needed)
paints the rest. diffusers' mask polarity: white (255) is repainted, black (0) is kept. The
crop's own pixels are pasted back over the result, so only the surroundings are invented.
Without such weights, cropped queries rely on the regional index alone.
"""

from __future__ import annotations

from PIL import Image

from .pixel import StageUnavailable, from_pretrained_offline_first

REPAINT, KEEP = 255, 0


def outpaint_canvas(crop: Image.Image, size: int, share: float = 0.7) -> tuple[Image.Image, Image.Image, tuple[int, int, int, int]]:
    """(canvas, mask, box): `crop` scaled so its long side is `share` of `size`, centred on a
    `size`² canvas of its mean colour; the mask repaints everything but the crop's box."""
    scale = share * size / max(crop.size)
    w, h = max(1, round(crop.width * scale)), max(1, round(crop.height * scale))
    scaled = crop.convert("RGB").resize((w, h), Image.BICUBIC)
    mean = tuple(int(c) for c in scaled.resize((1, 1), Image.BOX).getpixel((0, 0)))
    canvas = Image.new("RGB", (size, size), mean)
    x, y = (size - w) // 2, (size - h) // 2
    canvas.paste(scaled, (x, y))
    mask = Image.new("L", (size, size), REPAINT)
    mask.paste(KEEP, (x, y, x + w, y + h))
    return canvas, mask, (x, y, w, h)


class Outpainter:
    """A diffusers inpainting pipeline used to extend crops to full frames."""

    def __init__(self, pipe, steps: int = 20):
        self.pipe = pipe
        self.steps = steps
        self.size = pipe.unet.config.sample_size * pipe.vae_scale_factor

    def outpaint(self, crop: Image.Image, seed: int = 0) -> Image.Image:
        import torch

        canvas, mask, (x, y, w, h) = outpaint_canvas(crop, self.size)
        generator = torch.Generator("cpu").manual_seed(seed)
        painted = self.pipe(prompt="", image=canvas, mask_image=mask, strength=1.0, num_inference_steps=self.steps,
                            guidance_scale=1.0, generator=generator, height=self.size, width=self.size).images[0]
        painted = painted.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        painted.paste(canvas.crop((x, y, x + w, y + h)), (x, y))  # keep every real pixel
        return painted


def load_outpainter(model: str, device: str, steps: int = 20, dtype=None) -> Outpainter:
    """The inpainting pipeline LOUPE_OUTPAINT_MODEL names (a folder or hub id; local cache first),
    on `device` at `dtype` (None: half precision on CUDA)."""
    try:
        from diffusers import AutoPipelineForInpainting
    except ImportError as err:  # diffusers without transformers
        raise StageUnavailable(f"outpainting needs diffusers and transformers: {err}") from None
    from searchapp.diffusion.precision import default_dtype

    pipe = from_pretrained_offline_first(AutoPipelineForInpainting, model, ("",),
                                         torch_dtype=dtype or default_dtype(device), safety_checker=None,
                                         requires_safety_checker=False)
    if pipe is None:
        raise StageUnavailable(f"cannot load an inpainting pipeline from {model!r} (LOUPE_OUTPAINT_MODEL): download "
                               "it once with network access, or give a local folder")
    pipe.set_progress_bar_config(disable=True)
    return Outpainter(pipe.to(device), steps)
