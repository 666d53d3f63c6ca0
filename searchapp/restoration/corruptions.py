"""Seeded damage to pictures: what the robustness benchmark queries with and what the
embedding restorer learns to undo (Gaussian noise, crops, re-compression, blur, downscale,
rotation, caption text, a strong combination, and noise on a small copy)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

KINDS = (
    "clean", "noise15", "noise35", "noise60", "crop70", "crop40", "crop20", "jpeg10", "blur3",
    "down25", "rotate10", "text", "combo", "smallnoise35", "smallnoise60",
)  # new kinds go last: the benchmark seeds each query by its kind's position here
SMALL_SIDE = 256  # smallnoise: the noise of a small picture (a thumbnail, a screenshot), not averaged away


def add_noise(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32)
    noisy = pixels + rng.normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def random_crop(img: Image.Image, area: float, rng: np.random.Generator) -> Image.Image:
    """A crop keeping `area` of the picture, at a random position and aspect."""
    w, h = img.size
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    cw = int(round(min(w, np.sqrt(area * w * h * aspect))))
    ch = int(round(min(h, area * w * h / max(cw, 1))))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def overlay_text(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Large caption text over a third of the picture."""
    out = img.copy()
    w, h = out.size
    draw = ImageDraw.Draw(out)
    band = h // 3
    top = int(rng.integers(0, h - band + 1))
    size = max(12, band // 3)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    words = ["WHEN YOU SEE IT", "MONDAY MOOD", "NOBODY:", "LOOK AT THIS", "BREAKING NEWS"]
    for line in range(3):
        draw.text((int(w * 0.04), top + line * size), words[int(rng.integers(0, len(words)))], fill=(255, 255, 255),
                  font=font, stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))
    return out


def corrupt(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """`img` damaged as `kind` (one of KINDS) says, drawing randomness from `rng`."""
    if kind == "clean":
        return img
    if kind.startswith("noise"):
        return add_noise(img, float(kind[5:]), rng)
    if kind.startswith("smallnoise"):
        small = img.copy()
        small.thumbnail((SMALL_SIDE, SMALL_SIDE), Image.BICUBIC)
        return add_noise(small, float(kind[10:]), rng)
    if kind.startswith("crop"):
        return random_crop(img, int(kind[4:]) / 100, rng)
    if kind == "jpeg10":
        return jpeg(img, 10)
    if kind == "blur3":
        return img.filter(ImageFilter.GaussianBlur(3))
    if kind == "down25":
        return img.resize((max(1, img.width // 4), max(1, img.height // 4)), Image.BICUBIC)
    if kind == "rotate10":
        return img.rotate(10, resample=Image.BICUBIC, expand=True, fillcolor=(0, 0, 0))
    if kind == "text":
        return overlay_text(img, rng)
    if kind == "combo":
        return jpeg(add_noise(random_crop(img, 0.5, rng), 25, rng), 30)
    raise ValueError(f"unknown corruption {kind!r} (known: {', '.join(KINDS)})")
