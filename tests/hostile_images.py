"""Makers of malformed and hostile image uploads, for the fuzz tests."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width`x`height` pixels, with a tiny (invalid) body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def valid_images(seed: int = 0) -> dict[str, bytes]:
    """Small valid images in every format and awkward mode."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    images = {f"rgb.{fmt.lower()}": encode(rgb, fmt) for fmt in FORMATS}
    images["cmyk.jpg"] = encode(rgb.convert("CMYK"), "JPEG")
    images["grey16.png"] = encode(Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)), "PNG")
    palette = rgb.convert("P")
    images["palette-alpha.png"] = encode(palette, "PNG", transparency=0)
    images["rgba.webp"] = encode(rgb.convert("RGBA"), "WEBP")
    frames = [rgb, rgb.rotate(90, expand=False)]
    images["animated.gif"] = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    images["one-pixel.png"] = encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG")
    images["long-strip.png"] = encode(Image.new("L", (100_000, 1)), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 9999  # absurd orientation
    images["absurd-orientation.jpg"] = encode(rgb, "JPEG", exif=exif)
    big_exif = Image.Exif()
    big_exif[0x010E] = "x" * 60_000  # a huge ImageDescription
    images["huge-exif.jpg"] = encode(rgb, "JPEG", exif=big_exif)
    return images


def hostile_images() -> dict[str, bytes]:
    """Inputs that are not images, or images built to hurt a decoder."""
    return {
        "empty.jpg": b"",
        "zero-bytes.png": b"\x00" * 1024,
        "svg.png": b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
        "html.jpg": b"<!doctype html><html><body onload=alert(1)></body></html>",
        "pdf.png": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "bomb.png": encode(Image.new("1", (20_000, 20_000)), "PNG"),
        "huge-header.png": png_header_only(1_000_000, 1_000_000),
        "zero-size-header.png": png_header_only(0, 0),
        "jpeg-magic-only.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
        "gif-magic-only.gif": b"GIF89a",
        "tiff-magic-only.tif": b"II*\x00\x08\x00\x00\x00",
        "webp-magic-only.webp": b"RIFF\x24\x00\x00\x00WEBPVP8 ",
    }


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """Truncate, flip bytes, splice junk or repeat a block: one random damage."""
    if not data:
        return bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
    choice = int(rng.integers(0, 4))
    buf = bytearray(data)
    if choice == 0:
        return bytes(buf[: int(rng.integers(0, len(buf)))])
    if choice == 1:
        for _ in range(int(rng.integers(1, 16))):
            buf[int(rng.integers(0, len(buf)))] = int(rng.integers(0, 256))
        return bytes(buf)
    if choice == 2:
        at = int(rng.integers(0, len(buf)))
        return bytes(buf[:at]) + bytes(rng.integers(0, 256, int(rng.integers(1, 256)), dtype=np.uint8)) + bytes(buf[at:])
    at, size = int(rng.integers(0, len(buf))), int(rng.integers(1, 64))
    return bytes(buf[:at]) + bytes(buf[at : at + size]) * int(rng.integers(2, 50)) + bytes(buf[at:])
