"""Bulk indexing: scan ▸ decode (threads, or worker processes on GPU machines) ▸ embed
(batched) ▸ write (one transaction per batch), resumable after a crash at any point.

Each batch is committed to the catalog, vectors included, before FAISS is touched, so a
killed job loses at most the batch in flight; the next run skips every committed file and
the index is reconciled with the catalog when it is loaded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TextIO

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .catalog import ImageRecord, ImageStatus, JobRecord, JobState, RegionRecord, utcnow
from .embedder import ClipEmbedder
from . import features as local_features
from .errors import CancelledError, ImageReadError, LoupeError
from .images import DataFolder, DecodeLimits, decode_image, iter_image_files, read_file, walk_reaches
from .library import IndexDelta, Library
from .noise import noise_levels
from .regions import Box, RegionSpec, region_boxes


def default_workers() -> int:
    """Decode processes for a GPU job: one per spare core, at least one, at most eight."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int = 32
    # Decode processes. None chooses: on CUDA, `default_workers()` processes decode ahead of
    # the GPU; on the CPU, the model already uses every core, so decoding runs in this
    # process on a small thread pool between batches (measured faster on 2 cores: no
    # inter-process copies, no decode processes competing with the model). 0: one thread.
    workers: int | None = None
    limits: DecodeLimits = DecodeLimits()
    checkpoint_seconds: float = 60.0  # how often the FAISS file is saved during a job
    # Recalibrate the match cut-offs at the end when the index changed enough. A server's
    # single uploads turn this off and calibrate in the background instead (a leave-one-out
    # search per sampled image is too slow for a request).
    calibrate: bool = True
    # How JPEGs are decoded: "pillow" (CPU), "torchvision" (on the model's device: nvJPEG on
    # CUDA; other files still go through Pillow), or "auto": torchvision on CUDA when it can.
    decode: str = "auto"
    progress: bool = True


@dataclass(frozen=True)
class JobSummary:
    job_id: int
    files_seen: int
    added: int
    changed: int
    duplicates: int
    unchanged: int
    failed: int
    missing: int
    seconds: float
    features_added: int = 0  # unchanged pictures whose local features were computed (backfill)

    @property
    def embedded(self) -> int:
        return self.added + self.changed

    def line(self) -> str:
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        return (
            f"indexed {self.added} new, {self.changed} changed, {self.duplicates} duplicates, "
            f"{self.unchanged} unchanged, {self.failed} failed, {self.missing} missing "
            f"in {self.seconds:.1f} s ({rate:.1f} images/s)"
            + (f"; local features added to {self.features_added} unchanged" if self.features_added else "")
        )

    def as_dict(self) -> dict:
        return {**self.__dict__, "embedded": self.embedded}


# -- reading (runs in DataLoader worker processes) -------------------------------------------
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


class ImageFileDataset:
    """Map-style dataset: index → ReadItem (decode errors become items, never exceptions)."""

    def __init__(self, paths: Sequence[str], prepare: Callable, limits: DecodeLimits, input_size: int,
                 regions: RegionSpec = RegionSpec(scales=())):
        self.paths = list(paths)
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
        )

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
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="loupe-decode") as pool:
        for start in range(0, count, batch_size):
            yield list(pool.map(dataset.__getitem__, range(start, min(count, start + batch_size))))


# -- planning ----------------------------------------------------------------------------------
@dataclass
class Plan:
    todo: list[str]  # new or changed files to read
    unchanged: int
    missing_ids: list[int]
    returned_ids: list[int]  # rows flagged missing whose file is back unchanged
    files_seen: int


