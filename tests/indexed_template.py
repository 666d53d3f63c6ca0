"""The test photographs indexed once per test session, copied into each test's home.

Most tests need "a home where `loupe index PHOTOS` has run" and test something else: search,
the API, security, the web UI. Indexing the 24 photographs takes 3-5 s (local features,
calibration, the graph and the map), and hundreds of tests need it. `IndexedTemplate` runs that
job once, really, in a home of its own; `restore(env, photos)` then gives a fresh home what the
job left there: the database (copied with SQLite's backup API, the photographs' folder
rewritten to the test's), the index files, the graph, the map and the thumbnails.

It only stands in for the job when the outcome would be the same: the environment is the
standard one (`conftest.make_env`, nothing added), the home holds nothing yet, and the test's
photographs are the template's files (names, sizes, modification times). Otherwise it runs
`loupe index` itself. Tests whose subject is indexing call `loupe index` directly.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from helpers import run_json

PLACE_KEYS = ("HOME", "LOUPE_HOME")  # differ from home to home; every other variable must match
NOT_COPIED = ("models", "write.lock", "loupe.db", "loupe.db-wal", "loupe.db-shm")


def listing(folder: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, modification time) of every file under `folder`."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            found.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return found


def moved(value: str, old: str, new: str) -> str:
    """`value` (a path under `old`) as the same path under `new`."""
    if value == old or value.startswith(old + os.sep):
        return new + value[len(old):]
    raise AssertionError(f"{value!r} is not under the template's photographs {old!r}")


@dataclass
class IndexedTemplate:
    env: dict[str, str]
    photos: Path
    summary: dict
    files: list[tuple[str, int, int]]

    @classmethod
    def build(cls, folder: Path, models_dir: Path, photos: Path) -> "IndexedTemplate":
        from conftest import make_env

        env = make_env(folder, models_dir)
        summary = run_json(["index", str(photos), "--no-progress"], env)
        template = cls(env, photos, summary, listing(photos))
        template._check_files_name_no_path()
        return template

    @property
    def home(self) -> Path:
        return Path(self.env["LOUPE_HOME"])

    def restore(self, env: dict[str, str], photos: Path) -> dict:
        """Leave in `env`'s home what `loupe index photos` would; returns the job's summary."""
        if not self._stands_in_for(env, photos):
            return run_json(["index", str(photos), "--no-progress"], env)
        home = Path(env["LOUPE_HOME"])
        for item in self.home.iterdir():
            if item.name in NOT_COPIED:
                continue
            if item.is_dir():
                shutil.copytree(item, home / item.name)
            else:
                shutil.copy2(item, home / item.name)
        self._copy_database(home / "loupe.db", str(photos))
        return json.loads(json.dumps(self.summary))

    def _stands_in_for(self, env: dict[str, str], photos: Path) -> bool:
        same_env = ({k: v for k, v in env.items() if k not in PLACE_KEYS}
                    == {k: v for k, v in self.env.items() if k not in PLACE_KEYS})
        home = Path(env.get("LOUPE_HOME", ""))
        fresh_home = home.is_dir() and {p.name for p in home.iterdir()} <= {"models"}
        return same_env and fresh_home and listing(photos) == self.files

    def _copy_database(self, target: Path, photos: str) -> None:
        source = sqlite3.connect(self.home / "loupe.db")
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
            old = str(self.photos)
            with copy:
                for image_id, path, folder in copy.execute("SELECT id, path, folder FROM images").fetchall():
                    copy.execute("UPDATE images SET path = ?, folder = ? WHERE id = ?",
                                 (moved(path, old, photos), folder and moved(folder, old, photos), image_id))
                for job_id, roots in copy.execute("SELECT id, roots FROM jobs").fetchall():
                    copy.execute("UPDATE jobs SET roots = ? WHERE id = ?",
                                 (json.dumps([moved(r, old, photos) for r in json.loads(roots)]), job_id))
            left = _cells_containing(copy, old)
            assert not left, f"a column the template does not relocate holds a path: {left}"
        finally:
            copy.close()
            source.close()

    def _check_files_name_no_path(self) -> None:
        """Only the database may name the photographs or the home: the other files are copied as
        they are."""
        for path in self.home.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.name not in NOT_COPIED:
                data = path.read_bytes()
                for place in (str(self.photos), str(self.home)):
                    assert place.encode() not in data, f"{path} names {place}: the template cannot copy it"


def _cells_containing(db: sqlite3.Connection, text: str) -> list[str]:
    """`table.column` for every column where some value contains `text`."""
    found = []
    tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]:
            hit = db.execute(f'SELECT 1 FROM "{table}" WHERE instr(CAST("{column}" AS TEXT), ?) > 0 LIMIT 1',
                             (text,)).fetchone()
            if hit:
                found.append(f"{table}.{column}")
    return found
