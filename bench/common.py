"""Helpers shared by the benchmarks: a temporary Loupe home, a corpus of photographs, a
loopback `loupe serve` and its requests, bounded timing loops, and untrained generators."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

DEFAULT_HOME = os.path.join(tempfile.gettempdir(), "loupe-bench-home")

# scikit-image photographs kept out of a corpus, so that queries made from them are pictures the
# index does not hold (the robustness benchmark holds out the same four).
HELD_OUT_PHOTOS = ("brick.png", "grass.png", "gravel.png", "text.png")


def clip_model_label(model: str, pretrained: str) -> str:
    """The CLIP model as a benchmark header names it."""
    if pretrained.lower() == "none":
        return f"{model}, pretrained none (seeded untrained weights: the real compute, no semantics)"
    return f"{model}, pretrained {pretrained}"


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


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


def spread(values: Sequence[float]) -> dict[str, float]:
    """min, median and max of `values` (repeated measurements of one figure)."""
    if not len(values):
        return {"min": float("nan"), "median": float("nan"), "max": float("nan")}
    return {"min": float(np.min(values)), "median": float(np.median(values)), "max": float(np.max(values))}


def make_corpus(folder: Path, count: int, seed: int = 0, exclude: Sequence[str] = ()) -> list[Path]:
    """`count` distinct ~1024-px JPEGs cut from the photographs scikit-image ships (less `exclude`)."""
    from indexer.demo import SAMPLE_PHOTOS

    return cut_photos(folder, count, [n for n in SAMPLE_PHOTOS if n not in exclude], seed)


def cut_photos(folder: Path, count: int, names: Sequence[str], seed: int = 0) -> list[Path]:
    """`count` ~1024-px JPEGs: seeded random crops (60-100% a side), flips and scales of the
    scikit-image photographs `names`, taken in turn."""
    from indexer.demo import sample_photos_dir

    source = sample_photos_dir()
    photos = [Image.open(source / name).convert("RGB") for name in names if (source / name).is_file()]
    if not photos:
        raise SystemExit(f"none of {', '.join(names)} is in {source}")
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


def index_folder(folder: Path, env: dict[str, str]) -> float:
    """`loupe index FOLDER` in a child process with `env` (the CLI's own defaults); seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "searchapp.cli", "index", str(folder), "--no-progress"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


# -- a loopback server and its requests -------------------------------------------------------------
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


@contextmanager
def serving(env: dict[str, str], log: Path, threads: int | None = None,
            start_s: float = 120) -> Iterator[tuple[str, int]]:
    """`loupe serve` on a free loopback port with `env` (its stderr into `log`), healthy and
    with its model loaded; yields (base URL, pid) and stops the server afterwards."""
    port = free_port()
    argv = [sys.executable, "-m", "searchapp.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if threads:
        argv += ["--threads", str(threads)]
    with open(log, "wb") as err:
        server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(base, time.monotonic() + start_s)
            timed_request(text_search_request(base, "warm up"))  # loads the model
        except (RuntimeError, OSError):
            print(Path(log).read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        yield base, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def text_search_request(base: str, text: str, k: int = 20) -> urllib.request.Request:
    """GET /api/search?q=TEXT&k=K."""
    return urllib.request.Request(f"{base}/api/search?q={urllib.parse.quote(text)}&k={k}")


def image_search_request(base: str, data: bytes, k: int = 20) -> urllib.request.Request:
    """POST /api/search/image with the picture `data` as a multipart upload (restore and
    regions at the API's defaults)."""
    body, ctype = multipart("image", "query.jpg", data)
    return urllib.request.Request(f"{base}/api/search/image?k={k}", data=body, headers={"Content-Type": ctype},
                                  method="POST")


def timed_request(request: urllib.request.Request) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        json.loads(response.read())
    return (time.perf_counter() - t0) * 1000


def timed_calls(call: Callable[[int], object], count: int, deadline_s: float) -> list[float]:
    """Call `call(i)` for i = 0, 1, ... up to `count` times or until `deadline_s` has passed;
    the milliseconds each call took."""
    stop_at = time.monotonic() + deadline_s
    times = []
    for i in range(count):
        if time.monotonic() >= stop_at:
            break
        t0 = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - t0) * 1000)
    return times


# -- untrained diffusion models (the real sizes and compute, seeded random weights) -------------------
def untrained_unet_folder(folder: Path, config, seed: int = 0) -> Path:
    """A folder holding a UNet of `config` (a `UNetConfig`) with seeded random weights, as
    `searchapp.diffusion.training.train` leaves it before its first step: what `OwnGenerator`
    and the pixel restorer load."""
    from searchapp.diffusion.training import INFO_FILE
    from searchapp.diffusion.unet import save_unet

    folder.mkdir(parents=True, exist_ok=True)
    save_unet(config.create_unet(seed), folder)
    (folder / INFO_FILE).write_text(json.dumps({"config": config.as_dict(), "steps": 0}))
    return folder


def pixel_restorer_config():
    """The shipped pixel restorer's `UNetConfig` (what `loupe train-restorer` trains)."""
    from searchapp.diffusion.unet import UNetConfig
    from searchapp.restoration.training import PATCH_SIZE, PIXEL_WIDTHS

    return UNetConfig(sample_size=PATCH_SIZE, block_out_channels=PIXEL_WIDTHS)


def install_untrained_restorers(home: Path, identity: dict, seed: int = 0) -> None:
    """Seeded untrained pixel and embedding restorers of the shipped sizes in LOUPE_HOME `home`,
    the embedding one for the CLIP model `identity` (the index's): `restore=auto` then runs
    the stages it would run with trained ones, at their real cost."""
    import dataclasses

    import torch

    from searchapp.restoration import embedding, pixel

    untrained_unet_folder(home / pixel.OWN_FOLDER, pixel_restorer_config(), seed)
    config = embedding.EmbeddingConfig(dim=int(identity["embed_dim"]))
    folder = home / embedding.OWN_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(config.create_network(seed).state_dict(), folder / embedding.WEIGHTS_FILE)
    (folder / embedding.INFO_FILE).write_text(json.dumps({"config": dataclasses.asdict(config),
                                                          "model": identity, "steps": 0}))
