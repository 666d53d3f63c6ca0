""""Generate similar": Loupe's own DDPM (trained here on the indexed photographs, tiny
config) and a diffusers img2img pipeline (tiny, built in the test), through the API."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from conftest import make_env, write_photo_folder
from helpers import check_schema, run_json
from searchapp import create_app
from searchapp.cli import main as loupe_main
from searchapp.diffusion.training import TrainOptions, load_pictures, read_info, train
from searchapp.diffusion.unet import UNetConfig
from searchapp.generation.backends import OWN_MODEL_FOLDER
from searchapp.settings import ServiceSettings

pytestmark = pytest.mark.slow

TINY = UNetConfig(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
TRAIN_STEPS = 8


@pytest.fixture
def indexed(env, photos, index_photos):
    index_photos(env, photos)
    return env


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory, tiny_model_config, models_dir, photo_arrays):
    """Photographs indexed, and a tiny generator trained on them for a few seeded steps: built
    once for the module; each test's generations are its own jobs."""
    from indexer.factory import open_library
    from indexer.settings import Settings

    folder = tmp_path_factory.mktemp("generate")
    env = make_env(folder, models_dir)
    run_json(["index", str(write_photo_folder(folder / "photos", photo_arrays)), "--no-progress"], env)
    settings = Settings.from_env(env)
    library = open_library(settings)
    paths = library.indexed_paths()
    library.close()
    pictures = load_pictures([p for p in paths], TINY.sample_size, limit=100)
    summary = train(settings.home / OWN_MODEL_FOLDER, pictures, TINY,
                    TrainOptions(budget_seconds=3600, max_steps=TRAIN_STEPS, batch_size=4, progress=False))
    assert summary.steps == TRAIN_STEPS
    return settings


@pytest.fixture
def trained(trained_home):
    return trained_home


# These tests wait for their generations in the request (`wait`): the server's cap on that wait
# (5 s, so that a request thread is never held long) is raised for them.
WAITING = {"TESTING": True, "GENERATE_MAX_WAIT": 120}


@pytest.fixture
def client(trained):
    return create_app({**WAITING, "LOUPE_SETTINGS": ServiceSettings(trained)}).test_client()


def _png(client, url) -> np.ndarray:
    response = client.get(url)
    assert response.status_code == 200 and response.mimetype == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.data)))


def test_training_resumes_where_it_stopped(indexed, settings, tmp_path):
    pictures = load_pictures([str(p) for p in sorted((tmp_path / "photos").rglob("*.*"))], 16, limit=50)
    folder = tmp_path / "model"
    options = TrainOptions(budget_seconds=3600, max_steps=3, batch_size=4, progress=False)
    first = train(folder, pictures, TINY, options)
    second = train(folder, pictures, TINY, options)
    assert not first.resumed and second.resumed
    assert (first.steps, second.steps, second.total_steps) == (3, 3, 6)
    assert read_info(folder)["steps"] == second.total_steps
    with pytest.raises(ValueError, match="another configuration"):
        train(folder, pictures, UNetConfig(sample_size=16, block_out_channels=(8, 8), norm_num_groups=4), options)


def test_train_generator_command(indexed, capsys):
    args = ["train-generator", "--steps", "2", "--batch-size", "2", "--size", "32", "--no-progress", "--json"]
    assert loupe_main(args, indexed) == 0
    first = json.loads(capsys.readouterr().out)
    assert loupe_main(args, indexed) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["steps"] == second["steps"] == 2 and second["resumed"] and second["total_steps"] == 4
    assert loupe_main(["train-generator", "--minutes", "0"], indexed) == 1
    assert loupe_main(["train-generator", "--steps", "0"], indexed) == 1


def test_generate_from_an_indexed_image_with_neighbours(client):
    body = {"image_id": 1, "n": 3, "seed": 7, "steps": 6, "strength": 0.5, "wait": 60}
    response = client.post("/api/generate", json=body)
    assert response.status_code == 200, response.get_json()
    job = check_schema(response, "/api/generate", "post")
    assert job["state"] == "finished" and job["progress"] == 1.0
    assert job["parameters"] == {"n": 3, "strength": 0.5, "seed": 7, "steps": 6}
    assert job["source"] == {"image_id": 1}
    assert job["backend"]["backend"] == "loupe-ddpm" and job["backend"]["low_resolution"] is True
    assert [image["seed"] for image in job["images"]] == [7, 8, 9]
    first = [_png(client, image["url"]) for image in job["images"]]
    assert all(p.shape == (16, 16, 3) for p in first)
    for image in job["images"]:
        assert len(image["neighbours"]) == 6
        assert all({"id", "score", "path"} <= set(n) for n in image["neighbours"])
    assert check_schema(client.get(f"/api/jobs/{job['id']}"), "/api/jobs/{job_id}")["state"] == "finished"

    again = client.post("/api/generate", json=body).get_json()  # same seed and inputs: same pictures
    assert again["id"] != job["id"]
    assert all(np.array_equal(a, _png(client, b["url"])) for a, b in zip(first, again["images"]))
    other = client.post("/api/generate", json={**body, "seed": 8, "n": 1}).get_json()
    # Picture i depends on seed + i. Not bit for bit: the model ran on a batch of 3 then of 1, and
    # torch's CPU kernels may sum in another order for another batch size (a level here and there).
    alone = _png(client, other["images"][0]["url"]).astype(int)
    assert np.abs(alone - first[1]).max() <= 2 and np.abs(alone - first[1]).mean() < 0.1
    moved = client.post("/api/generate", json={**body, "seed": 100, "n": 1}).get_json()
    assert not np.array_equal(_png(client, moved["images"][0]["url"]), first[0])


