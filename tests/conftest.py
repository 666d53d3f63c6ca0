"""Shared fixtures: a tiny open_clip model, real photographs, temp homes and databases.

Nothing here touches the network or a GPU. The tiny CLIP architecture is registered with
open_clip from a config written by the test session; its weights are Loupe's seeded
untrained checkpoint (`LOUPE_PRETRAINED=none`), created once per home.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_MODEL = "loupe-test-tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
POSTGRES_ADMIN_URL = os.environ.get("LOUPE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
PHOTO_FILES = {
    "astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg",
    "camera": "camera.png", "moon": "moon.png", "coins": "coins.png", "motorcycle": "motorcycle_left.png",
}


def write_tiny_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{TINY_MODEL}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


@pytest.fixture(scope="session")
def tiny_model_config(tmp_path_factory) -> Path:
    """Register the tiny architecture with open_clip (in this process) and return its file."""
    import open_clip

    path = write_tiny_config(tmp_path_factory.mktemp("model-config"))
    open_clip.add_model_config(path)
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """One folder for model weights shared by the session, so the tiny checkpoint is made once."""
    return tmp_path_factory.mktemp("models")


def make_env(folder: Path, models_dir: Path) -> dict[str, str]:
    """An environment for Loupe under `folder`: its own home (sharing the session's model
    weights), the tiny model, seeded untrained weights, CPU."""
    home = folder / "home"
    home.mkdir(parents=True)
    (home / "models").symlink_to(models_dir, target_is_directory=True)
    return {
        "HOME": str(folder),
        "LOUPE_HOME": str(home),
        "LOUPE_MODEL": TINY_MODEL,
        "LOUPE_PRETRAINED": "none",
        "LOUPE_DEVICE": "cpu",
    }


@pytest.fixture
def env(tmp_path, tiny_model_config, models_dir) -> dict[str, str]:
    """An environment for Loupe: temp home, tiny model, seeded untrained weights, CPU."""
    return make_env(tmp_path, models_dir)


@pytest.fixture
def settings(env):
    from indexer.settings import Settings

    return Settings.from_env(env)


@pytest.fixture
def embedder(settings):
    from indexer.factory import load_embedder

    return load_embedder(settings)


def real_photo(name: str) -> np.ndarray:
    """One of the photographs scikit-image ships (inside its wheel), as RGB pixels."""
    import skimage.data

    with Image.open(Path(skimage.data.__file__).parent / PHOTO_FILES[name]) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="session")
def photo_arrays() -> dict[str, np.ndarray]:
    return {name: real_photo(name) for name in PHOTO_FILES}


def write_photos(folder: Path, photos: dict[str, np.ndarray], variants: int = 1, seed: int = 0) -> list[Path]:
    """Write each photograph (and seeded crops of it) as JPEG/PNG files; returns their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pixels in photos.items():
        for v in range(variants):
            img = Image.fromarray(pixels)
            if v:
                w, h = img.size
                cw, ch = int(w * rng.uniform(0.5, 0.9)), int(h * rng.uniform(0.5, 0.9))
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                img = img.crop((x, y, x + cw, y + ch))
            suffix = ".png" if (v + len(name)) % 3 == 0 else ".jpg"
            path = folder / f"{name}-{v}{suffix}"
            img.save(path, quality=90) if suffix == ".jpg" else img.save(path)
            paths.append(path)
    return paths


def write_photo_folder(root: Path, photo_arrays: dict[str, np.ndarray]) -> Path:
    """8 originals and 2 crops of each (24 files), in 2 subfolders under `root`."""
    items = list(photo_arrays.items())
    write_photos(root / "a", dict(items[:4]), variants=3)
    write_photos(root / "b" / "nested", dict(items[4:]), variants=3, seed=1)
    return root


@pytest.fixture(scope="session")
def photo_template(tmp_path_factory, photo_arrays) -> Path:
    """The test photographs, written once per session (`photos` copies them)."""
    return write_photo_folder(tmp_path_factory.mktemp("photo-template") / "photos", photo_arrays)


@pytest.fixture
def photos(tmp_path, photo_template) -> Path:
    """A folder of real photographs: 8 originals and 2 crops of each (24 files), in 2 subfolders.
    A copy of the session's set: the same bytes and modification times in every test."""
    return Path(shutil.copytree(photo_template, tmp_path / "photos"))


@pytest.fixture(scope="session")
def indexed_template(tmp_path_factory, tiny_model_config, models_dir, photo_template):
    from indexed_template import IndexedTemplate

    return IndexedTemplate.build(tmp_path_factory.mktemp("indexed-template"), models_dir, photo_template)


@pytest.fixture
def index_photos(indexed_template):
    """`index_photos(env, photos)`: what `loupe index PHOTOS --json` leaves in a fresh home, copied
    from one real run per session when env and photographs are the standard ones, else run
    (`tests/indexed_template.py`). For tests whose subject is not indexing."""
    return indexed_template.restore


@pytest.fixture(scope="session")
def postgres_admin_url():
    """The local PostgreSQL server; skipped (outside CI) when it is not running."""
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {err}")
    finally:
        engine.dispose()
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin_url):
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"loupe_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_env(request, env):
    """`env` on the embedded SQLite default, then on a real PostgreSQL database (migrated)."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        env = {**env, "LOUPE_DATABASE_URL": url}
        from searchapp.cli import main

        assert main(["db", "upgrade"], environ=env) == 0
    return env
