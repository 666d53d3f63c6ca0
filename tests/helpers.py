"""Assertions shared by the tests."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout

from sqlalchemy import select


def full_run() -> bool:
    """`LOUPE_TEST_FULL=1`: the long fuzz counts, every kill point and every crash round. The
    default is the size CI runs; README documents both."""
    return os.environ.get("LOUPE_TEST_FULL") == "1"


def current_rss_mb() -> float:
    """This process's resident memory now (not its lifetime peak), from /proc/self/statm."""
    with open("/proc/self/statm") as fh:
        resident_pages = int(fh.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# Runs `loupe` in a child process with the tiny test architecture registered.
LAUNCHER = """
import sys, open_clip
open_clip.add_model_config(sys.argv[1])
from searchapp.cli import main
sys.exit(main(sys.argv[2:]))
"""


def loupe_argv(config, *args) -> list[str]:
    """argv for a child `loupe ARGS` process that knows the tiny test model `config`."""
    import sys

    return [sys.executable, "-c", LAUNCHER, str(config), *map(str, args)]


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str], config, port: int, *args: str):
    """`loupe serve` in a child process on `port` with the tiny test model; returns the
    process once /api/health answers."""
    import subprocess
    import time
    import urllib.request

    # -q: no access log, whose lines would fill the stderr pipe that is read only on failure.
    proc = subprocess.Popen(loupe_argv(config, "serve", "--port", port, "--threads", "4", "-q", *args),
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180  # a loaded CI machine once took over 60 s to start one
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stderr.read().decode(errors='replace')}")


def run_cli(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run `loupe ARGS` (the console script's entry point) in-process; returns (exit status,
    stdout, stderr)."""
    from searchapp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args, environ=env)
    return code, out.getvalue(), err.getvalue()


def run_json(args: list[str], env: dict[str, str]) -> dict:
    code, out, err = run_cli([*args, "--json"], env)
    assert code == 0, err
    return json.loads(out)


def catalog_rows(settings):
    from indexer.catalog import ImageRecord
    from indexer.database import make_engine

    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                select(ImageRecord.id, ImageRecord.path, ImageRecord.status, ImageRecord.duplicate_of,
                       ImageRecord.content_hash, ImageRecord.error, ImageRecord.missing_since)
            ).all()
    finally:
        engine.dispose()


def assert_index_matches_catalog(settings) -> set[int]:
    """The saved FAISS file holds exactly the catalog's indexed ids, each once, and every
    path is catalogued once. Returns the indexed ids."""
    from indexer.vectorstore import VectorStore

    rows = catalog_rows(settings)
    paths = [r.path for r in rows]
    assert len(paths) == len(set(paths)), "a path is catalogued twice"
    indexed = {r.id for r in rows if r.status == "indexed"}
    store = VectorStore.load(settings.index_path)
    ids = store.ids().tolist()
    assert len(ids) == len(set(ids)), "an id is in the index twice"
    assert set(ids) == indexed
    for r in rows:
        if r.status == "duplicate":
            assert r.duplicate_of in indexed
    assert_regions_match_catalog(settings, indexed)
    return indexed


def assert_regions_match_catalog(settings, indexed: set[int]) -> None:
    """The saved regions file holds exactly the catalog's region ids, and every region
    belongs to an indexed image."""
    from sqlalchemy import select

    from indexer.catalog import RegionRecord
    from indexer.database import open_database
    from indexer.vectorstore import VectorStore

    sessions = open_database(settings)
    with sessions() as session:
        regions = session.execute(select(RegionRecord.id, RegionRecord.image_id)).all()
    sessions.kw["bind"].dispose()
    assert {r.image_id for r in regions} <= indexed, "a region belongs to an image that is not indexed"
    if settings.regions_path.exists() or regions:
        ids = VectorStore.load(settings.regions_path).ids().tolist()
        assert len(ids) == len(set(ids)), "a region is in the index twice"
        assert set(ids) == {r.id for r in regions}


def gradient_png(size: int = 256) -> bytes:
    """A synthetic colour ramp: nothing like a photograph, so no photo collection holds a copy."""
    import io

    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)),
                       np.full((size, size), 90, np.uint8)], -1)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def check_schema(response, path: str, method: str = "get"):
    """Validate a response body against the OpenAPI document's schema for it."""
    import jsonschema

    from searchapp.openapi import openapi_document

    doc = openapi_document()
    spec = doc["paths"][path][method]["responses"][str(response.status_code)]
    schema = {**spec["content"]["application/json"]["schema"], "components": doc["components"]}
    jsonschema.validate(response.get_json(), schema)
    return response.get_json()
