"""`loupe reembed`: a library indexed with one tiny seeded model moved to another in place.

Model A is the tiny architecture's seeded untrained weights (`LOUPE_PRETRAINED=none`); model B
is the same architecture with weights of another seed, saved as a checkpoint file (same
dimension: the case where stale vectors could pass for new ones by their ids); model C is
another tiny architecture (another dimension and input size). One library indexed with A is
built per module and copied for each test.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from conftest import TINY_CONFIG, TINY_MODEL, make_env, write_photos
from helpers import assert_index_matches_catalog, catalog_rows, run_cli, run_json

TINY_C = "loupe-test-tiny-c"
C_CONFIG = {**TINY_CONFIG, "embed_dim": 24,
            "vision_cfg": {**TINY_CONFIG["vision_cfg"], "image_size": 48, "patch_size": 16}}


@pytest.fixture(autouse=True)
def small_inlier_calibration(monkeypatch):
    """The swap recalibrates; its inlier part (geometric verification of each sampled picture
    against its neighbours) runs on two pictures here, to keep the tests fast."""
    import indexer.library

    monkeypatch.setattr(indexer.library, "INLIER_CALIBRATION_SAMPLE", 2)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model_config, models_dir, photo_arrays):
    """Photos (3 pictures and a crop of each, a byte-for-byte copy, a broken file) indexed with
    model A; the environments of A, B and C; model B's fresh index of the same photos."""
    import open_clip
    import torch

    root = tmp_path_factory.mktemp("reembed")
    photos = root / "photos"
    write_photos(photos, dict(list(photo_arrays.items())[:3]), variants=2)
    shutil.copy(next(photos.glob("*.png")), photos / "copy.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    config_c = root / "config" / f"{TINY_C}.json"
    config_c.parent.mkdir()
    config_c.write_text(json.dumps(C_CONFIG))
    open_clip.add_model_config(config_c)
    weights_b = root / "b.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        torch.save(open_clip.create_model(TINY_MODEL, pretrained=None).state_dict(), weights_b)
    env_a = make_env(root / "a", models_dir)
    assert run_cli(["index", str(photos), "--no-progress"], env_a)[0] == 0
    env_fresh_b = {**make_env(root / "fresh-b", models_dir), "LOUPE_PRETRAINED": str(weights_b)}
    assert run_cli(["index", str(photos), "--no-progress"], env_fresh_b)[0] == 0
    return {"photos": photos, "env_a": env_a, "weights_b": weights_b, "fresh_b": snapshot(env_fresh_b)}


@pytest.fixture
def env_a(base, tmp_path):
    """A copy of the library indexed with A (same photos), for one test to change."""
    home = Path(base["env_a"]["LOUPE_HOME"])
    shutil.copytree(home, tmp_path / "copy" / "home", symlinks=True)
    return {**base["env_a"], "HOME": str(tmp_path / "copy"), "LOUPE_HOME": str(tmp_path / "copy" / "home")}


def make_app_for(env):
    from searchapp import create_app
    from searchapp.settings import ServiceSettings

    return create_app({"TESTING": True, "LOUPE_SETTINGS": ServiceSettings.from_env(env)})


def env_b(env: dict, base) -> dict:
    return {**env, "LOUPE_PRETRAINED": str(base["weights_b"])}


def settings_of(env):
    from indexer.settings import Settings

    return Settings.from_env(env)


def snapshot(env) -> dict:
    """The catalog's vectors by path: {path: (status, whole vector or None, {box: region vector})}."""
    from indexer.catalog import ImageRecord, RegionRecord
    from indexer.database import make_engine

    engine = make_engine(settings_of(env).database_url)
    with engine.connect() as conn:
        rows = conn.execute(select(ImageRecord.id, ImageRecord.path, ImageRecord.status, ImageRecord.embedding)).all()
        regions = conn.execute(select(RegionRecord.image_id, RegionRecord.x, RegionRecord.y, RegionRecord.w,
                                      RegionRecord.h, RegionRecord.embedding)).all()
    engine.dispose()
    by_image: dict[int, dict] = {}
    for r in regions:
        by_image.setdefault(r.image_id, {})[(r.x, r.y, r.w, r.h)] = np.frombuffer(r.embedding, np.float32)
    return {r.path: (r.status, None if r.embedding is None else np.frombuffer(r.embedding, np.float32),
                     by_image.get(r.id, {})) for r in rows}


def assert_same_vectors(found: dict, wanted: dict) -> None:
    assert found.keys() == wanted.keys()
    for path, (status, whole, regions) in wanted.items():
        got_status, got_whole, got_regions = found[path]
        assert got_status == status, path
        if whole is None:
            assert got_whole is None, path
            continue
        np.testing.assert_allclose(got_whole, whole, atol=1e-5, err_msg=path)
        assert got_regions.keys() == regions.keys(), path
        for box, vector in regions.items():
            np.testing.assert_allclose(got_regions[box], vector, atol=1e-5, err_msg=f"{path} {box}")


def saved(settings) -> None:
    """What the next writer does first: the index files reconciled with the catalog and saved."""
    from indexer.factory import open_library

    library = open_library(settings)
    with library.writer():
        library.sync_store()
    library.close()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reembed_swaps_the_library_to_the_new_model(env_a, base):
    before = snapshot(env_a)
    code, out, err = run_cli(["reembed", "--no-progress", "--json"], env_b(env_a, base))
    assert code == 0, err
    summary = json.loads(out)
    indexed = sum(1 for status, _, _ in before.values() if status == "indexed")
    assert summary["pictures"] == summary["embedded"] == indexed and summary["resumed"] == 0
    assert summary["old_model"]["pretrained"] == "none" and summary["new_model"]["pretrained"] == "file"
    # Exactly the vectors a fresh index of the same photos with B holds; failed stays failed.
    assert_same_vectors(snapshot(env_a), base["fresh_b"])
    assert before[str(base["photos"] / "broken.jpg")][0] == "failed"
    settings = settings_of(env_a)
    assert len(assert_index_matches_catalog(settings)) == indexed
    status = run_json(["status"], env_b(env_a, base))
    assert status["model"]["index"]["pretrained"] == "file" and status["index"]["vectors"] == indexed
    assert settings.index_path.with_name("index.faiss.model").read_text().split("|")[1] == "file"
    # Searching works with B, and is refused with A with a message naming the way back.
    found = run_json(["search", "a cat", "-k", "3"], env_b(env_a, base))
    assert len(found["results"]) == 3
    code, _, err = run_cli(["search", "a cat"], env_a)
    assert code == 1 and "was built with" in err and "loupe reembed" in err
    # Another run has nothing to do.
    code, _, err = run_cli(["reembed", "--no-progress"], env_b(env_a, base))
    assert code == 1 and "already uses" in err and err.count("\n") == 1


def test_reembed_to_another_architecture_changes_the_dimension(env_a, base):
    env_c = {**env_a, "LOUPE_MODEL": TINY_C}
    code, out, err = run_cli(["reembed", "--no-progress"], env_c)
    assert code == 0, err
    assert "re-embedded" in out and "restart `loupe serve`" in out
    settings = settings_of(env_c)
    assert_index_matches_catalog(settings)
    status = run_json(["status"], env_c)
    assert status["model"]["index"]["architecture"] == TINY_C and status["index"]["dim"] == 24
    assert status["regions"]["dim"] == 24 and status["regions"]["vectors"] > 0
    image = next(base["photos"].glob("*.jpg"))
    found = run_json(["search", "--image", str(image), "-k", "1", "--restore", "off"], env_c)
    assert found["results"][0]["path"] == str(image)


def test_interrupted_reembed_resumes_and_leaves_the_old_index_untouched(env_a, base):
    from indexer.catalog import StagedVector
    from indexer.errors import CancelledError
    from indexer.factory import load_embedder, open_library
    from indexer.reembed import Reembed, ReembedOptions

    settings = settings_of(env_a)
    before, index_before = snapshot(env_a), file_digest(settings.index_path)
    query = run_json(["search", "a cat", "-k", "5"], env_a)
    library = open_library(settings_of(env_b(env_a, base)))
    embedder = load_embedder(settings_of(env_b(env_a, base)))
    batches = iter(range(100))
    job = Reembed(library, embedder, ReembedOptions(batch_size=2, progress=False),
                  cancelled=lambda: next(batches) >= 1)  # stop after the second batch
    with pytest.raises(CancelledError, match="rerun `loupe reembed`"):
        job.run()
    library.close()
    with library.sessions() as session:
        assert len(session.scalars(select(StagedVector.image_id)).all()) == 4
    # The old model's library is as it was: vectors, index file, model, searches.
    assert_same_vectors(snapshot(env_a), before)
    assert file_digest(settings.index_path) == index_before
    assert run_json(["search", "a cat", "-k", "5"], env_a)["results"] == query["results"]
    status = run_json(["status"], env_a)
    assert status["model"]["index"]["pretrained"] == "none"
    assert status["reembed"]["staged"] == 4 and status["reembed"]["model"]["pretrained"] == "file"
    code, out, _ = run_cli(["status"], env_a)
    assert code == 0 and "4 of 6 pictures staged" in out
    # The rerun embeds only the rest.
    summary = run_json(["reembed", "--no-progress"], env_b(env_a, base))
    assert summary["resumed"] == 4 and summary["embedded"] == summary["pictures"] - 4
    assert_same_vectors(snapshot(env_a), base["fresh_b"])
    assert run_json(["status"], env_a)["reembed"] is None


def test_a_crash_during_the_swap_leaves_one_model_whole(env_a, base, monkeypatch):
    import indexer.reembed as reembed

    settings = settings_of(env_a)
    before = snapshot(env_a)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies here

    # Before the catalog commits: the index files are gone, the catalog is A's whole.
    monkeypatch.setattr(reembed, "_commit_swap", crash)
    assert run_cli(["reembed", "--no-progress"], env_b(env_a, base))[0] == 130
    assert not settings.index_path.exists()
    assert_same_vectors(snapshot(env_a), before)
    assert len(run_json(["search", "a cat", "-k", "3"], env_a)["results"]) == 3  # rebuilt from the catalog
    saved(settings)
    assert_index_matches_catalog(settings)
    # After the commit, before the new index is saved: B's whole (the stale file is never read).
    monkeypatch.undo()
    monkeypatch.setattr(reembed, "_rebuild_indexes", crash)
    code, _, err = run_cli(["reembed", "--no-progress"], env_b(env_a, base))
    assert code == 130, err
    monkeypatch.undo()
    assert_same_vectors(snapshot(env_a), base["fresh_b"])
    assert len(run_json(["search", "a cat", "-k", "3"], env_b(env_a, base))["results"]) == 3
    saved(settings)
    assert_index_matches_catalog(settings)
    from indexer.vectorstore import VectorStore

    store = VectorStore.load(settings.index_path)
    fresh = base["fresh_b"]
    by_id = {row.path: row for row in catalog_rows(settings)}
    for path, (status, whole, _) in fresh.items():
        if status == "indexed":
            np.testing.assert_allclose(store.search(whole, 1)[0][0].score, 1.0, atol=1e-4)
            assert store.search(whole, 1)[0][0].id == by_id[path].id


def test_unreadable_files_are_refused_unless_allowed(env_a, base, tmp_path, photo_arrays):
    extra = tmp_path / "extra"
    gone = write_photos(extra, {"coins": photo_arrays["coins"]})[0]
    original = write_photos(extra, {"moon": photo_arrays["moon"]})[0]
    shutil.copy(original, extra / "moon-copy.png")
    assert run_cli(["index", str(extra), "--no-progress"], env_a)[0] == 0
    rows = {row.path: row for row in catalog_rows(settings_of(env_a))}
    holder = next(Path(p) for p in (original, extra / "moon-copy.png") if rows[str(p)].status == "indexed")
    holder.unlink()  # the picture is read from its duplicate instead
    moved = gone.read_bytes()
    gone.unlink()
    code, _, err = run_cli(["reembed", "--no-progress"], env_b(env_a, base))
    assert code == 1 and err.count("\n") == 1
    assert "1 indexed pictures could not be read" in err and str(gone) in err and "--allow-unreadable" in err
    assert run_json(["status"], env_a)["model"]["index"]["pretrained"] == "none"  # nothing swapped
    summary = run_json(["reembed", "--no-progress", "--allow-unreadable"], env_b(env_a, base))
    assert summary["resumed"] > 0 and [u["path"] for u in summary["unreadable"]] == [str(gone)]
    after = snapshot(env_a)
    status, whole, _ = after[str(gone)]
    assert status == "failed" and whole is None
    assert after[str(holder)][0] == "indexed" and after[str(holder)][1].shape == (32,)
    assert_index_matches_catalog(settings_of(env_a))
    # When the file comes back, indexing its folder with the new model reads it again.
    gone.write_bytes(moved)
    summary = run_json(["index", str(extra), "--no-progress"], env_b(env_a, base))
    assert summary["embedded"] == 1
    assert snapshot(env_a)[str(gone)][0] == "indexed"


def test_refusals_and_discard(env, env_a, base):
    code, _, err = run_cli(["reembed", "--no-progress"], env)  # nothing indexed
    assert code == 1 and "nothing is indexed yet" in err
    code, _, err = run_cli(["reembed", "--no-progress"], env_a)  # the index's own model
    assert code == 1 and "already uses" in err and "--pretrained" in err
    code, _, err = run_cli(["reembed", "--pretrained", "/no/such.pt"], env_a)
    assert code == 1 and "not an existing checkpoint file" in err
    # A stopped run's staging can be dropped; a run for another model discards it itself.
    from indexer.errors import CancelledError
    from indexer.factory import load_embedder, open_library
    from indexer.reembed import Reembed, ReembedOptions, staged_progress

    settings_b = settings_of(env_b(env_a, base))
    library = open_library(settings_b)
    with pytest.raises(CancelledError):
        Reembed(library, load_embedder(settings_b), ReembedOptions(batch_size=2, progress=False),
                cancelled=lambda: True).run()
    assert staged_progress(library)["staged"] == 2
    assert run_json(["reembed", "--discard"], env_a) == {"discarded": 2}
    assert staged_progress(library) is None
    with pytest.raises(CancelledError):
        Reembed(library, load_embedder(settings_b), ReembedOptions(batch_size=2, progress=False),
                cancelled=lambda: True).run()
    settings_c = settings_of({**env_a, "LOUPE_MODEL": TINY_C})
    with pytest.raises(CancelledError):
        Reembed(library, load_embedder(settings_c), ReembedOptions(batch_size=1, progress=False),
                cancelled=lambda: True).run()
    staged = staged_progress(library)  # B's two discarded, C's one staged
    assert staged["model"]["architecture"] == TINY_C and staged["staged"] == 1
    library.close()


def test_a_running_service_refuses_the_old_model_after_the_swap(env_a, base):
    client = make_app_for(env_a).test_client()
    assert client.get("/api/search?q=cat").status_code == 200
    assert run_cli(["reembed", "--no-progress"], env_b(env_a, base))[0] == 0
    # Adding with the old model is refused under the write lock (no search ran since the swap).
    picture = next(base["photos"].glob("*.jpg")).read_bytes()
    added = client.post("/api/images", data={"image": (io.BytesIO(picture[:-2] + b"\xff\xd9"), "new.jpg")})
    assert added.status_code == 409 and added.get_json()["error"] == "model_mismatch", added.get_json()
    answer = client.get("/api/search?q=cat")
    assert answer.status_code == 409 and answer.get_json()["error"] == "model_mismatch"
    assert "LOUPE_PRETRAINED" in answer.get_json()["message"]
    assert_same_vectors(snapshot(env_a), base["fresh_b"])  # nothing of the old model's was added


def test_thumbnails_never_show_on_another_picture(env, tmp_path, photo_arrays):
    """Ids restart when the catalog is deleted; the thumbnail cache is keyed by content."""
    first, second = tmp_path / "first", tmp_path / "second"
    write_photos(first, {"astronaut": photo_arrays["astronaut"]})
    write_photos(second, {"coffee": photo_arrays["coffee"]})
    run_cli(["index", str(first), "--no-progress"], env)
    client = make_app_for(env).test_client()
    result = client.get("/api/search?q=x").get_json()["results"][0]
    assert result["id"] == 1 and "?v=" in result["thumb_url"]
    old_thumb = client.get(result["thumb_url"]).data
    # The data folder's catalog and index deleted by hand; other pictures indexed: ids restart.
    home = Path(env["LOUPE_HOME"])
    for name in ("loupe.db", "loupe.db-wal", "loupe.db-shm", "index.faiss", "regions.faiss",
                 "index.faiss.model", "regions.faiss.model"):
        (home / name).unlink(missing_ok=True)
    # An id-keyed cache file of an earlier version, left behind, is never served.
    legacy = home / "thumbs" / "001" / "1.jpg"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(old_thumb)
    run_cli(["index", str(second), "--no-progress"], env)
    client = make_app_for(env).test_client()
    result = client.get("/api/search?q=x").get_json()["results"][0]
    assert result["id"] == 1 and result["path"].startswith(str(second))
    for url in (result["thumb_url"], "/images/1/thumb"):
        answer = client.get(url)
        assert answer.status_code == 200 and answer.data != old_thumb
        with Image.open(io.BytesIO(answer.data)) as thumb:
            pixels = np.asarray(thumb.convert("RGB").resize((32, 32)), dtype=float)
        coffee = np.asarray(Image.fromarray(photo_arrays["coffee"]).resize((32, 32)), dtype=float)
        assert np.abs(pixels - coffee).mean() < 10
    assert "immutable" not in client.get("/images/1/thumb").headers["Cache-Control"]
    assert "immutable" in client.get(result["thumb_url"]).headers["Cache-Control"]


def test_reembed_on_postgresql(postgres_url, tmp_path, tiny_model_config, models_dir, photo_arrays, base):
    env = {**make_env(tmp_path, models_dir), "LOUPE_DATABASE_URL": postgres_url}
    assert run_cli(["db", "upgrade"], env)[0] == 0
    photos = tmp_path / "photos"
    write_photos(photos, dict(list(photo_arrays.items())[:2]))
    assert run_cli(["index", str(photos), "--no-progress"], env)[0] == 0
    summary = run_json(["reembed", "--no-progress"], env_b(env, base))
    assert summary["pictures"] == 2
    assert len(assert_index_matches_catalog(settings_of(env))) == 2
    assert run_json(["status"], env_b(env, base))["model"]["index"]["pretrained"] == "file"
    fresh = {Path(path).name: vectors for path, vectors in base["fresh_b"].items()}
    found = snapshot(env)
    assert_same_vectors(found, {path: fresh[Path(path).name] for path in found})  # the same bytes in both