def plan_job(session: Session, roots: Sequence[Path], exclude: Path | None,
             link_roots: Sequence[Path] | None = None) -> Plan:
    """Compare the files under `roots` with the catalog by size and mtime. A catalogued file
    counts as vanished only if the walk would have looked at it (not in a hidden folder, not
    in Loupe's data folder: uploads live there)."""
    known: dict[str, tuple[int, int, bool]] = {}
    root_of: dict[str, Path] = {}
    for root in roots:
        query = select(ImageRecord.path, ImageRecord.size_bytes, ImageRecord.mtime_ns, ImageRecord.missing_since)
        if root.is_dir():
            prefix = str(root).rstrip(os.sep) + os.sep
            query = query.where(ImageRecord.path.startswith(prefix, autoescape=True))
        else:
            query = query.where(ImageRecord.path == str(root))
        for row in session.execute(query):
            known[row.path] = (row.size_bytes, row.mtime_ns, row.missing_since is not None)
            root_of.setdefault(row.path, root)
    todo: list[str] = []
    seen: set[str] = set()
    unchanged = 0
    returned: list[str] = []
    for path in iter_image_files(roots, exclude=exclude, link_roots=link_roots):
        key = str(path)
        if key in seen:
            continue
        seen.add(key)
        entry = known.get(key)
        try:
            stat = path.stat()
        except OSError:
            todo.append(key)  # the reader records why it cannot be read
            continue
        if entry is not None and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            unchanged += 1
            if entry[2]:
                returned.append(key)
        else:
            todo.append(key)
    excluded, folders = DataFolder.of(exclude), {}
    vanished = [p for p in known if p not in seen and walk_reaches(Path(p), root_of[p], excluded, folders)]
    return Plan(
        todo=todo,
        unchanged=unchanged,
        missing_ids=_ids_of(session, vanished),
        returned_ids=_ids_of(session, returned),
        files_seen=len(seen),
    )


def _ids_of(session: Session, paths: list[str]) -> list[int]:
    ids: list[int] = []
    for start in range(0, len(paths), 1000):
        chunk = paths[start : start + 1000]
        ids += session.scalars(select(ImageRecord.id).where(ImageRecord.path.in_(chunk))).all()
    return ids


# -- the job -------------------------------------------------------------------------------------
class IndexJob:
    """One run of `loupe index`: owns the job row, its counters and the batch writer."""

    def __init__(self, library: Library, embedder: ClipEmbedder, options: IndexOptions,
                 cancelled: Callable[[], bool] | None = None):
        self.library = library
        self.embedder = embedder
        self.options = options
        self._cancelled = cancelled or (lambda: False)  # asked between batches
        self.counts = dict(added=0, changed=0, duplicates=0, unchanged=0, failed=0, missing=0, files_seen=0,
                           features_added=0)
        self.job_id: int | None = None
        self._last_save = time.monotonic()

    def run(self, paths: Sequence[str | Path], progress_stream: TextIO | None = None,
            on_started: Callable[[int], None] | None = None) -> JobSummary:
        """Index `paths`; `on_started(job_id)` is called once the job is recorded."""
        roots = [Path(os.path.abspath(p)) for p in paths]
        for root in roots:
            if not root.exists():
                raise LoupeError(f"no such file or folder: {root}")
        self.library.bind_model(self.embedder.identity)
        started = time.perf_counter()
        with self.library.writer():
            self.library.sync_store()
            self._start_job(roots)
            if on_started is not None:
                on_started(self.job_id)
            try:
                self._index(roots, progress_stream)
            except BaseException as err:
                state = {KeyboardInterrupt: JobState.INTERRUPTED, CancelledError: JobState.CANCELLED}.get(
                    type(err), JobState.FAILED)
                try:  # the index is saved before the row says the job ended
                    self.library.sync_store()
                finally:
                    self._finish(state, time.perf_counter() - started, error=str(err) or type(err).__name__)
                raise
            self.library.sync_store()
            if self.options.calibrate and self.library.needs_calibration():
                self.library.calibrate()
            seconds = time.perf_counter() - started
            self._finish(JobState.FINISHED, seconds)
        return JobSummary(job_id=self.job_id, seconds=seconds, **self.counts)

    def _start_job(self, roots: Sequence[Path]) -> None:
        with self.library.sessions.begin() as session:
            # Holding the lock, any job still marked running died without finishing.
            session.execute(
                update(JobRecord)
                .where(JobRecord.state == JobState.RUNNING)
                .values(state=JobState.INTERRUPTED, finished_at=utcnow())
            )
            job = JobRecord(roots=json.dumps([str(r) for r in roots]), state=JobState.RUNNING, pid=os.getpid())
            session.add(job)
            session.flush()
            self.job_id = job.id

    def _finish(self, state: JobState, seconds: float, error: str | None = None) -> None:
        with self.library.sessions.begin() as session:
            job = session.get(JobRecord, self.job_id)
            job.state = state
            job.seconds = seconds
            job.finished_at = utcnow()
            job.error = error
            self._store_counts(job)

    def _store_counts(self, job: JobRecord) -> None:
        for name in ("duplicates", "failed", "missing", "files_seen"):
            setattr(job, name, self.counts[name])
        job.added = self.counts["added"] + self.counts["changed"]  # images embedded by this job
        job.skipped = self.counts["unchanged"]

    def _index(self, roots: Sequence[Path], progress_stream: TextIO | None) -> None:
        from tqdm import tqdm

        plan = self._plan(roots)
        bar = tqdm(
            total=len(plan.todo),
            unit="img",
            desc="indexing",
            file=progress_stream or sys.stderr,
            disable=not self.options.progress or not plan.todo,
            dynamic_ncols=True,
        )
        with bar:
            self._process(plan.todo, bar)
        self._backfill_features(roots)

    def _backfill_features(self, roots: Sequence[Path]) -> None:
        """Compute the local features that indexed pictures under `roots` lack (indexed before
        features existed), in batches, reading on the decode threads."""
        with self.library.sessions() as session:
            query = select(ImageRecord.id, ImageRecord.path).where(
                ImageRecord.status == ImageStatus.INDEXED, ImageRecord.local_features.is_(None),
                ImageRecord.missing_since.is_(None))
            rows = [row for row in session.execute(query.order_by(ImageRecord.id)) if _under(row.path, roots)]
        if not rows:
            return
        reader = ImageFileDataset([], self.embedder.prepare, self.options.limits, self.embedder.image_size)
        from concurrent.futures import ThreadPoolExecutor

        size = self.options.batch_size
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="loupe-features") as pool:
            for start in range(0, len(rows), size):
                chunk = rows[start : start + size]
                blobs = list(pool.map(reader.read_features, [row.path for row in chunk]))
                with self.library.sessions.begin() as session:
                    for row, blob in zip(chunk, blobs):
                        if blob is not None:
                            session.execute(update(ImageRecord).where(ImageRecord.id == row.id)
                                            .values(local_features=blob))
                            self.counts["features_added"] += 1
                self._checkpoint()

    def _plan(self, roots: Sequence[Path]) -> Plan:
        """Compare the files with the catalog, flag vanished and returned files, count them."""
        with self.library.sessions.begin() as session:
            # A symlinked file is followed only into the job's own roots or the allowed roots.
            link_roots = [*roots, *self.library.settings.allowed_roots]
            plan = plan_job(session, roots, exclude=self.library.settings.home, link_roots=link_roots)
            now = utcnow()
            if plan.missing_ids:
                session.execute(
                    update(ImageRecord)
                    .where(ImageRecord.id.in_(plan.missing_ids), ImageRecord.missing_since.is_(None))
                    .values(missing_since=now)
                )
            if plan.returned_ids:
                session.execute(
                    update(ImageRecord).where(ImageRecord.id.in_(plan.returned_ids)).values(missing_since=None)
                )
        self.counts.update(unchanged=plan.unchanged, missing=len(plan.missing_ids), files_seen=plan.files_seen)
        return plan

    def _process(self, todo: list[str], bar) -> None:
        """Read, embed and write `todo` in this process (the Ray job overrides this)."""
        dataset = ImageFileDataset(
            todo, self.embedder.prepare, self.options.limits, self.embedder.image_size,
            regions=self.library.region_spec,
        )
        device_reader = self._device_reader(dataset)
        if device_reader is not None:
            batches = device_reader.batches(todo, self.options.batch_size, threads=default_workers())
        else:
            workers, threads = self._decoders(len(todo))
            batches = iter_read_batches(dataset, self.options.batch_size, workers, threads)
        for batch in batches:
            self._write_batch(batch)
            bar.update(len(batch))
            self._checkpoint()

    def _device_reader(self, dataset: ImageFileDataset):
        """The device JPEG reader when `options.decode` asks for it (or `auto` on CUDA and it works)."""
        choice, device = self.options.decode, self.embedder.device
        if choice == "pillow" or (choice == "auto" and not device.startswith("cuda")):
            return None
        from .gpudecode import DeviceJpegReader, device_decode_available

        if not device_decode_available(device):
            if choice == "torchvision":
                raise LoupeError(f"torchvision cannot decode JPEGs on {device} here; use --decode pillow")
            return None
        return DeviceJpegReader(device, dataset)

    def _checkpoint(self) -> None:
        """Stop if the job was cancelled; save the FAISS file when `checkpoint_seconds` have
        passed since the last save."""
        if self._cancelled():
            raise CancelledError("cancelled on request; the batches written so far are kept")
        now = time.monotonic()
        if now - self._last_save >= self.options.checkpoint_seconds:
            self.library.save_index()
            self._last_save = now

    def _decoders(self, todo: int) -> tuple[int, int]:
        import torch

        return choose_decoders(todo, self.options.batch_size, self.options.workers,
                               self.embedder.device, torch.get_num_threads())

    def _write_batch(self, batch: list[ReadItem], vectors: dict[str, "Embedded"] | None = None) -> None:
        """Embed the batch's new pictures (unless `vectors`, by content hash, already holds
        them) and commit the batch in one transaction."""
        with self.library.sessions.begin() as session:
            existing = _rows_by_path(session, [item.path for item in batch])
            unchanged = {item.path for item in batch if _same_content(item, existing.get(item.path))}
            replaced_ids = {existing[item.path].id for item in batch if item.path in existing} - {
                existing[path].id for path in unchanged
            }
            ok = [item for item in batch if item.error is None and item.path not in unchanged]
            canonical = {
                sha: row
                for sha, row in _indexed_by_hash(session, {item.sha256 for item in ok}).items()
                if row.id not in replaced_ids
            }
            if vectors is None:
                vectors = self._embed(_new_content(ok, canonical))
            delta = IndexDelta()
            for item in batch:
                old = existing.get(item.path)
                if item.path in unchanged:
                    old.size_bytes, old.mtime_ns, old.missing_since = item.size, item.mtime_ns, None
                    self.counts["unchanged"] += 1
                else:
                    delta.merge(self._replace(session, item, old, canonical, vectors))
            self._store_counts(session.get(JobRecord, self.job_id))
        self.library.apply(delta)

    def _embed(self, items: list[ReadItem]) -> dict[str, Embedded]:
        """Whole and region vectors of `items`, by content hash, in model batches of the job's size."""
        if not items:
            return {}
        embedded = embed_pictures(self.embedder, [item.pixels for item in items],
                                  [item.region_pixels if item.regions else () for item in items],
                                  self.options.batch_size)
        return {item.sha256: vectors for item, vectors in zip(items, embedded)}

    def _replace(self, session: Session, item: ReadItem, old: ImageRecord | None,
                 canonical: dict[str, ImageRecord], vectors: dict[str, "Embedded"]) -> IndexDelta:
        """Record `item` as a new row (indexed, duplicate or failed), retiring `old` first."""
        delta = IndexDelta()
        replaced = old is not None and old.status != ImageStatus.FAILED
        if old is not None:
            delta.merge(self.library.retire(session, old))
        record = ImageRecord(
            path=item.path,
            size_bytes=item.size,
            mtime_ns=item.mtime_ns,
            job_id=self.job_id,
            content_hash=item.sha256,
            width=item.width,
            height=item.height,
            format=item.format,
        )
        source = canonical.get(item.sha256) if item.sha256 else None
        if item.error is not None:
            record.status, record.error = ImageStatus.FAILED, item.error
            self.counts["failed"] += 1
        elif source is not None:
            record.status, record.duplicate_of = ImageStatus.DUPLICATE, source.id
            self.counts["duplicates"] += 1
        else:
            record.status, record.embedding = ImageStatus.INDEXED, vectors[item.sha256].whole.tobytes()
            record.noise_level = _finite_or_none(vectors[item.sha256].noise)
            record.local_features = item.features
            self.counts["changed" if replaced else "added"] += 1
        session.add(record)
        session.flush()
        if record.status == ImageStatus.INDEXED:
            canonical[item.sha256] = record  # later copies in this batch point here
            embedded = vectors[item.sha256]
            delta.add(record.id, embedded.whole)
            regions = [
                RegionRecord(image_id=record.id, x=box.x, y=box.y, w=box.w, h=box.h, embedding=vector.tobytes())
                for box, vector in zip(item.regions, embedded.regions)
            ]
            if regions:
                session.add_all(regions)
                session.flush()
                for region, vector in zip(regions, embedded.regions):
                    delta.add_region(region.id, vector)
        return delta


