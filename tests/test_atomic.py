"""atomic_write: a failed write leaves the old file; a successful one replaces it and leaves no temp file."""

import pytest

from indexer.atomic import atomic_path, atomic_write


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "sub" / "record.json"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    atomic_write(target, lambda fh: fh.write(b"third"))
    assert target.read_bytes() == b"third"
    assert [p.name for p in target.parent.iterdir()] == ["record.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "index.faiss"
    atomic_write(target, b"old")

    def broken(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]
