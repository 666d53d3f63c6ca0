"""Bulk indexing jobs started through the API (`/api/jobs/<number>`): one at a time, in a
background thread. Generation jobs (`gen-…` ids) are `searchapp.generation.jobs`."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from indexer.catalog import JobRecord, JobState
from indexer.errors import JobLockedError, JobNotRunningError, LoupeError, NotIndexedError
from indexer.jobs import IndexJob, IndexOptions, JobSummary

log = logging.getLogger(__name__)

WRITER_WAIT_SECONDS = 30.0  # how long a small write (add, remove) waits for the one before it


class IndexingJobs:
    """Runs IndexJobs on the service's shared library and model, so searches see new images
    as each batch commits."""

    def __init__(self, service):
        self.service = service
        self.thread: threading.Thread | None = None
        self.calibration = BackgroundCalibration(lambda: service.library)
        self._cancel_flags: dict[int, threading.Event] = {}  # this server's running job → its cancel flag
        self._flags_lock = threading.Lock()

    @property
    def running_id(self) -> int | None:
        """The bulk job this server is running, if any."""
        with self._flags_lock:
            return next(iter(self._cancel_flags), None)

    def cancel(self, job_id: int) -> None:
        """Ask a running bulk job to stop after its current batch (what it wrote stays)."""
        with self._flags_lock:
            flag = self._cancel_flags.get(job_id)
        if flag is not None:
            flag.set()
            return
        with self.service.library.sessions() as session:
            job = session.get(JobRecord, job_id)
        if job is None:
            raise NotIndexedError(f"no job with id {job_id}")
        if job.state == JobState.RUNNING:
            raise JobNotRunningError(f"job {job_id} runs in another process (pid {job.pid}); stop it there")
        raise JobNotRunningError(f"job {job_id} is not running (it is {job.state})")

    def _options(self, calibrate: bool = True) -> IndexOptions:
        # Decoding stays in-process: forking decode workers from a multi-threaded server is unsafe.
        return IndexOptions(workers=0, decode_threads=job_decode_threads(), progress=False, calibrate=calibrate)

    @contextmanager
    def writer(self) -> Iterator[None]:
        """This server's writer lock: a small write (add, remove) waits for the one before it,
        up to WRITER_WAIT_SECONDS."""
        if not self.service.write_lock.acquire(timeout=WRITER_WAIT_SECONDS):
            raise JobLockedError("an indexing job is running in this server; try again when it ends")
        try:
            yield
        finally:
            self.service.write_lock.release()

    def index_locked(self, paths: Sequence[Path]) -> int:
        """Index `paths` in this thread; returns the job id. The caller holds `writer()`, and asks
        `calibration` afterwards (the match cut-offs are recalibrated in the background)."""
        job = IndexJob(self.service.library, self.service.job_embedder, self._options(calibrate=False))
        try:
            self._observe(job.run(paths))
        except BaseException:
            self._observe(None)
            raise
        return job.job_id

    def _observe(self, summary: JobSummary | None) -> None:
        """Report a job's end to the metrics (None: it failed), if anything listens."""
        if self.service.observe_job is not None:
            self.service.observe_job(summary)

    def start(self, paths: Sequence[Path], wait_seconds: float = 30.0) -> int:
        """Start a job in the background; returns its id once it is recorded."""
        for path in paths:
            if not path.exists():
                raise LoupeError(f"no such file or folder on the server: {path}")
        # Loaded before the lock is taken: a library or model that fails to load holds nothing.
        library, embedder = self.service.library, self.service.job_embedder
        if not self.service.write_lock.acquire(blocking=False):
            raise JobLockedError("an indexing job is already running in this server")
        started = threading.Event()
        outcome: dict = {}
        flag = threading.Event()

        def on_started(job_id: int) -> None:
            outcome["id"] = job_id
            with self._flags_lock:
                self._cancel_flags[job_id] = flag
            started.set()

        def work() -> None:
            try:
                self._observe(IndexJob(library, embedder, self._options(), cancelled=flag.is_set)
                              .run(paths, on_started=on_started))
            except BaseException as err:  # recorded on the job row; also unblocks the caller
                outcome["error"] = err
                log.warning("indexing job stopped: %s", err)
                self._observe(None)
            finally:
                with self._flags_lock:
                    self._cancel_flags.pop(outcome.get("id"), None)
                self.service.write_lock.release()
                started.set()

        try:
            self.thread = threading.Thread(target=work, name="loupe-index-job", daemon=True)
            self.thread.start()
        except BaseException:
            self.service.write_lock.release()
            raise
        started.wait(wait_seconds)
        if "id" not in outcome:
            err = outcome.get("error")
            raise err if isinstance(err, LoupeError) else LoupeError(f"the job did not start: {err}")
        return outcome["id"]


def job_decode_threads(cores: int | None = None, slots: int | None = None) -> int:
    """Decode threads of a job this server runs: what `loupe index` uses on the CPU (one per
    core torch uses), bounded so that one of the process's decode slots
    (MAX_CONCURRENT_DECODES) stays free for uploads and thumbnails while a job runs."""
    import torch

    from indexer.images import decode_slots

    cores = torch.get_num_threads() if cores is None else cores
    slots = decode_slots().slots if slots is None else slots
    return max(1, min(cores, slots - 1))


class BackgroundCalibration:
    """Recalibrates the match cut-offs on a background thread when asked, one run at a time
    (a request arriving during a run makes it check once more at the end). Calibration only
    searches and then stores two numbers, so it needs no writer lock."""

    def __init__(self, library):
        self._library = library
        self._lock = threading.Lock()
        self._running = False
        self._again = False
        self.thread: threading.Thread | None = None

    def request(self) -> None:
        with self._lock:
            if self._running:
                self._again = True
                return
            self._running = True
        self.thread = threading.Thread(target=self._run, name="loupe-calibrate", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                library = self._library()
                if library.needs_calibration():
                    library.calibrate()
            except Exception as err:  # the old cut-offs stay; the next request tries again
                log.warning("recalibrating the match cut-offs failed: %s", err)
            with self._lock:
                if not self._again:
                    self._running = False
                    return
                self._again = False