@dataclass(frozen=True)
class Embedded:
    """One picture's vectors: the whole image and its regions (in `ReadItem.regions` order)."""

    whole: np.ndarray
    regions: np.ndarray
    noise: float = float("nan")  # σ̂ of the model input (indexer.noise), in grey levels


def embed_pictures(embedder, wholes: Sequence, regions: Sequence[Sequence], batch_size: int) -> list[Embedded]:
    """Embed each picture's model input and its regions' inputs together, in model batches of
    `batch_size` (the local job and the Ray model actors share this)."""
    inputs = list(wholes)
    for crops in regions:
        inputs.extend(crops)
    if not inputs:
        return []
    matrix = np.concatenate([embedder.encode_batch(inputs[i : i + batch_size])
                             for i in range(0, len(inputs), batch_size)])
    noise = noise_levels(wholes)
    found, at = [], len(wholes)
    for i, crops in enumerate(regions):
        found.append(Embedded(matrix[i], matrix[at : at + len(crops)], float(noise[i])))
        at += len(crops)
    return found


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _same_content(item: ReadItem, old: ImageRecord | None) -> bool:
    """The file was touched (size or mtime) but its bytes are what the catalog holds."""
    return (
        old is not None
        and item.error is None
        and old.status != ImageStatus.FAILED
        and old.content_hash == item.sha256
    )


