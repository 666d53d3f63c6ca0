"""Generated pictures on disk: LOUPE_HOME/generated/<job id>/<n>.png plus `job.json` (the
source, backend, seed and parameters, and the result). Never indexed; removed after a
configurable time (LOUPE_GENERATED_TTL_HOURS), and the oldest first whenever they take more
than their disk quota (LOUPE_GENERATED_QUOTA_MB)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from PIL import Image

from indexer.atomic import atomic_path, atomic_write

FOLDER = "generated"
RECORD = "job.json"
JOB_ID = re.compile(r"^gen-[0-9a-f]{16}$")


class GeneratedStore:
    def __init__(self, home: Path, ttl_seconds: float, quota_bytes: int | None = None):
        self.root = home / FOLDER
        self.ttl_seconds = ttl_seconds
        self.quota_bytes = quota_bytes  # None: no quota

    def folder(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a generation job id: {job_id!r}")
        return self.root / job_id

    def save_images(self, job_id: str, images: list[Image.Image]) -> list[str]:
        """Write the pictures (PNG, atomically); returns their file names."""
        folder = self.folder(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for i, image in enumerate(images):
            name = f"{i}.png"
            with atomic_path(folder / name) as tmp:
                image.save(tmp, format="PNG")
            names.append(name)
        self.enforce_quota(keep=job_id)
        return names

    def usage(self) -> list[tuple[float, int, Path]]:
        """(mtime, bytes, folder) of every stored job, oldest first."""
        if not self.root.is_dir():
            return []
        jobs = []
        for folder in self.root.iterdir():
            if not JOB_ID.match(folder.name) or not folder.is_dir():
                continue
            try:
                size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                jobs.append((folder.stat().st_mtime, size, folder))
            except OSError:  # removed meanwhile
                continue
        return sorted(jobs)

    def enforce_quota(self, keep: str | None = None) -> int:
        """Delete the oldest jobs (never `keep`) until the store fits its quota; returns how many."""
        if self.quota_bytes is None:
            return 0
        jobs = self.usage()
        total = sum(size for _, size, _ in jobs)
        removed = 0
        for _, size, folder in jobs:
            if total <= self.quota_bytes:
                break
            if folder.name == keep:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            removed += 1
        return removed

    def save_record(self, job_id: str, record: dict) -> None:
        atomic_write(self.folder(job_id) / RECORD, json.dumps(record, indent=2))

    def load_record(self, job_id: str) -> dict | None:
        try:
            return json.loads((self.folder(job_id) / RECORD).read_text())
        except (OSError, ValueError):
            return None

    def image_path(self, job_id: str, name: str) -> Path | None:
        """The file of a generated picture, or None (bad id or name, expired, never made)."""
        if not re.fullmatch(r"[0-9]{1,2}\.png", name):
            return None
        try:
            path = self.folder(job_id) / name
        except ValueError:
            return None
        return path if path.is_file() else None

    def purge(self, now: float | None = None) -> int:
        """Delete jobs older than the time limit; returns how many."""
        if not self.root.is_dir():
            return 0
        cutoff = (now or time.time()) - self.ttl_seconds
        removed = 0
        for folder in self.root.iterdir():
            if JOB_ID.match(folder.name) and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed
