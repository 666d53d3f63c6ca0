"""Bulk indexing on Ray: a local Ray instance (2 CPUs) must give the local job's index."""

from __future__ import annotations

import os

import numpy as np
import pytest
from sqlalchemy import select

from helpers import assert_index_matches_catalog, run_cli
from indexer.distributed import RayIngest, RayOptions, embedder_resources
from indexer.settings import Settings

ray = pytest.importorskip("ray")

# `ray`: scripts/test runs these after the rest, in one process, alone. A local Ray instance
# takes both cores of a 2-core machine: beside another pytest worker both crawled (three Ray jobs
# took over 8 minutes, and a 7 s search test 2 minutes). Under plain `pytest -n 2` the group
# keeps them on one worker at least.
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.xdist_group("ray")]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (starting one takes seconds). Its workers run at the
    tests' priority: Ray starts them at niceness 15, and beside the other pytest-xdist worker they
    starved (each Ray job took 3-5 minutes instead of 40 s)."""
    niceness = os.environ.get("RAY_worker_niceness")
    os.environ["RAY_worker_niceness"] = "0"  # read by the raylet ray.init starts
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        if niceness is None:
            os.environ.pop("RAY_worker_niceness")
        else:
            os.environ["RAY_worker_niceness"] = niceness
    yield
    ray.shutdown()


@pytest.mark.parametrize("cluster, options, device, expected", [
    ({"CPU": 2}, RayOptions(), "cpu", (1, 1.0, 0.0)),  # one CPU left for decode tasks
    ({"CPU": 16}, RayOptions(), "cpu", (1, 8.0, 0.0)),  # at most 8 threads per model
    ({"CPU": 64}, RayOptions(), "auto", (7, 8.0, 0.0)),
    ({"CPU": 64}, RayOptions(cpus_per_embedder=4, embedders=3), "cpu", (3, 4.0, 0.0)),
    ({"CPU": 64, "GPU": 4}, RayOptions(), "auto", (4, 1.0, 1.0)),  # one actor per GPU
    ({"CPU": 64, "GPU": 4}, RayOptions(), "cpu", (7, 8.0, 0.0)),  # --device cpu ignores GPUs
    ({"CPU": 1}, RayOptions(), "cpu", (1, 1.0, 0.0)),
])
def test_embedder_resources(cluster, options, device, expected):
    assert embedder_resources(cluster, options, device) == expected


def _home(tmp_path, env, name):
    home = tmp_path / name
    home.mkdir()
    (home / "models").symlink_to(Settings.from_env(env).models_dir.resolve())
    return {**env, "LOUPE_HOME": str(home)}


def _index(env, photos, ray_options=None, batch_size=4):
    from indexer.factory import load_embedder, open_library
    from indexer.jobs import IndexJob, IndexOptions

    settings = Settings.from_env(env)
    library = open_library(settings)
    embedder = load_embedder(settings)
    options = IndexOptions(batch_size=batch_size, progress=False)
    ingest = None if ray_options is None else RayIngest(ray_options)
    job = IndexJob(library, embedder, options, ingest=ingest)
    try:
        return ingest or job, job.run([photos])
    finally:
        library.close()


def _catalog(env):
    from indexer.catalog import ImageRecord, RegionRecord

    METADATA_COLUMNS = (  # recorded by the read stage on the workers, as by the local job (#18)
        ImageRecord.folder, ImageRecord.taken_at, ImageRecord.taken_source, ImageRecord.camera_make,
        ImageRecord.orientation, ImageRecord.has_gps, ImageRecord.metadata_version)
    from indexer.database import make_engine

    engine = make_engine(Settings.from_env(env).database_url)
    try:
        with engine.connect() as conn:
            images = conn.execute(select(
                ImageRecord.id, ImageRecord.path, ImageRecord.status, ImageRecord.duplicate_of,
                ImageRecord.content_hash, ImageRecord.width, ImageRecord.height, ImageRecord.error,
                ImageRecord.noise_level, ImageRecord.local_features, *METADATA_COLUMNS, ImageRecord.embedding)
                .order_by(ImageRecord.id)).all()
            regions = conn.execute(select(
                RegionRecord.id, RegionRecord.image_id, RegionRecord.x, RegionRecord.y, RegionRecord.w,
                RegionRecord.h, RegionRecord.embedding).order_by(RegionRecord.id)).all()
    finally:
        engine.dispose()
    return images, regions


def _assert_same_catalog(a_env, b_env):
    a_images, a_regions = _catalog(a_env)
    b_images, b_regions = _catalog(b_env)
    assert [row[:-1] for row in a_images] == [row[:-1] for row in b_images]
    assert [row[:-1] for row in a_regions] == [row[:-1] for row in b_regions]
    for a, b in zip(a_images + a_regions, b_images + b_regions):
        if a[-1] is not None:
            np.testing.assert_allclose(np.frombuffer(a[-1], np.float32), np.frombuffer(b[-1], np.float32), atol=1e-5)


def test_ray_job_gives_the_local_jobs_ids_and_vectors(local_ray, env, photos, tmp_path):
    (photos / "a" / "broken.jpg").write_bytes(b"not a picture")
    (photos / "b" / "copy-of-coffee.png").write_bytes(next(photos.rglob("coffee-0.*")).read_bytes())
    ray_env = _home(tmp_path, env, "ray-home")
    _, local = _index(env, photos)
    job, distributed = _index(ray_env, photos, RayOptions(part_size=7))
    assert (distributed.added, distributed.duplicates, distributed.failed) == (24, 1, 1)
    assert (local.added, local.duplicates, local.failed) == (24, 1, 1)
    assert job.landed == 26 and job.recovered_files == 0
    _assert_same_catalog(env, ray_env)
    assert_index_matches_catalog(Settings.from_env(ray_env))
    assert not list((tmp_path / "ray-home" / "shards").glob("*.npz"))  # merged part files are deleted

    # Incremental like the local job: a rerun embeds nothing.
    again, summary = _index(ray_env, photos, RayOptions(part_size=7))
    assert (summary.added, summary.unchanged) == (0, 26) and again.landed == 0


def test_interrupted_ray_job_resumes_from_its_written_part_file(local_ray, env, photos, tmp_path, monkeypatch):
    """A driver that dies after writing a part file but before merging it: the rerun merges that
    part without sending its files through Ray again, and the result equals a clean run."""
    reference = _home(tmp_path, env, "reference")
    _index(reference, photos)
    merge = RayIngest._merge

    def die_on_second_part(self, part, job):
        if self.landed >= 10:
            raise KeyboardInterrupt
        merge(self, part, job)

    monkeypatch.setattr(RayIngest, "_merge", die_on_second_part)
    with pytest.raises(KeyboardInterrupt):
        _index(env, photos, RayOptions(part_size=10))
    left = list((Settings.from_env(env).home / "shards").glob("*.npz"))
    assert len(left) == 1
    monkeypatch.setattr(RayIngest, "_merge", merge)

    job, summary = _index(env, photos, RayOptions(part_size=10))
    assert job.recovered_files == 10 and job.landed == 4  # only the last 4 files went through Ray
    assert summary.added == 14 and summary.unchanged == 10
    _assert_same_catalog(reference, env)
    assert not list((Settings.from_env(env).home / "shards").glob("*.npz"))


def test_cli_index_with_ray(local_ray, env, photos):
    code, out, err = run_cli(["index", str(photos), "--ray", "auto", "--no-progress"], env)
    assert code == 0, err
    assert "indexed 24 new" in out
    code, _, err = run_cli(["index", str(photos), "--ray", "auto", "--workers", "2"], env)
    assert code == 1 and "--workers is for local jobs" in err