def _new_content(ok: list[ReadItem], canonical: dict[str, ImageRecord]) -> list[ReadItem]:
    """One item per distinct content that the index does not hold yet."""
    picked: dict[str, ReadItem] = {}
    for item in ok:
        if item.sha256 not in canonical:
            picked.setdefault(item.sha256, item)
    return list(picked.values())


def _under(path: str, roots: Sequence[Path]) -> bool:
    """Whether a catalogued `path` is one of `roots` or inside one of them."""
    for root in roots:
        text = str(root)
        if path == text or path.startswith(text.rstrip(os.sep) + os.sep):
            return True
    return False


def _rows_by_path(session: Session, paths: list[str]) -> dict[str, ImageRecord]:
    rows = session.scalars(select(ImageRecord).where(ImageRecord.path.in_(paths))).all()
    return {row.path: row for row in rows}


def _indexed_by_hash(session: Session, hashes: set[str]) -> dict[str, ImageRecord]:
    if not hashes:
        return {}
    rows = session.scalars(
        select(ImageRecord)
        .where(ImageRecord.content_hash.in_(hashes), ImageRecord.status == ImageStatus.INDEXED)
        .order_by(ImageRecord.id)
    ).all()
    found: dict[str, ImageRecord] = {}
    for row in rows:
        found.setdefault(row.content_hash, row)
    return found
