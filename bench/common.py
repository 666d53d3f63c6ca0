"""Helpers shared by the benchmarks: a temporary Loupe home, a corpus of photographs, and
small HTTP helpers for loopback servers."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_HOME = os.path.join(tempfile.gettempdir(), "loupe-bench-home")


def bench_workspace(prefix: str, home: str, model: str, pretrained: str) -> tuple[Path, dict[str, str]]:
    """A fresh temporary folder with a LOUPE_HOME inside, whose model cache is `home`/models
    (kept between runs, so untrained ViT-B-32 weights are made once); returns (folder, env)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    models = Path(home) / "models"
    models.mkdir(parents=True, exist_ok=True)
    (work / "home").mkdir()
    (work / "home" / "models").symlink_to(models, target_is_directory=True)
    env = {**os.environ, "LOUPE_HOME": str(work / "home"), "LOUPE_MODEL": model,
           "LOUPE_PRETRAINED": pretrained, "LOUPE_DEVICE": "cpu"}
    return work, env


TEXT_QUERIES = ["a cat", "an astronaut in a suit", "a cup of coffee", "a rocket on the launch pad",
                "coins on a table", "the surface of the moon", "a red motorcycle", "a man with a camera"]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def make_corpus(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` distinct ~1024-px JPEGs cut from the photographs scikit-image ships."""
    from indexer.demo import SAMPLE_PHOTOS, sample_photos_dir

    source = sample_photos_dir()
    photos = [Image.open(source / name).convert("RGB") for name in SAMPLE_PHOTOS if (source / name).is_file()]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        img = photos[i % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch))
        scale = 1024 / max(crop.size)
        crop = crop.resize((max(1, int(crop.width * scale)), max(1, int(crop.height * scale))), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / f"photo{i:04d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(base: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/api/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("the server did not become healthy in time")


def timed_request(request: urllib.request.Request) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        json.loads(response.read())
    return (time.perf_counter() - t0) * 1000
