"""Generation jobs (`gen-…` ids; bulk indexing jobs are `searchapp.indexing_jobs`) run one at
a time on a background thread; their state is polled.

A job: queued → running (progress in denoising steps) → finished (pictures and, for each,
its nearest indexed pictures) | failed | cancelled. Ended jobs leave memory for the disk
(`store.GeneratedStore`), so they survive a server restart until they expire. What the queue
may hold is bounded: at most `GenerationLimits.max_pending` jobs wait or run (beyond, 429 with
`Retry-After`), and each holds its source shrunk to `source_side` pixels.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

from ..capacity import QueueFull
from .backends import Generator, Variations
from .store import GeneratedStore

log = logging.getLogger(__name__)

NEIGHBOURS = 6  # nearest indexed pictures listed per variation
ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class GenerationLimits:
    """What the generation queue may hold."""

    max_pending: int = 4  # jobs queued or running
    source_side: int = 768  # a source larger than this square is shrunk to fit before it is queued
    typical_seconds: float = 10.0  # a job's length before any has ended (for Retry-After)


def bounded_source(image: Image.Image, side: int) -> Image.Image:
    """`image` in RGB, shrunk to fit `side` × `side` (never enlarged)."""
    if max(image.size) > side:
        scale = side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BICUBIC, reducing_gap=2.0)
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass
class GenerationJob:
    id: str
    request: Variations
    source: dict  # {"image_id": N} or {"upload_sha256": "..."}
    state: str = "queued"
    done_steps: int = 0
    total_steps: int = 0
    backend: dict | None = None
    images: list[dict] = field(default_factory=list)
    error: str | None = None
    created: float = field(default_factory=time.time)
    seconds: float = 0.0
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def as_json(self) -> dict:
        progress = 1.0 if self.state == "finished" else (
            self.done_steps / self.total_steps if self.total_steps else 0.0)
        return {
            "id": self.id, "kind": "generate", "state": self.state, "progress": round(progress, 4),
            "parameters": {"n": self.request.n, "strength": self.request.strength, "seed": self.request.seed,
                           "steps": self.request.steps},
            "source": self.source, "backend": self.backend, "images": self.images, "error": self.error,
            "seconds": round(self.seconds, 3), "created": self.created,
        }


class GenerationJobs:
    """Queue and run generation jobs. `load_backend()` makes the generator (once, on first
    use); `neighbours(images)` gives each picture's nearest indexed pictures; `picture_url(job_id,
    name)` the URL a generated picture is served at."""

    def __init__(self, store: GeneratedStore, load_backend: Callable[[], Generator],
                 neighbours: Callable[[list[Image.Image]], list[list[dict]]], picture_url: Callable[[str, str], str],
                 limits: GenerationLimits | None = None):
        self.store = store
        self._picture_url = picture_url
        self.limits = limits or GenerationLimits()
        self._load_backend = load_backend
        self._backend: Generator | None = None
        self._neighbours = neighbours
        self._jobs: dict[str, GenerationJob] = {}  # queued and running jobs only
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loupe-generate")
        self._seconds = self.limits.typical_seconds  # a running mean of job lengths

    def submit(self, source_image: Image.Image, source: dict, request: Variations) -> GenerationJob:
        """Queue a job, or raise QueueFull (429) when `max_pending` jobs already wait or run."""
        self.store.purge()
        job = GenerationJob(id=f"gen-{uuid.uuid4().hex[:16]}", request=request, source=source)
        with self._lock:
            pending = len(self._jobs)
            if pending >= self.limits.max_pending:
                raise QueueFull(f"{pending} generations are already waiting or running; try again later",
                                retry_after=round(pending * self._seconds))
            self._jobs[job.id] = job
        try:
            picture = bounded_source(source_image, self.limits.source_side)
            self._executor.submit(self._run, job, picture)
        except BaseException:
            with self._lock:
                self._jobs.pop(job.id, None)
            raise
        return job

    def pending(self) -> int:
        with self._lock:
            return len(self._jobs)

    def get(self, job_id: str) -> dict | None:
        """A job's JSON: from memory, else from disk (finished before a restart), else None."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            return job.as_json()
        try:
            return self.store.load_record(job_id)
        except ValueError:
            return None

    def wait(self, job_id: str, seconds: float) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            job.ended.wait(seconds)

    def cancel(self, job_id: str) -> dict | None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return self.get(job_id)
        job.cancel_requested.set()
        if job.state == "queued":
            job.state = "cancelled"
        return job.as_json()

    def _end(self, job: GenerationJob) -> None:
        """Record an ended job on disk and drop it from memory (its pictures are on disk already)."""
        try:
            self.store.save_record(job.id, job.as_json())
        except OSError as err:  # kept in memory then: the answer is not lost
            log.warning("cannot record generation job %s: %s", job.id, err)
            job.ended.set()
            return
        with self._lock:
            self._jobs.pop(job.id, None)
            if job.state == "finished":
                self._seconds = 0.8 * self._seconds + 0.2 * max(job.seconds, 0.1)
        job.ended.set()

    def backend(self) -> Generator:
        if self._backend is None:
            self._backend = self._load_backend()
        return self._backend

    def _run(self, job: GenerationJob, source: Image.Image) -> None:
        from ..diffusion.sampling import Cancelled

        if job.cancel_requested.is_set():
            job.state = "cancelled"
            self._end(job)
            return
        started = time.perf_counter()
        job.state = "running"
        try:
            backend = self.backend()
            job.backend = backend.describe()

            def on_step(done: int, total: int) -> None:
                job.done_steps, job.total_steps = done, total

            pictures = backend.generate(source, job.request, on_step, job.cancel_requested.is_set)
            names = self.store.save_images(job.id, pictures)
            neighbours = self._neighbours(pictures)
            job.images = [
                {"url": self._picture_url(job.id, name), "seed": job.request.seed + i, "neighbours": near}
                for i, (name, near) in enumerate(zip(names, neighbours))
            ]
            job.state = "finished"
        except Cancelled:
            job.state = "cancelled"
        except Exception as err:  # reported on the job; the server goes on
            log.warning("generation job %s failed: %s", job.id, err)
            job.state, job.error = "failed", str(err) or type(err).__name__
        finally:
            job.seconds = time.perf_counter() - started
            self._end(job)
