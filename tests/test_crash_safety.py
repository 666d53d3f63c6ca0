"""Crashes that really happen: SIGKILL during an index save and during API adds/removes,
and a lost index file. Afterwards the catalog and the index agree and nothing committed is
lost."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from helpers import catalog_rows, free_port, full_run, run_json, start_server
from indexer.library import Library
from indexer.query import SearchQuery
from indexer.vectorstore import VectorStore

pytestmark = pytest.mark.slow

SAVER = """
import sys, numpy as np
from pathlib import Path
from indexer.vectorstore import VectorStore
path, sizes = Path(sys.argv[1]), [int(s) for s in sys.argv[2:]]
rng = np.random.default_rng(0)
stores = [VectorStore.build(np.arange(n), rng.standard_normal((n, 256)).astype('float32'), __import__('indexer.vectorstore', fromlist=['IndexSpec']).IndexSpec('Flat')) for n in sizes]
print('ready', flush=True)
i = 0
while True:
    stores[i % len(stores)].save(path)
    i += 1
"""


def test_sigkill_during_index_saves_never_leaves_a_torn_file(tmp_path):
    """A process saving two different indexes in a loop is killed 12 times at random moments:
    the file on disk is always one complete index or the other."""
    path = tmp_path / "index.faiss"
    sizes = (30_000, 45_000)
    rng = random.Random(3)
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path), *map(str, sizes)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if path.exists():
            assert len(VectorStore.load(path)) in sizes
    assert path.exists()


def test_index_is_rebuilt_from_the_catalog_when_its_file_is_lost(env, photos, settings, index_photos):
    index_photos(env, photos)
    settings.index_path.unlink()
    (settings.index_path.parent / ".index.faiss.123.456.tmp").write_bytes(b"half a file")
    status = run_json(["status"], env)
    assert status["index"]["vectors"] == status["images"]["indexed"] == 24
    target = next(photos.rglob("coins-0.*"))
    assert run_json(["search", "--image", str(target), "-k", "1"], env)["results"][0]["path"] == str(target)
    run_json(["index", str(photos), "--no-progress"], env)  # a writer saves it again, and clears leftovers
    assert settings.index_path.exists()
    assert not list(settings.index_path.parent.glob(".index.faiss.*.tmp"))


def _post_image(base: str, data: bytes) -> int:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{base}/api/images", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(json.loads(response.read())["id"])


def _delete(base: str, image_id: int) -> None:
    request = urllib.request.Request(f"{base}/api/images/{image_id}", method="DELETE")
    try:
        urllib.request.urlopen(request, timeout=30).close()
    except urllib.error.HTTPError as err:
        if err.code != 404:
            raise


def _library_agrees_with_catalog(settings) -> set[int]:
    """Open the library as a restarted process would: its index holds exactly the catalog's
    indexed ids, and each one finds itself first."""
    library = Library.open(settings)
    try:
        indexed = {r.id for r in catalog_rows(settings) if r.status == "indexed"}
        ids = library.store.ids().tolist()
        assert len(ids) == len(set(ids)) and set(ids) == indexed
        for image_id in sorted(indexed)[:40]:
            assert library.search(library.vector_of(image_id), SearchQuery(k=1)).results[0].id == image_id
        return indexed
    finally:
        library.close()


def test_sigkill_server_during_adds_and_removes(env, photos, settings, tiny_model_config, index_photos):
    index_photos(env, photos)
    kill_rng = random.Random(5)
    acknowledged: set[int] = set()  # ids whose add the server confirmed and that were not removed
    adds_per_round: list[int] = []
    for round_ in range(5 if full_run() else 2):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(env, tiny_model_config, port)
        stop = threading.Event()
        adds = []  # ids this round's server acknowledged (list.append is atomic)

        def writer(seed, base=base, stop=stop, adds=adds):
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                try:
                    pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(pixels).save(buf, "PNG")
                    image_id = _post_image(base, buf.getvalue())
                    acknowledged.add(image_id)
                    adds.append(image_id)
                    if len(acknowledged) > 3 and rng.random() < 0.4:
                        victim = sorted(acknowledged)[int(rng.integers(0, len(acknowledged)))]
                        acknowledged.discard(victim)  # from now on it may or may not be gone
                        _delete(base, victim)
                except (OSError, urllib.error.URLError):
                    return  # the server was killed under us

        threads = [threading.Thread(target=writer, args=(100 * round_ + i,)) for i in range(2)]
        for t in threads:
            t.start()
        # Kill at a random moment after the writers got going, however slow the machine is today.
        deadline = time.monotonic() + 120
        while len(adds) < 3 and time.monotonic() < deadline and all(t.is_alive() for t in threads):
            time.sleep(0.05)
        time.sleep(kill_rng.uniform(0.2, 1.5))
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        indexed = _library_agrees_with_catalog(settings)
        # Every add the server acknowledged (and no delete removed) survived the crash.
        assert acknowledged <= indexed, f"round {round_}: lost {acknowledged - indexed}"
        adds_per_round.append(len(adds))
    assert all(n >= 3 for n in adds_per_round), adds_per_round  # each crash hit a working server
