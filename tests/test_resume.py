"""Kill a real indexing process with SIGKILL mid-job, then check that a rerun finishes the
job without redoing committed work, and that the catalog and FAISS index agree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text

from helpers import assert_index_matches_catalog, full_run, loupe_argv, run_json
from indexer.settings import Settings

pytestmark = pytest.mark.slow

# Kill points (after this many committed pictures): 60 in the default run, also 1 and 150 in the
# full run, which needs a folder twice as big to still be mid-job at 150.
KILL_POINTS = [1, 60, 150] if full_run() else [60]
PHOTOS = 300 if full_run() else 120

@pytest.fixture
def many_photos(tmp_path, photo_arrays):
    """PHOTOS distinct photographic JPEGs (random crops of real photographs)."""
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(7)
    arrays = list(photo_arrays.values())
    for i in range(PHOTOS):
        pixels = arrays[i % len(arrays)]
        h, w = pixels.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 0.9)), int(w * rng.uniform(0.4, 0.9))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        Image.fromarray(pixels[y : y + ch, x : x + cw]).save(folder / f"img{i:03d}.jpg", quality=85)
    return folder


def _committed(settings) -> int:
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM images")).scalar()
    except Exception:  # the schema may not exist yet at the very start
        return 0
    finally:
        engine.dispose()


def _assert_no_process_mentions(text: str, wait_s: float = 10.0) -> None:
    """No running process has `text` in its command line (after up to `wait_s` seconds)."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{entry}/stat") as fh:
                    state = fh.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmdline and state != "Z":
                alive.append(entry)
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not alive, f"processes outlived the killed job: {alive}"


def _start(env, config, folder, tmp_path):
    return subprocess.Popen(
        loupe_argv(config, "index", folder, "--batch-size", "4", "--workers", "1", "--no-progress", "--json"),
        env={**os.environ, **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("kill_after", KILL_POINTS)
def test_sigkill_mid_job_then_rerun_completes_without_duplicates(env, tiny_model_config, many_photos, tmp_path, kill_after):
    settings = Settings.from_env(env)
    proc = _start(env, tiny_model_config, many_photos, tmp_path)
    deadline = time.monotonic() + 120
    while _committed(settings) < kill_after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"the job ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _assert_no_process_mentions(str(many_photos))  # its decode workers died with it
    before = _committed(settings)
    assert kill_after <= before < PHOTOS

    # A reader opening the library now sees the catalog's vectors, even those the index file lacks.
    status = run_json(["status"], env)
    assert status["index"]["vectors"] == status["images"]["indexed"] == before

    rerun = subprocess.run(
        loupe_argv(tiny_model_config, "index", many_photos, "--no-progress", "--json"),
        env={**os.environ, **env}, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["unchanged"] == before  # committed work is not redone
    assert summary["added"] == PHOTOS - before
    assert len(assert_index_matches_catalog(settings)) == PHOTOS

    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        states = [row[0] for row in conn.execute(text("SELECT state FROM jobs ORDER BY id"))]
    engine.dispose()
    assert states == ["interrupted", "finished"]
