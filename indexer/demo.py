"""The demo library behind `loupe demo`: a small set of real photographs, indexed, and
sample searches on it (the command itself is in `searchapp.cli.serve`).

The photographs are the ones scikit-image ships (astronaut, cat, coffee, rocket, ...). The
demo keeps its own data folder (`$LOUPE_HOME/demo`, embedded SQLite) so it never mixes with
a real library.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TextIO

from .errors import LoupeError, ModelMismatchError, WeightsUnavailableError
from .factory import load_embedder, open_library
from .settings import Settings

SAMPLE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png",
    "page.png", "retina.jpg", "rocket.jpg", "text.png",
)
SAMPLE_QUERIES = ("an astronaut", "a cat", "a cup of coffee", "a rocket launch", "the moon")


def sample_photos_dir() -> Path:
    try:
        import skimage.data
    except ImportError as err:
        raise LoupeError("the demo's photographs come from scikit-image: pip install 'loupe[demo]'") from err
    return Path(skimage.data.__file__).parent


def copy_samples(dest: Path) -> Path:
    """Copy the sample photographs into `dest` (once) and return it."""
    source = sample_photos_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_PHOTOS:
        if (source / name).is_file() and not (dest / name).exists():
            shutil.copy2(source / name, dest / name)
    return dest


def demo_settings(settings: Settings) -> Settings:
    home = settings.home / "demo"
    return settings.with_overrides(home=home, database_url=f"sqlite:///{home / 'loupe.db'}")


def run_demo(settings: Settings, out: TextIO, progress: bool = True) -> Settings:
    """Index and search the samples; returns the settings of the demo library it used."""
    from .images import load_image_file
    from .jobs import IndexJob, IndexOptions
    from .query import SearchQuery

    demo = demo_settings(settings)
    photos = copy_samples(settings.home / "demo-photos")  # outside the demo home, which indexing skips
    print(f"loupe demo: loading {demo.model}/{demo.pretrained} ...", file=out, flush=True)
    try:
        embedder = load_embedder(demo)
    except WeightsUnavailableError as err:
        print(f"loupe demo: {err}", file=out)
        print("loupe demo: continuing with untrained weights: the searches below are NOT semantic", file=out)
        demo = demo.with_overrides(pretrained="none")
        embedder = load_embedder(demo)
    else:
        if embedder.identity.caveat():
            print(f"loupe demo: note: {embedder.identity.caveat()}", file=out)
    library = open_library(demo)
    try:
        library.bind_model(embedder.identity)
    except ModelMismatchError:  # the demo's own data, made with other weights: start afresh
        library.close()
        for name in ("loupe.db", "loupe.db-wal", "loupe.db-shm", "index.faiss"):
            (demo.home / name).unlink(missing_ok=True)
        library = open_library(demo)
    summary = IndexJob(library, embedder, IndexOptions(workers=0, progress=progress)).run([photos])
    print(f"loupe demo: {summary.line()}", file=out)
    for query in SAMPLE_QUERIES:
        page = library.search(embedder.encode_texts([query]), SearchQuery(k=3))
        names = ", ".join(f"{Path(r.path).name} ({r.score:.3f})" for r in page.results)
        print(f'  "{query}": {names}', file=out)
    probe = photos / "chelsea.png"
    page = library.search(embedder.encode_images([load_image_file(probe).image]), SearchQuery(k=3))
    names = ", ".join(f"{Path(r.path).name} ({r.score:.3f})" for r in page.results)
    print(f"  image {probe.name}: {names}", file=out)
    pretrained = "" if demo.pretrained == settings.pretrained else f"LOUPE_PRETRAINED={demo.pretrained} "
    print(f'loupe demo: search it yourself with  LOUPE_HOME={demo.home} {pretrained}loupe search "a cat"', file=out)
    # The demo keeps its own home: a plain `loupe serve` shows LOUPE_HOME's library, not this one.
    print(f"loupe demo: this library lives in {demo.home}; serve it later with  LOUPE_HOME={demo.home} "
          f"{pretrained}loupe serve", file=out)
    return demo
