"""JPEG decoding on the model's GPU (nvJPEG through `torchvision.io.decode_jpeg`), for jobs
where Pillow on the CPU cores cannot keep up with the model.

Per batch: CPU threads read each file, hash it and parse its header with Pillow (no pixels:
size, format, EXIF orientation, the pixel cap), one batch ahead of the GPU; the GPU decodes
the batch's JPEGs in one call, applies EXIF orientation, and resizes each picture (and its
regions) to the model's input with antialiased bicubic interpolation. The local features
(`indexer.features`) are found on the CPU threads from the same Pillow draft decode the CPU
path uses, so they are the CPU job's exactly. Anything else (PNG,
WebP, CMYK or broken JPEGs the GPU decoder refuses) falls back, file by file, to the CPU
path (`ImageFileDataset.read`), so the results and error messages stay those of the CPU job.

The device may also be `cpu` (torchvision's libjpeg-turbo): the same code path, which the
tests run.
"""

from __future__ import annotations

import io
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image

from .errors import ImageReadError
from .images import (EXIF_ORIENTATION, TRANSPOSED_ORIENTATIONS, DecodeLimits, content_hash, decode_image,
                     read_file)
from .jobs import ImageFileDataset, ReadItem, picture_features
from .regions import region_boxes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JpegFile:
    """A file read on the CPU: its bytes and header facts, before any pixel is decoded."""

    path: str
    data: bytes
    size: int
    mtime_ns: int
    sha256: str
    width: int  # after EXIF orientation
    height: int
    features: bytes | None = None  # local features, from the CPU path's Pillow decode


def jpeg_looks_complete(data: bytes) -> bool:
    """Whether the JPEG's last scan is followed by an end-of-image marker. nvJPEG decodes a
    truncated file without complaint (the missing part comes out black) where Pillow and
    libjpeg refuse it; such files go to the CPU path, which records the same error as always.
    (An EXIF thumbnail's own end marker comes before the first scan, so it does not count.)"""
    last_scan = data.rfind(b"\xff\xda")
    return last_scan >= 0 and data.rfind(b"\xff\xd9") > last_scan


def device_decode_available(device: str) -> bool:
    """Whether torchvision can decode JPEGs on `device` (nvJPEG for CUDA)."""
    try:
        import torch
        from torchvision.io import decode_jpeg
    except ImportError:
        return False
    if device == "cpu":
        return True
    if not torch.cuda.is_available():
        return False
    try:  # a tiny real JPEG: the only reliable probe of nvJPEG support in this build
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, "JPEG")
        decode_jpeg(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8), device=device)
        return True
    except Exception as err:  # built without nvJPEG, or the driver refuses
        log.warning("GPU JPEG decoding unavailable on %s (%s); decoding on the CPU", device, err)
        return False


class DeviceJpegReader:
    """Reads batches of paths into ReadItems whose pixels are tensors on `device` (HWC uint8)."""

    def __init__(self, device: str, cpu_reader: ImageFileDataset):
        self.device = device
        self.cpu_reader = cpu_reader  # the fallback, and the source of sizes, limits, regions
        width, height = cpu_reader.prepare.input_size
        self.input_size = (height, width)
        self.fell_back = 0  # files the device did not decode

    @property
    def limits(self) -> DecodeLimits:
        return self.cpu_reader.limits

    # -- CPU side (threads) --------------------------------------------------------------
    def load(self, path: str) -> JpegFile | ReadItem:
        """Read and inspect one file: a JpegFile for the device, or a finished ReadItem from
        the CPU path (not a JPEG, over a cap, unreadable)."""
        try:
            raw = read_file(Path(path), self.limits)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = Image.open(io.BytesIO(raw.data))
                fmt = header.format
                width, height = header.size
                orientation = header.getexif().get(EXIF_ORIENTATION) if fmt == "JPEG" else None
        except (ImageReadError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return self.cpu_reader.read(path)  # the CPU path words the error the same way as always
        if (fmt != "JPEG" or header.mode not in ("RGB", "L") or width * height > self.limits.max_pixels
                or not jpeg_looks_complete(raw.data)):
            return self.cpu_reader.read(path)
        if orientation in TRANSPOSED_ORIENTATIONS:
            width, height = height, width
        try:
            features = picture_features(decode_image(raw.data, self.limits, self.cpu_reader.draft_size))
        except Exception:  # the CPU path words the error the same way as always
            return self.cpu_reader.read(path)
        return JpegFile(path, raw.data, raw.size, raw.mtime_ns, content_hash(raw.data), width, height, features)

    # -- device side -------------------------------------------------------------------------
    def decode(self, loaded: Sequence[JpegFile | ReadItem]) -> list[ReadItem]:
        """Decode the batch's JPEGs on the device (one call), others as the CPU path did."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        jpegs = [(i, f) for i, f in enumerate(loaded) if isinstance(f, JpegFile)]
        items: list[ReadItem | None] = [f if isinstance(f, ReadItem) else None for f in loaded]
        if not jpegs:
            return items
        data = [torch.frombuffer(bytearray(f.data), dtype=torch.uint8) for _, f in jpegs]
        kwargs = dict(mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
        try:
            pictures = decode_jpeg(data, **kwargs)
        except RuntimeError:  # one bad file fails the batch call: retry one by one
            pictures = []
            for one in data:
                try:
                    pictures.append(decode_jpeg(one, **kwargs))
                except RuntimeError:
                    pictures.append(None)
        for (i, f), picture in zip(jpegs, pictures):
            if picture is None or tuple(picture.shape[1:]) != (f.height, f.width):
                self.fell_back += 1
                items[i] = self.cpu_reader.read(f.path)
                continue
            items[i] = self._item(f, picture)
        return items

    def _item(self, f: JpegFile, picture) -> ReadItem:
        boxes = tuple(region_boxes(f.width, f.height, self.cpu_reader.regions))
        crops = [picture[:, b.y : b.y + b.h, b.x : b.x + b.w] for b in boxes]
        region_pixels = None
        if crops:
            import torch

            region_pixels = torch.stack([self._resize(c) for c in crops])
        return ReadItem(
            f.path, f.size, f.mtime_ns, f.sha256, f.width, f.height, "JPEG", self._resize(picture),
            regions=boxes, region_pixels=region_pixels, features=f.features,
        )

    def _resize(self, chw):
        """(3, H, W) uint8 → the model's (h, w, 3) uint8, squash-resized (antialiased bicubic)."""
        import torch
        from torch.nn.functional import interpolate

        x = interpolate(chw.unsqueeze(0).float(), size=self.input_size, mode="bicubic", antialias=True,
                        align_corners=False)
        return x.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)

    # -- batches -------------------------------------------------------------------------------
    def batches(self, paths: Sequence[str], batch_size: int, threads: int = 4) -> Iterator[list[ReadItem]]:
        """ReadItems in batches: the next batch is read and hashed on CPU threads while this
        one is decoded on the device and handed to the caller."""
        starts = range(0, len(paths), batch_size)
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="loupe-read") as pool:
            def submit(start):
                return [pool.submit(self.load, p) for p in paths[start : start + batch_size]]

            pending = submit(starts[0]) if starts else None
            for n, _ in enumerate(starts):
                loaded = [future.result() for future in pending]
                pending = submit(starts[n + 1]) if n + 1 < len(starts) else None
                yield self.decode(loaded)