def test_a_generated_picture_is_indexed_only_when_asked(client, trained):
    job = client.post("/api/generate", json={"image_id": 1, "n": 2, "steps": 2, "wait": 60}).get_json()
    before = client.get("/api/health").get_json()["images"]
    response = client.post(f"/api/jobs/{job['id']}/images/1/add")
    assert response.status_code == 201 and response.headers["Location"].startswith("/api/images/")
    added = check_schema(response, "/api/jobs/{job_id}/images/{number}/add", "post")
    assert added["width"] == 16 and added["path"].startswith(str(trained.home / "uploads"))
    assert client.get("/api/health").get_json()["images"] == before + 1
    assert client.post(f"/api/jobs/{job['id']}/images/5/add").status_code == 404


def test_generate_from_an_upload_and_after_a_restart(client, trained, photos):
    data = next(photos.rglob("coffee-0.*")).read_bytes()
    response = client.post("/api/generate", data={"image": (io.BytesIO(data), "q.png"), "n": "1", "steps": "4",
                                                  "wait": "60"})
    job = response.get_json()
    assert response.status_code == 200 and job["state"] == "finished"
    assert set(job["source"]) == {"upload_sha256"}
    restarted = create_app({**WAITING, "LOUPE_SETTINGS": ServiceSettings(trained)}).test_client()
    assert restarted.get(f"/api/jobs/{job['id']}").get_json()["images"] == job["images"]
    assert restarted.get(job["images"][0]["url"]).status_code == 200


def test_generation_runs_in_the_background_and_can_be_cancelled(client):
    response = client.post("/api/generate", json={"image_id": 2, "n": 8, "steps": 200, "strength": 1.0, "wait": 0})
    assert response.status_code == 202
    job = check_schema(response, "/api/generate", "post")
    assert job["state"] in ("queued", "running") and response.headers["Location"] == f"/api/jobs/{job['id']}"
    cancelled = client.post(f"/api/jobs/{job['id']}/cancel").get_json()
    assert cancelled["id"] == job["id"]
    deadline = time.monotonic() + 30
    while client.get(f"/api/jobs/{job['id']}").get_json()["state"] not in ("cancelled", "finished"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get(f"/api/jobs/{job['id']}").get_json()["state"] == "cancelled"


@pytest.mark.parametrize("body, field", [
    ({"image_id": 1, "n": 9}, "n"), ({"image_id": 1, "n": 0}, "n"), ({"image_id": 1, "strength": 0}, "strength"),
    ({"image_id": 1, "strength": "nan"}, "strength"), ({"image_id": 1, "seed": -1}, "seed"),
    ({"image_id": 1, "steps": 1000}, "steps"), ({"image_id": "x"}, "image_id"), ({}, "image"),
])
def test_bad_generate_requests_are_400(client, body, field):
    response = client.post("/api/generate", json=body)
    assert response.status_code == 400 and field in response.get_json()["message"]


def test_unknown_jobs_and_pictures_are_404(client):
    assert client.get("/api/jobs/gen-0123456789abcdef").status_code == 404
    assert client.get("/api/jobs/nonsense").status_code == 404
    assert client.get("/generated/gen-0123456789abcdef/0.png").status_code == 404
    assert client.get("/generated/..%2F..%2Floupe.db/0.png").status_code == 404
    assert client.post("/api/generate", json={"image_id": 9999}).status_code == 404


def test_without_a_generator_the_answer_says_how_to_get_one(indexed, settings):
    client = create_app({"TESTING": True, "LOUPE_SETTINGS": ServiceSettings(settings)}).test_client()
    response = client.post("/api/generate", json={"image_id": 1})
    assert response.status_code == 503
    assert response.get_json()["error"] == "generator_unavailable"
    assert "loupe train-generator" in response.get_json()["message"]


def test_generated_pictures_expire(client, trained):
    job = client.post("/api/generate", json={"image_id": 1, "n": 1, "steps": 2, "wait": 60}).get_json()
    store = client.application.extensions["loupe"].generations.store
    assert store.purge(now=time.time() + 3600) == 0  # the default limit is a week
    assert store.purge(now=time.time() + 8 * 24 * 3600) >= 1
    assert client.get(job["images"][0]["url"]).status_code == 404


def test_pretrained_diffusers_pipeline_backend(indexed, settings, tmp_path):
    pytest.importorskip("transformers")

    from bench.random_models import TINY, save_random_pipeline

    pipeline = save_random_pipeline(tmp_path / "sd", TINY)
    client = create_app({**WAITING,
                         "LOUPE_SETTINGS": ServiceSettings(settings, generate_model=str(pipeline))}).test_client()
    body = {"image_id": 3, "n": 2, "seed": 5, "steps": 4, "strength": 0.5, "wait": 120}
    job = client.post("/api/generate", json=body).get_json()
    assert job["state"] == "finished", job
    assert job["backend"]["backend"] == "diffusers-img2img" and job["backend"]["resolution"] == 16
    first = [_png(client, image["url"]) for image in job["images"]]
    assert first[0].shape == (16, 16, 3) and len(job["images"][0]["neighbours"]) == 6
    again = client.post("/api/generate", json=body).get_json()
    assert all(np.array_equal(a, _png(client, b["url"])) for a, b in zip(first, again["images"]))

    broken = create_app({**WAITING, "LOUPE_SETTINGS": ServiceSettings(settings, generate_model=str(tmp_path))})
    failed = broken.test_client().post("/api/generate", json={**body, "wait": 60}).get_json()
    assert failed["state"] == "failed" and "cannot load" in failed["error"]
