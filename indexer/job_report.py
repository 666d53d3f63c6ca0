"""What an indexing job did, read from its catalog row: the one serialisation of a job record
(the HTTP API's job JSON and `loupe status`'s last job)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from .catalog import JobRecord


@dataclass(frozen=True)
class IndexingJobReport:
    id: int
    state: str
    roots: tuple[str, ...]
    files_seen: int
    added: int
    duplicates: int
    skipped: int
    failed: int
    missing: int
    seconds: float
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: JobRecord) -> "IndexingJobReport":
        return cls(id=job.id, state=job.state, roots=tuple(json.loads(job.roots)), files_seen=job.files_seen,
                   added=job.added, duplicates=job.duplicates, skipped=job.skipped, failed=job.failed,
                   missing=job.missing, seconds=job.seconds, error=job.error, started_at=job.started_at,
                   finished_at=job.finished_at)

    @property
    def progress(self) -> float:
        """The share of the files seen that are done (added, duplicate, failed or skipped)."""
        done = self.added + self.duplicates + self.failed + self.skipped
        return round(done / self.files_seen, 4) if self.files_seen else 0.0

    def as_dict(self) -> dict:
        """The whole report (the API's job JSON)."""
        return {
            "id": self.id,
            "state": self.state,
            "roots": list(self.roots),
            "files_seen": self.files_seen,
            "added": self.added,
            "duplicates": self.duplicates,
            "skipped": self.skipped,
            "failed": self.failed,
            "missing": self.missing,
            "progress": self.progress,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }

    def brief(self) -> dict:
        """The counts and time alone (`loupe status`'s last job)."""
        return {"id": self.id, "state": self.state, "added": self.added, "duplicates": self.duplicates,
                "skipped": self.skipped, "failed": self.failed, "missing": self.missing,
                "seconds": round(self.seconds, 2)}
