"""The reader stage of indexing: files ▸ `ReadItem`s (catalog facts, model pixels, regions,
local features), in batches.

Two readers give the same items. The CPU reader (`ImageFileDataset`) reads, hashes and decodes
each file with Pillow, on threads of this process or in DataLoader worker processes. The device
reader (`DeviceJpegReader`) decodes JPEGs on the model's GPU (nvJPEG through
`torchvision.io.decode_jpeg`), for jobs where Pillow on the CPU cores cannot keep up with the
model: per batch, CPU threads read each file, hash it and parse its header with Pillow (no
pixels: size, format, EXIF orientation, the pixel cap), one batch ahead of the GPU; the GPU
decodes the batch's JPEGs in one call, applies EXIF orientation, and resizes each picture (and
its regions) to the model's input with antialiased bicubic interpolation. The local features
(`indexer.features`) are found on the CPU threads from the same Pillow draft decode the CPU
path uses, so they are the CPU job's exactly. Anything else (PNG, WebP, CMYK or broken JPEGs
the GPU decoder refuses) falls back, file by file, to the CPU reader, so the results and error
messages stay those of the CPU job. The device may also be `cpu` (torchvision's
libjpeg-turbo): the same code path, which the tests run.

`read_batches` chooses between them (`--decode`) and how many decoders to run.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from . import features as local_features
from .errors import ImageReadError, LoupeError
from .images import (EXIF_ORIENTATION, TRANSPOSED_ORIENTATIONS, DecodeLimits, content_hash, decode_image,
                     open_header, open_regular_file, read_file)
from .metadata import PictureMetadata, exif_of, metadata_of_image, read_metadata
from .regions import Box, RegionSpec, region_boxes

log = logging.getLogger(__name__)


def default_workers() -> int:
    """Decode processes for a GPU job: one per spare core, at least one, at most eight."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


# -- the CPU reader (runs in this process's threads or in DataLoader worker processes) ---
@dataclass(frozen=True)
class ReadItem:
    """One file after reading: facts for the catalog, and pixels unless it failed."""

    path: str
    size: int = 0
    mtime_ns: int = 0
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    pixels: np.ndarray | None = None  # the model's input, (H, W, 3) uint8
    error: str | None = None
    regions: tuple[Box, ...] = ()  # in the original's pixels
    region_pixels: np.ndarray | None = None  # the regions' model inputs, (R, H, W, 3) uint8
    features: bytes | None = None  # the picture's local features (indexer.features blob)
    metadata: PictureMetadata | None = None  # date taken, camera... (indexer.metadata), from the header


class ImageFileDataset:
    """Map-style dataset: index → ReadItem (decode errors become items, never exceptions)."""

    def __init__(self, paths: Sequence[str], prepare: Callable, limits: DecodeLimits, input_size: int,
                 regions: RegionSpec = RegionSpec(scales=()), keep_gps: bool = False):
        self.paths = list(paths)
        self.keep_gps = keep_gps  # LOUPE_KEEP_GPS: record coordinates, not only whether there are any
        self.prepare = prepare
        self.limits = limits
        self.regions = regions
        # JPEGs decode at a reduced size that still gives the smallest region the model's input
        # size and the local features their resolution.
        self.draft_size = local_features.decode_side(regions.draft_size(input_size))  # = Library.draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> ReadItem:
        return self.read(self.paths[i])

    def read(self, path: str) -> ReadItem:
        """Read, hash, decode and prepare one file; failures become the item's `error`."""
        try:
            stat = os.stat(path)
        except OSError as err:
            return ReadItem(path, error=f"cannot read file: {err.strerror or err}")
        try:
            raw = read_file(Path(path), self.limits)
        except ImageReadError as err:
            return ReadItem(path, stat.st_size, stat.st_mtime_ns, error=str(err))
        try:
            decoded = decode_image(raw.data, self.limits, self.draft_size)
            pixels = self.prepare(decoded.image)
            boxes, region_pixels = self._regions(decoded)
            features = picture_features(decoded)
        except ImageReadError as err:
            return ReadItem(path, raw.size, raw.mtime_ns, error=str(err))
        except Exception as err:  # a transform failing on an odd image must not stop the job
            return ReadItem(path, raw.size, raw.mtime_ns, error=f"cannot preprocess: {err}")
        return ReadItem(
            path, raw.size, raw.mtime_ns, decoded.sha256, decoded.width, decoded.height, decoded.format, pixels,
            regions=boxes, region_pixels=region_pixels, features=features,
            metadata=read_metadata(decoded.exif, raw.mtime_ns, self.keep_gps, decoded.original_orientation),
        )

    def read_metadata(self, path: str) -> PictureMetadata | None:
        """The metadata of the file at `path` from its header alone (a JPEG's pixels are neither
        read nor decoded); None when the file cannot be opened now (it is looked at again next
        run). A header Pillow cannot parse gives the file-time metadata, as for no EXIF."""
        try:
            fh, stat = open_regular_file(Path(path), self.limits)
        except ImageReadError:
            return None
        with fh:
            try:
                return metadata_of_image(open_header(fh), stat.st_mtime_ns, self.keep_gps)
            except Exception:  # unparsable now, though it was indexed: filed by its file time
                return read_metadata(None, stat.st_mtime_ns, self.keep_gps)

    def read_features(self, path: str) -> bytes | None:
        """The local features of the file at `path` (None when it cannot be read now)."""
        try:
            raw = read_file(Path(path), self.limits)
            return picture_features(decode_image(raw.data, self.limits, self.draft_size))
        except Exception:  # backfill is best effort: the file is looked at again next run
            return None

    def _regions(self, decoded) -> tuple[tuple[Box, ...], np.ndarray | None]:
        boxes = tuple(region_boxes(decoded.width, decoded.height, self.regions))
        if not boxes:
            return (), None
        image = decoded.image  # possibly reduced by draft mode: boxes are scaled to it
        sx, sy = image.width / decoded.width, image.height / decoded.height
        return boxes, np.stack([self.prepare(image.crop(box.scaled(sx, sy))) for box in boxes])


