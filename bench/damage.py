"""The robustness benchmark's damage: fixed kinds with fixed parameters, written apart from the
restorers' training damage (`searchapp.restoration.corruptions`), which never draws these
parameters (its HELD_OUT bands) nor this caption font, so a benchmark query is damage that no
restorer was trained on.

Kinds whose damage uses no randomness (DETERMINISTIC) make one query per picture whatever
`--seeds` says: more seeds would only repeat the same query.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

KINDS = (
    "clean", "noise15", "noise35", "noise60", "crop70", "crop40", "crop20", "jpeg10", "blur3",
    "down25", "rotate10", "text", "combo", "smallnoise35", "smallnoise60",
    "mirror", "mirrorcrop", "framed", "heavytext",
)  # new kinds go last: each query's seed includes its kind's position here
DETERMINISTIC = frozenset({"clean", "jpeg10", "blur3", "down25", "rotate10", "mirror"})
SMALL_SIDE = 256  # smallnoise: noise on a thumbnail-sized copy, which the resize to 224 px keeps
CAPTION_FONTS = (  # never used by the training damage (Pillow's bundled font)
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Bold.ttf",
)
CAPTIONS = ("SEEN ON THE TIMELINE", "SAVE THIS ONE", "REPOST IF YOU AGREE", "VIA SOMEONE", "WOW")


def queries_per_picture(kind: str, seeds: int) -> int:
    return 1 if kind in DETERMINISTIC else seeds


def _noisy(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64)
    arr = arr + sigma * rng.standard_normal(arr.shape)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def _crop_keeping(img: Image.Image, area: float, rng: np.random.Generator) -> Image.Image:
    """A crop of `area` of the picture, aspect 0.6–1.6 (log-uniform), at a random place."""
    w, h = img.size
    aspect = float(np.exp(rng.uniform(-0.511, 0.470)))
    width = min(w, max(1, round((area * w * h * aspect) ** 0.5)))
    height = min(h, max(1, round(area * w * h / width)))
    left = int(rng.integers(0, w - width + 1))
    top = int(rng.integers(0, h - height + 1))
    return img.crop((left, top, left + width, top + height))


def _recompressed(img: Image.Image, quality: int) -> Image.Image:
    data = io.BytesIO()
    img.save(data, format="JPEG", quality=quality)
    data.seek(0)
    return Image.open(data).convert("RGB")


def _caption_font(size: int):
    for path in CAPTION_FONTS:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default()  # the bitmap font: small, but still not the training font


def _captioned(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Three lines of yellow caption text over a third of the picture."""
    out = img.copy()
    w, h = out.size
    band = h // 3
    top = int(rng.integers(0, h - band + 1))
    size = max(12, band // 3)
    font = _caption_font(size)
    draw = ImageDraw.Draw(out)
    for line in range(3):
        words = CAPTIONS[int(rng.integers(0, len(CAPTIONS)))]
        draw.text((w // 20, top + line * size), words, fill=(255, 221, 0), font=font,
                  stroke_width=max(1, size // 14), stroke_fill=(20, 20, 20))
    return out


def _framed(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The picture pasted into a larger canvas, as in a screenshot or a post: a plain border
    colour, the picture at 55–85 % of the canvas width, a title bar and lines of text around it."""
    w, h = img.size
    share = float(rng.uniform(0.55, 0.85))
    width = round(w * share) if w >= h else round(h * share * w / h)
    inner = img.resize((max(1, width), max(1, round(width * h / w))), Image.BICUBIC)
    canvas_w = max(round(inner.width / share), inner.width + 2)
    canvas_h = inner.height + round(canvas_w * float(rng.uniform(0.25, 0.45)))
    shade = int(rng.integers(0, 2)) * 225 + int(rng.integers(0, 30))
    canvas = Image.new("RGB", (canvas_w, canvas_h), (shade, shade, shade))
    bar = round(canvas_w * 0.07)
    left = int(rng.integers(0, canvas_w - inner.width + 1))
    top = bar + int(rng.integers(0, max(1, canvas_h - inner.height - bar - bar // 2)))
    canvas.paste(inner, (left, top))
    draw = ImageDraw.Draw(canvas)
    ink = (255 - shade, 255 - shade, 255 - shade)
    draw.rectangle((0, 0, canvas_w, bar), fill=(40, 90, 160))
    font = _caption_font(max(10, bar // 2))
    draw.text((bar // 3, bar // 4), CAPTIONS[int(rng.integers(0, len(CAPTIONS)))].title(), fill=(255, 255, 255),
              font=font)
    below = top + inner.height + 4
    for line in range(3):
        y = below + line * (bar // 2 + 2)
        if y + bar // 2 < canvas_h:
            draw.text((bar // 3, y), CAPTIONS[int(rng.integers(0, len(CAPTIONS)))].lower(), fill=ink, font=font)
    return canvas


def _heavy_text(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Large white caption text with a black outline over the whole picture (a meme)."""
    out = img.copy()
    w, h = out.size
    size = max(14, h // 7)
    font = _caption_font(size)
    draw = ImageDraw.Draw(out)
    for line in range(6):
        words = CAPTIONS[int(rng.integers(0, len(CAPTIONS)))]
        draw.text((int(rng.integers(0, max(1, w // 10))), line * (h // 6)), words, fill=(255, 255, 255), font=font,
                  stroke_width=max(2, size // 10), stroke_fill=(0, 0, 0))
    return out


def damage(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """`img` damaged as `kind` says (one of KINDS), drawing randomness from `rng`."""
    if kind == "clean":
        return img
    if kind.startswith("smallnoise"):
        small = img.copy()
        small.thumbnail((SMALL_SIDE, SMALL_SIDE), Image.BICUBIC)
        return _noisy(small, float(kind[len("smallnoise"):]), rng)
    if kind.startswith("noise"):
        return _noisy(img, float(kind[len("noise"):]), rng)
    if kind.startswith("crop"):
        return _crop_keeping(img, int(kind[len("crop"):]) / 100, rng)
    if kind == "jpeg10":
        return _recompressed(img, 10)
    if kind == "blur3":
        return img.filter(ImageFilter.GaussianBlur(3))
    if kind == "down25":
        return img.resize((max(1, img.width // 4), max(1, img.height // 4)), Image.BICUBIC)
    if kind == "rotate10":
        return img.rotate(10, resample=Image.BICUBIC, expand=True, fillcolor=(0, 0, 0))
    if kind == "text":
        return _captioned(img, rng)
    if kind == "combo":
        return _recompressed(_noisy(_crop_keeping(img, 0.5, rng), 25, rng), 30)
    if kind == "mirror":
        return img.transpose(Image.FLIP_LEFT_RIGHT)
    if kind == "mirrorcrop":
        return _crop_keeping(img, 0.7, rng).transpose(Image.FLIP_LEFT_RIGHT)
    if kind == "framed":
        return _framed(img, rng)
    if kind == "heavytext":
        return _heavy_text(img, rng)
    raise ValueError(f"unknown kind of damage {kind!r} (known: {', '.join(KINDS)})")
