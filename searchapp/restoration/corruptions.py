"""Random damage for training the restorers (`loupe train-restorer`): broad families, never a
fixed list, so a restorer learns damage in general rather than a benchmark's exact functions.

Families: Gaussian noise (on the picture or on a small copy), crops of any area and aspect,
JPEG re-compression, blur, downscaling, rotation with black or coloured corners, caption text
in Pillow's own font at several sizes and colours, mirroring, framing in a larger canvas, and
chains of two or three of these. Every parameter is drawn from a range with the HELD_OUT bands
cut out: those values are kept for the robustness benchmark (bench/damage.py, with its own code
and a caption font this module never uses), so the benchmark reports damage no restorer saw.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

# Parameter bands only the benchmark uses (its kinds noise15/35/60, crop70/40/20, combo's 50%
# crop, σ 25 and JPEG 30, jpeg10, blur3, down25, rotate10): training never draws inside them.
HELD_OUT = {
    "sigma": ((12.0, 18.0), (22.0, 28.0), (31.0, 39.0), (55.0, 65.0)),
    "area": ((0.17, 0.23), (0.36, 0.44), (0.46, 0.54), (0.66, 0.74)),
    "quality": ((8.0, 12.0), (27.0, 33.0)),
    "blur": ((2.6, 3.4),),
    "scale": ((0.22, 0.28),),
    "degrees": ((8.0, 12.0),),
}
SMALL_SIDE = 256
FAMILIES = ("clean", "noise", "smallnoise", "crop", "jpeg", "blur", "downscale", "rotate", "text", "mirror",
            "frame", "chain")
WORDS = ("LOOK AT THIS", "MONDAY MOOD", "NOBODY:", "BREAKING NEWS", "WHEN YOU SEE IT", "SO TRUE", "MOOD",
         "THIS IS FINE", "LOL")


def draw(rng: np.random.Generator, low: float, high: float, held_out: tuple = ()) -> float:
    """A uniform draw from [low, high] outside the `held_out` bands."""
    for _ in range(1000):
        value = float(rng.uniform(low, high))
        if not any(a <= value <= b for a, b in held_out):
            return value
    raise ValueError(f"[{low}, {high}] lies inside the held-out bands {held_out}")


def add_noise(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32)
    noisy = pixels + rng.normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def random_crop(img: Image.Image, area: float, rng: np.random.Generator, max_aspect: float = 2.0) -> Image.Image:
    """A crop keeping `area` of the picture, at a random position and aspect."""
    w, h = img.size
    aspect = float(np.exp(rng.uniform(-np.log(max_aspect), np.log(max_aspect))))
    cw = int(round(min(w, np.sqrt(area * w * h * aspect))))
    ch = int(round(min(h, area * w * h / max(cw, 1))))
    cw, ch = max(cw, 1), max(ch, 1)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def overlay_text(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One to four lines of caption text in Pillow's bundled font, random size and colour."""
    out = img.copy()
    w, h = out.size
    size = max(10, int(h * rng.uniform(0.04, 0.14)))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font
        font = ImageFont.load_default()
    painter = ImageDraw.Draw(out)
    lines = int(rng.integers(1, 5))
    top = int(rng.integers(0, max(1, h - lines * size)))
    fill, stroke = _colour(rng), _colour(rng)
    for line in range(lines):
        painter.text((int(w * rng.uniform(0.0, 0.3)), top + line * size), WORDS[int(rng.integers(0, len(WORDS)))],
                     fill=fill, font=font, stroke_width=max(1, size // 12), stroke_fill=stroke)
    return out


def frame(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The picture pasted into a larger plain canvas (a screenshot's borders, a collage)."""
    w, h = img.size
    scale = rng.uniform(1.15, 1.8)
    canvas = Image.new("RGB", (int(w * scale), int(h * rng.uniform(1.0, scale))), _colour(rng))
    x, y = int(rng.integers(0, canvas.width - w + 1)), int(rng.integers(0, canvas.height - h + 1))
    canvas.paste(img, (x, y))
    return canvas


def _rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    degrees = draw(rng, 1.0, 25.0, HELD_OUT["degrees"]) * (1 if rng.random() < 0.5 else -1)
    fill = (0, 0, 0) if rng.random() < 0.5 else _colour(rng)
    return img.rotate(degrees, resample=Image.BICUBIC, expand=True, fillcolor=fill)


def _small_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    small = img.copy()
    small.thumbnail((SMALL_SIDE, SMALL_SIDE), Image.BICUBIC)
    return add_noise(small, draw(rng, 5.0, 80.0, HELD_OUT["sigma"]), rng)


def _downscale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    factor = draw(rng, 0.1, 0.6, HELD_OUT["scale"])
    return img.resize((max(1, int(img.width * factor)), max(1, int(img.height * factor))), Image.BICUBIC)


SINGLE: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "noise": lambda img, rng: add_noise(img, draw(rng, 5.0, 80.0, HELD_OUT["sigma"]), rng),
    "smallnoise": _small_noise,
    "crop": lambda img, rng: random_crop(img, draw(rng, 0.12, 0.92, HELD_OUT["area"]), rng),
    "jpeg": lambda img, rng: jpeg(img, int(round(draw(rng, 5.0, 70.0, HELD_OUT["quality"])))),
    "blur": lambda img, rng: img.filter(ImageFilter.GaussianBlur(draw(rng, 0.8, 5.0, HELD_OUT["blur"]))),
    "downscale": _downscale,
    "rotate": _rotate,
    "text": overlay_text,
    "mirror": lambda img, rng: ImageOps.mirror(img),
    "frame": frame,
}


def random_damage(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """`img` under one damage drawn from FAMILIES (a chain applies two or three others in turn);
    returns the damaged picture and the family's name."""
    family = FAMILIES[int(rng.integers(0, len(FAMILIES)))]
    if family == "clean":
        return img, family
    if family != "chain":
        return SINGLE[family](img, rng), family
    names = list(SINGLE)
    out = img
    for i in rng.choice(len(names), size=int(rng.integers(2, 4)), replace=False):
        out = SINGLE[names[int(i)]](out, rng)
    return out, family