def picture_features(decoded) -> bytes:
    """The local-feature blob of a decoded picture (the same for every reader: CPU, device, Ray)."""
    return local_features.encode(local_features.extract(decoded.image, decoded.width, decoded.height))


def _collate(items: list[ReadItem]) -> list[ReadItem]:
    return items


def _worker_init(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)
    _die_with_parent()


def _die_with_parent() -> None:
    """Have the kernel kill this decode process when the job's process dies, even by SIGKILL
    (otherwise orphaned workers blocked on their queues linger, holding memory)."""
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):  # not Linux: torch's own parent watchdog remains
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def iter_read_batches(dataset: ImageFileDataset, batch_size: int, workers: int = 0, threads: int = 1):
    """Batches of ReadItems: decoded by `workers` processes ahead of the consumer, or, with
    no workers, in this process by `threads` threads (Pillow and hashlib release the GIL)."""
    if workers == 0:
        yield from _thread_batches(dataset, batch_size, threads)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=_worker_init,
        prefetch_factor=4,
    )
    yield from loader


def choose_decoders(todo: int, batch_size: int, workers: int | None, device: str, torch_threads: int) -> tuple[int, int]:
    """(decode processes, decode threads) for a job of `todo` files (see IndexOptions.workers)."""
    if todo <= batch_size:
        return 0, 1  # one batch: not worth starting processes or threads
    if workers is not None:
        return workers, 1
    if device.startswith("cuda"):
        return default_workers(), 1
    return 0, max(1, torch_threads)


def _thread_batches(dataset: ImageFileDataset, batch_size: int, threads: int):
    count = len(dataset)
    if threads <= 1:
        for start in range(0, count, batch_size):
            yield [dataset[i] for i in range(start, min(count, start + batch_size))]
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="loupe-decode") as pool:
        for start in range(0, count, batch_size):
            yield list(pool.map(dataset.__getitem__, range(start, min(count, start + batch_size))))


def read_batches(dataset: ImageFileDataset, batch_size: int, device: str, decode: str = "auto",
                 workers: int | None = None) -> Iterator[list[ReadItem]]:
    """Batches of `dataset`'s files, read by the decoder `decode` asks for (`IndexOptions.decode`)
    with the decoders `workers` asks for (`IndexOptions.workers`). Raises LoupeError at once
    when `decode` is `torchvision` and torchvision cannot decode on `device`."""
    device_reader = device_reader_for(dataset, device, decode)
    if device_reader is not None:
        return device_reader.batches(dataset.paths, batch_size, threads=default_workers())
    import torch

    processes, threads = choose_decoders(len(dataset), batch_size, workers, device, torch.get_num_threads())
    return iter_read_batches(dataset, batch_size, processes, threads)


def device_reader_for(dataset: ImageFileDataset, device: str, decode: str) -> "DeviceJpegReader | None":
    """The device JPEG reader when `decode` asks for it (or `auto` on CUDA and it works)."""
    if decode == "pillow" or (decode == "auto" and not device.startswith("cuda")):
        return None
    if not device_decode_available(device):
        if decode == "torchvision":
            raise LoupeError(f"torchvision cannot decode JPEGs on {device} here; use --decode pillow")
        return None
    return DeviceJpegReader(device, dataset)


# -- the device reader ---------------------------------------------------------------------

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
    metadata: PictureMetadata | None = None  # from the header, as the CPU path reads it


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
                exif = exif_of(header)  # None when broken: the CPU path copes the same way
                orientation = exif.get(EXIF_ORIENTATION) if fmt == "JPEG" and exif is not None else None
                metadata = read_metadata(exif, raw.mtime_ns, self.cpu_reader.keep_gps,
                                         header.info.get("original_orientation"))
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
        return JpegFile(path, raw.data, raw.size, raw.mtime_ns, content_hash(raw.data), width, height, features,
                        metadata)

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
            regions=boxes, region_pixels=region_pixels, features=f.features, metadata=f.metadata,
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
