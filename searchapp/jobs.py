"""Indexing jobs started through the API: one at a time, in a background thread."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Sequence

from indexer.errors import JobLockedError, LoupeError
from indexer.jobs import IndexJob, IndexOptions

log = logging.getLogger(__name__)

WRITER_WAIT_SECONDS = 30.0  # how long a small write (add, remove) waits for the one before it


class JobRunner:
    """Runs IndexJobs on the service's shared library and model, so searches see new images
    as each batch commits."""

    def __init__(self, service):
        self.service = service
        self.thread: threading.Thread | None = None

    def _options(self) -> IndexOptions:
        # Decoding stays in-process: forking decode workers from a multi-threaded server is unsafe.
        return IndexOptions(workers=0, progress=False)

    def run_now(self, paths: Sequence[Path]) -> int:
        """Index `paths` in this thread, after the writer before it; returns the job id."""
        if not self.service.write_lock.acquire(timeout=WRITER_WAIT_SECONDS):
            raise JobLockedError("an indexing job is running in this server; try again when it ends")
        try:
            job = IndexJob(self.service.library, self.service.embedder, self._options())
            job.run(paths)
            return job.job_id
        finally:
            self.service.write_lock.release()

    def start(self, paths: Sequence[Path], wait_seconds: float = 30.0) -> int:
        """Start a job in the background; returns its id once it is recorded."""
        for path in paths:
            if not path.exists():
                raise LoupeError(f"no such file or folder on the server: {path}")
        if not self.service.write_lock.acquire(blocking=False):
            raise JobLockedError("an indexing job is already running in this server")
        started = threading.Event()
        outcome: dict = {}
        library, embedder = self.service.library, self.service.embedder

        def on_started(job_id: int) -> None:
            outcome["id"] = job_id
            started.set()

        def work() -> None:
            try:
                IndexJob(library, embedder, self._options()).run(paths, on_started=on_started)
            except BaseException as err:  # recorded on the job row; also unblocks the caller
                outcome["error"] = err
                log.warning("indexing job failed: %s", err)
            finally:
                self.service.write_lock.release()
                started.set()

        self.thread = threading.Thread(target=work, name="loupe-index-job", daemon=True)
        self.thread.start()
        started.wait(wait_seconds)
        if "id" not in outcome:
            err = outcome.get("error")
            raise err if isinstance(err, LoupeError) else LoupeError(f"the job did not start: {err}")
        return outcome["id"]
