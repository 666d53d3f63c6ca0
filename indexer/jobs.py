"""Bulk indexing: plan ▸ read (`indexer.reader`) ▸ embed (`indexer.embed`) ▸ write
(`indexer.writer`, one transaction per batch), resumable after a crash at any point.

Each batch is committed to the catalog, vectors included, before FAISS is touched, so a
killed job loses at most the batch in flight; the next run skips every committed file and
the index is reconciled with the catalog when it is loaded. The job times its stages
(`JobSummary.stages`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence, TextIO

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .catalog import ImageRecord, ImageStatus, JobRecord, JobState, utcnow
from .embed import Embedded, embed_items
from .embedder import ClipEmbedder
from .errors import CancelledError, LoupeError
from .images import DataFolder, DecodeLimits, iter_image_files, walk_reaches
from .library import Library
from .reader import ImageFileDataset, ReadItem, read_batches
from .timing import StageClock
from .writer import BatchWriter, store_counts


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int = 32
    # Decode processes. None chooses: on CUDA, `default_workers()` processes decode ahead of
    # the GPU; on the CPU, the model already uses every core, so decoding runs in this
    # process on a small thread pool between batches (measured faster on 2 cores: no
    # inter-process copies, no decode processes competing with the model). 0: one thread.
    workers: int | None = None  # (see `indexer.reader.choose_decoders`)
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
    metadata_added: int = 0  # unchanged pictures whose metadata was read (backfill, indexer.metadata)
    # Seconds the job spent in each stage (`indexer.timing.STAGES`: read, embed, write), summed
    # over its batches; the rest of `seconds` is planning, saving and calibrating.
    stages: dict[str, float] = field(default_factory=dict)

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
            + (f"; metadata read for {self.metadata_added} unchanged" if self.metadata_added else "")
        )

    def as_dict(self) -> dict:
        return {**self.__dict__, "embedded": self.embedded}


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
class Ingest(Protocol):
    """How a job turns the files it plans to read into written batches: read ▸ embed ▸ write,
    here (`LocalIngest`) or on Ray (`indexer.distributed.RayIngest`)."""

    def run(self, todo: list[str], job: "IndexJob") -> None:
        """Read, embed and write `todo` through `job.write`."""


class LocalIngest:
    """The stages in this process: the reader's batches (`indexer.reader.read_batches`), each
    written by the job, which asks the embed stage for the content it does not hold yet."""

    def run(self, todo: list[str], job: "IndexJob") -> None:
        dataset = ImageFileDataset(
            todo, job.embedder.prepare, job.options.limits, job.embedder.image_size,
            regions=job.library.region_spec, keep_gps=job.library.settings.keep_gps,
        )
        options = job.options
        batches = read_batches(dataset, options.batch_size, job.embedder.device, options.decode, options.workers)
        for batch in job.clock.each("read", batches):
            job.write(batch)


class IndexJob:
    """One run of `loupe index`: owns the job row, its counters, the plan and the stage times;
    `ingest` reads, embeds and writes the planned files (default: in this process)."""

    def __init__(self, library: Library, embedder: ClipEmbedder, options: IndexOptions,
                 cancelled: Callable[[], bool] | None = None, ingest: Ingest | None = None):
        self.library = library
        self.embedder = embedder
        self.options = options
        self.ingest = ingest or LocalIngest()
        self._cancelled = cancelled or (lambda: False)  # asked between batches
        self.counts = dict(added=0, changed=0, duplicates=0, unchanged=0, failed=0, missing=0, files_seen=0,
                           features_added=0, metadata_added=0)
        self.clock = StageClock()
        self.job_id: int | None = None
        self._writer: BatchWriter | None = None
        self._bar = None
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
        return JobSummary(job_id=self.job_id, seconds=seconds, stages=self.clock.as_dict(), **self.counts)

    def write(self, batch: list[ReadItem], vectors: dict[str, Embedded] | None = None) -> None:
        """Write one read batch (the writer stage), embedding its new content here unless
        `vectors`, by content hash, already holds it; then count it on the progress bar and
        checkpoint (cancel, save FAISS now and then)."""
        embed_new = self._embed if vectors is None else (lambda items: vectors)
        with self.clock.stage("write"):
            self._writer.write(batch, embed_new)
        self._bar.update(len(batch))
        self._checkpoint()

    def _embed(self, items: list[ReadItem]) -> dict[str, Embedded]:
        with self.clock.stage("embed"):
            return embed_items(self.embedder, items, self.options.batch_size)

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
        self._writer = BatchWriter(self.library, self.job_id, self.counts)

    def _finish(self, state: JobState, seconds: float, error: str | None = None) -> None:
        with self.library.sessions.begin() as session:
            job = session.get(JobRecord, self.job_id)
            job.state = state
            job.seconds = seconds
            job.finished_at = utcnow()
            job.error = error
            store_counts(job, self.counts)

    def _index(self, roots: Sequence[Path], progress_stream: TextIO | None) -> None:
        from tqdm import tqdm

        plan = self._plan(roots)
        self._bar = tqdm(
            total=len(plan.todo),
            unit="img",
            desc="indexing",
            file=progress_stream or sys.stderr,
            disable=not self.options.progress or not plan.todo,
            dynamic_ncols=True,
        )
        with self._bar:
            self.ingest.run(plan.todo, self)
        self._backfill_features(roots)
        self._backfill_metadata(roots)

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
                self._writer.add_features([(row.id, blob) for row, blob in zip(chunk, blobs)])
                self._checkpoint()

    def _backfill_metadata(self, roots: Sequence[Path]) -> None:
        """Read the metadata (indexer.metadata) of pictures under `roots` indexed before it was
        recorded, from their headers (no pixel decoded, nothing embedded), in batches. Failed
        rows only get their folder: their file is read again when it changes. LOUPE_KEEP_GPS is
        followed both ways: on, pictures with a position but no stored coordinates are read
        again; off, coordinates stored under `roots` are erased."""
        from sqlalchemy import and_, or_

        keep_gps = self.library.settings.keep_gps
        wanted = or_(ImageRecord.metadata_version.is_(None), ImageRecord.gps_lat.is_not(None))
        if keep_gps:
            wanted = or_(ImageRecord.metadata_version.is_(None),
                         and_(ImageRecord.has_gps.is_(True), ImageRecord.gps_lat.is_(None)))
        with self.library.sessions() as session:
            query = select(ImageRecord.id, ImageRecord.path, ImageRecord.status, ImageRecord.metadata_version).where(
                wanted, ImageRecord.missing_since.is_(None),
                or_(ImageRecord.status != ImageStatus.FAILED, ImageRecord.folder.is_(None)))
            rows = [row for row in session.execute(query.order_by(ImageRecord.id)) if _under(row.path, roots)]
        if not keep_gps:
            self._writer.forget_gps([row.id for row in rows if row.metadata_version is not None])
            rows = [row for row in rows if row.metadata_version is None]
        if not rows:
            return
        reader = ImageFileDataset([], self.embedder.prepare, self.options.limits, self.embedder.image_size,
                                  keep_gps=keep_gps)

        def read(row):
            return None if row.status == ImageStatus.FAILED else reader.read_metadata(row.path)

        from concurrent.futures import ThreadPoolExecutor

        size = max(self.options.batch_size, 256)  # header reads are cheap: fewer, larger transactions
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="loupe-metadata") as pool:
            for start in range(0, len(rows), size):
                chunk = rows[start : start + size]
                found = list(pool.map(read, chunk))
                self._writer.add_metadata([(row.id, row.path, meta) for row, meta in zip(chunk, found)])
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

    def _checkpoint(self) -> None:
        """Stop if the job was cancelled; save the FAISS file when `checkpoint_seconds` have
        passed since the last save."""
        if self._cancelled():
            raise CancelledError("cancelled on request; the batches written so far are kept")
        now = time.monotonic()
        if now - self._last_save >= self.options.checkpoint_seconds:
            self.library.save_index()
            self._last_save = now

def _under(path: str, roots: Sequence[Path]) -> bool:
    """Whether a catalogued `path` is one of `roots` or inside one of them."""
    for root in roots:
        text = str(root)
        if path == text or path.startswith(text.rstrip(os.sep) + os.sep):
            return True
    return False
